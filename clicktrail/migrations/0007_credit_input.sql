-- credits written through credit_input (one row per touchpoint, expanded per model)

-- Credits written through a Null table, expanded per model by ClickHouse.
-- The stats and the feed's change log are kept by views on the same input (18.16 does not run
-- the views of a table written by another view), so one insert block still feeds all three.
-- Stop the attributor while this runs: a revision written between the DROP and the CREATE
-- would miss the stats.
CREATE TABLE IF NOT EXISTS {db}.credit_input (
  advertiser_id {lc},
  pixel_id {lc},
  event {lc},
  event_id String,
  conversion_time DateTime('UTC'),
  conversion_ms UInt64,
  value Float64,
  currency {lc},
  device_type {lc},
  os {lc},
  browser {lc},
  utm_source {lc},
  utm_campaign String,
  revision UInt32,
  content_hash UInt64,
  attributed_ms UInt64,
  touch_kind {lc},
  touch_id String,
  touch_time DateTime('UTC'),
  touch_ms UInt64,
  campaign_id String,
  adgroup_id String,
  ad_id String,
  matched_by {lc},
  click_window_days UInt8,
  view_window_days UInt8,
  sign Int8,
  model_names Array(String),
  model_credits Array(Float64)
) ENGINE = Null;

DROP TABLE IF EXISTS {db}.conversion_stats_mv;

DROP TABLE IF EXISTS {db}.feed_changes_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.credits_mv TO {db}.credits AS
SELECT advertiser_id, pixel_id, event, event_id, conversion_time, conversion_ms, value, currency, device_type, os, browser, utm_source, utm_campaign, revision, content_hash, attributed_ms, touch_kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id, ad_id, matched_by, model, click_window_days, view_window_days, credit, sign FROM {db}.credit_input ARRAY JOIN model_names AS model, model_credits AS credit;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.conversion_stats_mv TO {db}.conversion_stats AS
SELECT advertiser_id, model, toStartOfMinute(touch_time) AS touch_minute, event, campaign_id, adgroup_id, ad_id,
  touch_kind, toStartOfMinute(conversion_time) AS conversion_minute, click_window_days, view_window_days,
  device_type, os, browser, utm_source, utm_campaign, sign * credit AS conversions, sign * credit * value AS conversion_value
FROM {db}.credit_input ARRAY JOIN model_names AS model, model_credits AS credit WHERE touch_kind != '' AND credit != 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.feed_changes_mv TO {db}.feed_changes AS
SELECT advertiser_id, attributed_ms AS written_ms, model, event, toStartOfMinute(touch_time) AS touch_minute,
  campaign_id, adgroup_id, ad_id
FROM {db}.credit_input ARRAY JOIN model_names AS model, model_credits AS credit WHERE touch_kind != '';
