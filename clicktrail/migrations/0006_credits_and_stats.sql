-- credits with cancel rows; conversion and touch stats, feed change log and costs for reports

-- Credits with cancel rows, and what reports and the optimizer feed read, kept by views.
-- The insert of a revision is one block, and materialized views run on that block, so the
-- credited rows, the summed stats and the feed's change log can never disagree.
--
-- Collapsing: a revision's rows and their cancel copies (same sorting key) vanish together
-- as parts merge, so the table keeps only the current revision of each conversion.
CREATE TABLE IF NOT EXISTS {db}.credits (
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
  model {lc},
  click_window_days UInt8,
  view_window_days UInt8,
  credit Float64,
  sign Int8
) ENGINE = CollapsingMergeTree(sign)
PARTITION BY toYYYYMM(conversion_time)
ORDER BY (advertiser_id, pixel_id, event, event_id, revision, model, touch_kind, touch_id);

CREATE TABLE IF NOT EXISTS {db}.conversion_stats (
  advertiser_id {lc}, model {lc}, touch_minute DateTime('UTC'), event {lc}, campaign_id String, adgroup_id String,
  ad_id String, touch_kind {lc}, conversion_minute DateTime('UTC'), click_window_days UInt8, view_window_days UInt8,
  device_type {lc}, os {lc}, browser {lc}, utm_source {lc}, utm_campaign String,
  conversions Float64, conversion_value Float64
) ENGINE = SummingMergeTree((conversions, conversion_value))
PARTITION BY toYYYYMM(touch_minute)
ORDER BY (advertiser_id, model, touch_minute, event, campaign_id, adgroup_id, ad_id, touch_kind, conversion_minute, click_window_days, view_window_days, device_type, os, browser, utm_source, utm_campaign);

-- conversion_stats from credited rows: attributed conversions only (organic ones have no ad to
-- report under); zero credits (duplicates) add nothing.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.conversion_stats_mv TO {db}.conversion_stats AS
SELECT advertiser_id, model, toStartOfMinute(touch_time) AS touch_minute, event, campaign_id, adgroup_id, ad_id,
  touch_kind, toStartOfMinute(conversion_time) AS conversion_minute, click_window_days, view_window_days,
  device_type, os, browser, utm_source, utm_campaign, sign * credit AS conversions, sign * credit * value AS conversion_value
FROM {db}.credits WHERE touch_kind != '' AND credit != 0;

-- What changed when, for the optimizer feed's cursors: rows from credits (both signs, so
-- the bucket that lost a conversion is listed too) and touch marks written by the
-- attributor (event '').
CREATE TABLE IF NOT EXISTS {db}.feed_changes (
  advertiser_id {lc}, written_ms UInt64, model {lc}, event {lc}, touch_minute DateTime('UTC'),
  campaign_id String, adgroup_id String, ad_id String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(toDateTime(intDiv(written_ms, 1000), 'UTC'))
ORDER BY (advertiser_id, written_ms);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.feed_changes_mv TO {db}.feed_changes AS
SELECT advertiser_id, attributed_ms AS written_ms, model, event, toStartOfMinute(touch_time) AS touch_minute,
  campaign_id, adgroup_id, ad_id
FROM {db}.credits WHERE touch_kind != '';

-- Clicks and impressions per ad and minute. Writers flag the first copy of each id
-- (`counted`), so a sum counts a re-posted or re-delivered touchpoint once: merging exact
-- distinct-count states instead costs ten times more per report.
-- The runner skips an ADD COLUMN whose column exists (18.16 has no IF NOT EXISTS there).
ALTER TABLE {db}.touchpoints ADD COLUMN counted UInt8 DEFAULT 1;

CREATE TABLE IF NOT EXISTS {db}.touch_stats (
  advertiser_id {lc}, kind {lc}, touch_minute DateTime('UTC'), campaign_id String, adgroup_id String, ad_id String,
  touches UInt64
) ENGINE = SummingMergeTree(touches)
PARTITION BY toYYYYMM(touch_minute)
ORDER BY (advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_stats_mv TO {db}.touch_stats AS
SELECT advertiser_id, kind, toStartOfMinute(touch_time) AS touch_minute, campaign_id, adgroup_id, ad_id,
  toUInt64(sum(counted)) AS touches
FROM {db}.touchpoints GROUP BY advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id;

-- Daily spend per ad; each posting of a day is one version, and the latest version of a
-- day is the day (re-posting a day replaces all of it).
CREATE TABLE IF NOT EXISTS {db}.costs (
  advertiser_id {lc}, day Date, version UInt64, campaign_id String, adgroup_id String, ad_id String,
  spend Float64, impressions UInt64, has_impressions UInt8, currency {lc}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (advertiser_id, day, version, campaign_id, adgroup_id, ad_id);

-- Backfill: the current revision of what earlier versions stored, then touch counts. Each
-- runs only while its target is empty, so re-running the migration adds nothing twice.
INSERT INTO {db}.credits (advertiser_id, pixel_id, event, event_id, conversion_time, conversion_ms, value, currency, device_type, os, browser, utm_source, utm_campaign, revision, content_hash, attributed_ms, touch_kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id, ad_id, matched_by, model, click_window_days, view_window_days, credit, sign)
SELECT advertiser_id, pixel_id, event, event_id, conversion_time, conversion_ms, value, currency, device_type, os, browser, utm_source, utm_campaign, revision, content_hash, attributed_ms, touch_kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id, ad_id, matched_by, model, click_window_days, view_window_days, credit, 1 FROM {db}.attributions FINAL
WHERE (advertiser_id, pixel_id, event, event_id, revision) IN
      (SELECT advertiser_id, pixel_id, event, event_id, max(revision) FROM {db}.attributions
       GROUP BY advertiser_id, pixel_id, event, event_id)
  AND (SELECT count() FROM {db}.credits) = 0;

INSERT INTO {db}.touch_stats
SELECT advertiser_id, kind, toStartOfMinute(touch_time) AS touch_minute, campaign_id, adgroup_id, ad_id,
  uniqExact(touch_id)
FROM {db}.touchpoints WHERE (SELECT count() FROM {db}.touch_stats) = 0
GROUP BY advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id;

DROP TABLE IF EXISTS {db}.attributions;
