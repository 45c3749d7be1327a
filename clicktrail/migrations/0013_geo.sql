-- country and region: events, touchpoints, the attribution tables, conversion_stats

-- Where the client IP is (ISO 3166-1 alpha-2 country; region where the database knows it),
-- looked up by the collector before the IP is anonymised. Rows stored before this migration
-- have no place: '' (reports show them under an empty country).
ALTER TABLE {db}.events ADD COLUMN country {lc} DEFAULT '' AFTER ip;

ALTER TABLE {db}.events ADD COLUMN region {lc} DEFAULT '' AFTER country;

ALTER TABLE {db}.touchpoints ADD COLUMN country {lc} DEFAULT '' AFTER ip;

ALTER TABLE {db}.touchpoints ADD COLUMN region {lc} DEFAULT '' AFTER country;

-- A conversion's place is its converting event's, as its device, OS and browser are.
ALTER TABLE {db}.attribution_candidates ADD COLUMN country {lc} DEFAULT '' AFTER utm_campaign;

ALTER TABLE {db}.attribution_candidates ADD COLUMN region {lc} DEFAULT '' AFTER country;

ALTER TABLE {db}.credits ADD COLUMN country {lc} DEFAULT '' AFTER utm_campaign;

ALTER TABLE {db}.credits ADD COLUMN region {lc} DEFAULT '' AFTER country;

ALTER TABLE {db}.credit_input ADD COLUMN country {lc} DEFAULT '' AFTER utm_campaign;

ALTER TABLE {db}.credit_input ADD COLUMN region {lc} DEFAULT '' AFTER country;

-- conversion_stats sums rows of equal sorting key, so a dimension must be in the key, or rows of
-- two countries would merge into one. A column added in the same ALTER may extend the key (on
-- 18.16 only without a default expression: a String's own default is '' anyway); the rows kept
-- so far stay, under country and region ''. (currency, migration 12, stays in the key before them.)
ALTER TABLE {db}.conversion_stats ADD COLUMN country {lc} AFTER utm_campaign, ADD COLUMN region {lc} AFTER country, MODIFY ORDER BY (advertiser_id, model, touch_minute, event, campaign_id, adgroup_id, ad_id, touch_kind, conversion_minute, click_window_days, view_window_days, device_type, os, browser, utm_source, utm_campaign, currency, country, region);

-- The views name every column, so they are made again to carry the new ones. Stop the
-- attributor while this runs: a revision written between a DROP and its CREATE would miss
-- the credits or the stats.
DROP TABLE IF EXISTS {db}.credits_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.credits_mv TO {db}.credits AS
SELECT advertiser_id, pixel_id, event, event_id, conversion_time, conversion_ms, value, currency, device_type, os, browser, utm_source, utm_campaign, country, region, revision, content_hash, attributed_ms, touch_kind, touch_id, touch_time, touch_ms, campaign_id, adgroup_id, ad_id, matched_by, model, click_window_days, view_window_days, credit, sign FROM {db}.credit_input ARRAY JOIN model_names AS model, model_credits AS credit;

DROP TABLE IF EXISTS {db}.conversion_stats_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.conversion_stats_mv TO {db}.conversion_stats AS
SELECT advertiser_id, model, toStartOfMinute(touch_time) AS touch_minute, event, campaign_id, adgroup_id, ad_id,
  touch_kind, toStartOfMinute(conversion_time) AS conversion_minute, click_window_days, view_window_days,
  device_type, os, browser, utm_source, utm_campaign, if(value = 0, '', currency) AS currency, country, region,
  sign * credit AS conversions, sign * credit * value AS conversion_value
FROM {db}.credit_input ARRAY JOIN model_names AS model, model_credits AS credit WHERE touch_kind != '' AND credit != 0;

-- A query of the view between the DROP and the CREATE fails; run migrations while reports are quiet.
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
  argMax(country, _v) AS country,
  argMax(region, _v) AS region,
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
