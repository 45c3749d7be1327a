-- exchange_rates; conversion sums kept by currency, valued in the advertiser's currency when read

-- Rates an advertiser posts (POST /v1/exchange-rates): 1 `currency` = `rate` of
-- `advertiser_currency` from `day` on, until the next day posted for that currency. Re-posting a
-- (currency, day) replaces its rate: readers take the highest version. The advertiser's currency
-- is part of the key, so after `advertiser set --currency` the rates meant for the old one no
-- longer apply.
CREATE TABLE IF NOT EXISTS {db}.exchange_rates (
  advertiser_id {lc}, advertiser_currency {lc}, currency {lc}, day Date, rate Float64, version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (advertiser_id, advertiser_currency, currency, day);

-- Conversion sums keep the conversion's currency, so reports and the feed convert values with the
-- rates known when they read. Empty: a conversion without a value (nothing to convert) or sent
-- without a currency (taken to be in the advertiser's). 18.16 lets a new column end the key.
ALTER TABLE {db}.conversion_stats ADD COLUMN currency {lc}, MODIFY ORDER BY (advertiser_id, model, touch_minute, event, campaign_id, adgroup_id, ad_id, touch_kind, conversion_minute, click_window_days, view_window_days, device_type, os, browser, utm_source, utm_campaign, currency);

-- The sums are rebuilt from credits, which hold every credited row they were summed from (both
-- signs until merges fold a revision and its cancel copies, which sum to nothing): rows summed
-- before this migration mixed currencies under one key. Stop the attributor while this runs: a
-- revision written between the DROP and the CREATE would miss the stats. Run again, it gives the
-- same sums (the TRUNCATE comes first).
DROP TABLE IF EXISTS {db}.conversion_stats_mv;

TRUNCATE TABLE {db}.conversion_stats;

INSERT INTO {db}.conversion_stats (advertiser_id, model, touch_minute, event, campaign_id, adgroup_id, ad_id, touch_kind, conversion_minute, click_window_days, view_window_days, device_type, os, browser, utm_source, utm_campaign, currency, conversions, conversion_value)
SELECT advertiser_id, model, toStartOfMinute(touch_time) AS touch_minute, event, campaign_id, adgroup_id, ad_id,
  touch_kind, toStartOfMinute(conversion_time) AS conversion_minute, click_window_days, view_window_days,
  device_type, os, browser, utm_source, utm_campaign, if(value = 0, '', currency) AS currency,
  sign * credit AS conversions, sign * credit * value AS conversion_value
FROM {db}.credits WHERE touch_kind != '' AND credit != 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.conversion_stats_mv TO {db}.conversion_stats AS
SELECT advertiser_id, model, toStartOfMinute(touch_time) AS touch_minute, event, campaign_id, adgroup_id, ad_id,
  touch_kind, toStartOfMinute(conversion_time) AS conversion_minute, click_window_days, view_window_days,
  device_type, os, browser, utm_source, utm_campaign, if(value = 0, '', currency) AS currency,
  sign * credit AS conversions, sign * credit * value AS conversion_value
FROM {db}.credit_input ARRAY JOIN model_names AS model, model_credits AS credit WHERE touch_kind != '' AND credit != 0;
