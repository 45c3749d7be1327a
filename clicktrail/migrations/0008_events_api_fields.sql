-- events: event_source, partner_name, lead_id, lead_event_source (Events API 2.0 kept whole)

-- event_source is TikTok's (web, app, offline, crm), next to the transport (source). Rows stored
-- before this migration were all web events as far as anyone told us: TikTok's default.
ALTER TABLE {db}.events ADD COLUMN event_source {lc} DEFAULT 'web' AFTER source;

ALTER TABLE {db}.events ADD COLUMN partner_name String DEFAULT '' AFTER event_source;

ALTER TABLE {db}.events ADD COLUMN lead_id String DEFAULT '' AFTER order_id;

ALTER TABLE {db}.events ADD COLUMN lead_event_source {lc} DEFAULT '' AFTER lead_id;

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
