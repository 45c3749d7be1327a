-- touchpoints table: ad clicks and impressions

-- Re-posting a touchpoint replaces it: the latest copy received wins (an import may correct one).
-- Small index granules (1024 rows, default 8192): the attributor makes thousands of scattered
-- point lookups per tick, each reading one granule.
CREATE TABLE IF NOT EXISTS {db}.touchpoints (
  advertiser_id {lc},
  kind {lc},
  touch_id String,
  touch_time DateTime('UTC'),
  touch_ms UInt64,
  campaign_id String,
  adgroup_id String,
  ad_id String,
  browser_id String,
  email_sha256 String,
  phone_sha256 String,
  external_id_sha256 String,
  ip String,
  user_agent String,
  source {lc},
  received_ms UInt64
) ENGINE = ReplacingMergeTree(received_ms)
PARTITION BY toYYYYMM(touch_time)
ORDER BY (advertiser_id, kind, touch_id)
SETTINGS index_granularity = 1024;
