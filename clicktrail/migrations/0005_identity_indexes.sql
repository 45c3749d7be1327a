-- identity lookup tables for the attributor, filled by materialized views

-- Lookup tables by identity, filled by materialized views, so the attributor never scans.
-- The attributor asks "which events carried this click id / browser id / hashed email" and
-- "which touchpoints carry this identity"; the main tables are ordered for reports instead, so
-- these two small tables, ordered by identity, answer with primary-key lookups.
CREATE TABLE IF NOT EXISTS {db}.event_identities (
  advertiser_id {lc}, identity String, identity_kind {lc}, pixel_id {lc}, event {lc}, event_id String,
  event_time DateTime('UTC'), event_ms UInt64, browser_id String, click_id String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (advertiser_id, identity, identity_kind, pixel_id, event, event_id)
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS {db}.touch_identities (
  advertiser_id {lc}, identity String, identity_kind {lc}, kind {lc}, touch_id String, touch_time DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(touch_time)
ORDER BY (advertiser_id, identity, identity_kind, kind, touch_id)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_identities_mv TO {db}.event_identities AS SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS identity_kind, pixel_id, event, event_id, event_time, event_ms, browser_id, click_id FROM {db}.events ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', [(click_id, 'click'), (browser_id, 'browser'), (email_sha256, 'email'), (phone_sha256, 'phone'), (external_id_sha256, 'external_id')]) AS pair;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_identities_mv TO {db}.touch_identities AS SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS identity_kind, kind, touch_id, touch_time FROM {db}.touchpoints ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', [(browser_id, 'browser'), (email_sha256, 'email'), (phone_sha256, 'phone'), (external_id_sha256, 'external_id')]) AS pair;

-- Backfill what was stored before the views existed (re-running adds copies the engine folds).
INSERT INTO {db}.event_identities SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS identity_kind, pixel_id, event, event_id, event_time, event_ms, browser_id, click_id FROM {db}.events ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', [(click_id, 'click'), (browser_id, 'browser'), (email_sha256, 'email'), (phone_sha256, 'phone'), (external_id_sha256, 'external_id')]) AS pair;

INSERT INTO {db}.touch_identities SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS identity_kind, kind, touch_id, touch_time FROM {db}.touchpoints ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', [(browser_id, 'browser'), (email_sha256, 'email'), (phone_sha256, 'phone'), (external_id_sha256, 'external_id')]) AS pair;
