-- touchpoints.is_bot; bot clicks kept apart from touch_stats, in bot_touch_stats

-- A bot's click (pixel.bots: a crawler, a headless browser, curl...) is stored and flagged, never
-- dropped, but it is no click in reports or the optimizer feed: touch_stats counts people only,
-- and bot_touch_stats counts the bots (for include_bots=true and the diagnostics).
-- Touchpoints stored before this migration read 0: they count as before.
ALTER TABLE {db}.touchpoints ADD COLUMN is_bot UInt8 DEFAULT 0;

CREATE TABLE IF NOT EXISTS {db}.bot_touch_stats (
  advertiser_id {lc}, kind {lc}, touch_minute DateTime('UTC'), campaign_id String, adgroup_id String, ad_id String,
  touches UInt64
) ENGINE = SummingMergeTree(touches)
PARTITION BY toYYYYMM(touch_minute)
ORDER BY (advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id);

-- The view is made again to leave bots out. A touchpoint stored between the DROP and the CREATE
-- would miss touch_stats: stop the sink and imports while this runs.
DROP TABLE IF EXISTS {db}.touch_stats_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_stats_mv TO {db}.touch_stats AS
SELECT advertiser_id, kind, toStartOfMinute(touch_time) AS touch_minute, campaign_id, adgroup_id, ad_id,
  toUInt64(sum(counted)) AS touches
FROM {db}.touchpoints WHERE is_bot = 0 GROUP BY advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.bot_touch_stats_mv TO {db}.bot_touch_stats AS
SELECT advertiser_id, kind, toStartOfMinute(touch_time) AS touch_minute, campaign_id, adgroup_id, ad_id,
  toUInt64(sum(counted)) AS touches
FROM {db}.touchpoints WHERE is_bot = 1 GROUP BY advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id;

-- An erasure takes a person's clicks out of the kept counts (migration 9): a bot's click out of
-- bot_touch_stats, through its own adjustments table and step, as touch_adjustments does for
-- touch_stats.
CREATE TABLE IF NOT EXISTS {db}.bot_touch_adjustments (
  request_id String, advertiser_id {lc}, kind {lc}, touch_minute DateTime('UTC'), campaign_id String,
  adgroup_id String, ad_id String, touches Int64
) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.bot_touch_adjustments_stats_mv TO {db}.bot_touch_stats AS
SELECT advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id, toUInt64(touches) AS touches
FROM {db}.bot_touch_adjustments;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.bot_touch_adjustments_log_mv TO {db}.erasure_steps AS
SELECT request_id, 'bot_touch_stats' AS step, toUInt64(max(toUnixTimestamp(now()))) * 1000 AS done_ms
FROM {db}.bot_touch_adjustments GROUP BY request_id;
