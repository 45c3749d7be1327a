-- touchpoints: every value of email, phone and external_id (emails_sha256...), all used for matching

-- Imported clicks and impressions (POST /v1/clicks, /v1/impressions) take lists of values per
-- identifier, as events do (migration 10). The single columns keep the first value; these hold
-- every value, the first included, so the latest copy of a touchpoint says which values link it
-- (a re-post that corrects an address unlinks the old one). A row stored before this migration
-- reads its single value as a list of one (the default is computed on read, nothing is rewritten).
ALTER TABLE {db}.touchpoints ADD COLUMN emails_sha256 Array(String) DEFAULT if(email_sha256 = '', emptyArrayString(), [email_sha256]) AFTER external_id_sha256;

ALTER TABLE {db}.touchpoints ADD COLUMN phones_sha256 Array(String) DEFAULT if(phone_sha256 = '', emptyArrayString(), [phone_sha256]) AFTER emails_sha256;

ALTER TABLE {db}.touchpoints ADD COLUMN external_ids_sha256 Array(String) DEFAULT if(external_id_sha256 = '', emptyArrayString(), [external_id_sha256]) AFTER phones_sha256;

-- The attributor finds touchpoints by identity in touch_identities. touch_identities_mv
-- (migration 5) keeps writing the first values (the single columns); this second view adds one
-- row per further value: the lists' items from the second on (the import puts the single
-- column's value first), as event_identity_values_mv does for events. touch_identities only
-- says which touchpoints may carry a value: the attributor keeps a touchpoint only when its
-- latest copy's lists still hold it. Touchpoints stored before this migration had one value
-- each: nothing to backfill.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touch_identity_values_mv TO {db}.touch_identities AS SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS identity_kind, kind, touch_id, touch_time FROM {db}.touchpoints ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', arrayConcat(arrayMap(v -> (v, 'email'), arraySlice(emails_sha256, 2)), arrayMap(v -> (v, 'phone'), arraySlice(phones_sha256, 2)), arrayMap(v -> (v, 'external_id'), arraySlice(external_ids_sha256, 2)))) AS pair;
