-- erasure: touch count adjustments and the log of an erasure's steps

-- An erasure takes the person's clicks and impressions out of the kept counts: it inserts their
-- negated counts here (a Null table stores nothing) and two views write them on, from the same
-- insert block: into touch_stats (a negative count as its 2^64 complement: sums of UInt64 wrap,
-- so every sum over the table stays exact) and, once per request, into erasure_steps, by which a
-- resumed erasure knows the step is done and never subtracts twice.
CREATE TABLE IF NOT EXISTS {db}.touch_adjustments (
  request_id String, advertiser_id {lc}, kind {lc}, touch_minute DateTime('UTC'), campaign_id String,
  adgroup_id String, ad_id String, touches Int64
) ENGINE = Null;

CREATE TABLE IF NOT EXISTS {db}.erasure_steps (
  request_id String, step {lc}, done_ms UInt64
) ENGINE = MergeTree
ORDER BY (request_id, step);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_adjustments_stats_mv TO {db}.touch_stats AS
SELECT advertiser_id, kind, touch_minute, campaign_id, adgroup_id, ad_id, toUInt64(touches) AS touches
FROM {db}.touch_adjustments;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_adjustments_log_mv TO {db}.erasure_steps AS
SELECT request_id, 'touch_stats' AS step, toUInt64(max(toUnixTimestamp(now()))) * 1000 AS done_ms
FROM {db}.touch_adjustments GROUP BY request_id;
