-- events: every value of email, phone and external_id (emails_sha256...), all used for matching

-- The Events API and Meta's Conversions API take lists of hashes per identifier. The single
-- columns keep the first value (what reports and older queries read); these hold every value,
-- the first included. A row stored before this migration reads its single value as a list of
-- one (the default is computed on read, so nothing is rewritten).
ALTER TABLE {db}.events ADD COLUMN emails_sha256 Array(String) DEFAULT if(email_sha256 = '', emptyArrayString(), [email_sha256]) AFTER external_id_sha256;

ALTER TABLE {db}.events ADD COLUMN phones_sha256 Array(String) DEFAULT if(phone_sha256 = '', emptyArrayString(), [phone_sha256]) AFTER emails_sha256;

ALTER TABLE {db}.events ADD COLUMN external_ids_sha256 Array(String) DEFAULT if(external_id_sha256 = '', emptyArrayString(), [external_id_sha256]) AFTER phones_sha256;

-- The attributor finds conversions by identity in event_identities. event_identities_mv
-- (migration 5) keeps writing the first values (the single columns); this second view adds one row
-- per further value: the lists' items from the second on (the sink puts the single column's value
-- first; 18.16 cannot compare to another column inside a lambda here). The first view is never
-- dropped, so no insert misses its identities while this runs. Events stored before this
-- migration had one value each: nothing to backfill.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_identity_values_mv TO {db}.event_identities AS SELECT advertiser_id, tupleElement(pair, 1) AS identity, tupleElement(pair, 2) AS identity_kind, pixel_id, event, event_id, event_time, event_ms, browser_id, click_id FROM {db}.events ARRAY JOIN arrayFilter(p -> tupleElement(p, 1) != '', arrayConcat(arrayMap(v -> (v, 'email'), arraySlice(emails_sha256, 2)), arrayMap(v -> (v, 'phone'), arraySlice(phones_sha256, 2)), arrayMap(v -> (v, 'external_id'), arraySlice(external_ids_sha256, 2)))) AS pair;

-- The view names every column, so it is made again to show the new ones. A query of the view
-- between the DROP and the CREATE fails; run migrations while reports are quiet.
DROP TABLE IF EXISTS {db}.events_unique;

CREATE VIEW IF NOT EXISTS {db}.events_unique AS
SELECT
  advertiser_id, pixel_id, event, event_id,
  argMax(event_time, _v) AS event_time,
  argMax(event_ms, _v) AS event_ms,
  argMax(client_ms, _v) AS client_ms,
  argMax(sent_ms, _v) AS sent_ms,
  argMax(received_at, _v) AS received_at,
  argMax(received_ms, _v) AS received_ms,
  argMax(source, _v) AS source,
  argMax(event_source, _v) AS event_source,
  argMax(partner_name, _v) AS partner_name,
  argMax(id_generated, _v) AS id_generated,
  argMax(browser_id, _v) AS browser_id,
  argMax(click_id, _v) AS click_id,
  argMax(email_sha256, _v) AS email_sha256,
  argMax(phone_sha256, _v) AS phone_sha256,
  argMax(external_id_sha256, _v) AS external_id_sha256,
  argMax(emails_sha256, _v) AS emails_sha256,
  argMax(phones_sha256, _v) AS phones_sha256,
  argMax(external_ids_sha256, _v) AS external_ids_sha256,
  argMax(url, _v) AS url,
  argMax(url_host, _v) AS url_host,
  argMax(url_path, _v) AS url_path,
  argMax(referrer, _v) AS referrer,
  argMax(referrer_host, _v) AS referrer_host,
  argMax(utm_source, _v) AS utm_source,
  argMax(utm_medium, _v) AS utm_medium,
  argMax(utm_campaign, _v) AS utm_campaign,
  argMax(utm_content, _v) AS utm_content,
  argMax(utm_term, _v) AS utm_term,
  argMax(value, _v) AS value,
  argMax(currency, _v) AS currency,
  argMax(order_id, _v) AS order_id,
  argMax(lead_id, _v) AS lead_id,
  argMax(lead_event_source, _v) AS lead_event_source,
  argMax(content_type, _v) AS content_type,
  argMax(content_ids, _v) AS content_ids,
  argMax(search_query, _v) AS search_query,
  argMax(properties, _v) AS properties,
  argMax(extra, _v) AS extra,
  argMax(ip, _v) AS ip,
  argMax(user_agent, _v) AS user_agent,
  argMax(ua_browser, _v) AS ua_browser,
  argMax(ua_browser_version, _v) AS ua_browser_version,
  argMax(ua_os, _v) AS ua_os,
  argMax(ua_os_version, _v) AS ua_os_version,
  argMax(device_type, _v) AS device_type,
  argMax(is_bot, _v) AS is_bot,
  argMax(test_event_code, _v) AS test_event_code,
  argMax(limited_data_use, _v) AS limited_data_use,
  argMax(stream_id, _v) AS stream_id,
  argMax(dedup_version, _v) AS dedup_version
FROM (SELECT *, dedup_version AS _v FROM {db}.events)
GROUP BY advertiser_id, pixel_id, event, event_id;
