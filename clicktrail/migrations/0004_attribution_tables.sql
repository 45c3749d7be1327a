-- attribution tables: candidate touchpoints and credited rows, by revision

-- Every revision of a conversion's attribution is written in one insert block, which ClickHouse
-- stores atomically; readers take the highest revision per conversion. Re-writing the same
-- revision (a tick re-run after a crash) gives identical rows, folded by the Replacing engine
-- and by FINAL, since the whole row identity is in the sorting key.
CREATE TABLE IF NOT EXISTS {db}.attribution_candidates (
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
  matched_by {lc}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(conversion_time)
ORDER BY (advertiser_id, pixel_id, event, event_id, revision, touch_kind, touch_id);

CREATE TABLE IF NOT EXISTS {db}.attributions (
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
  credit Float64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(conversion_time)
ORDER BY (advertiser_id, pixel_id, event, event_id, revision, model, touch_kind, touch_id);
