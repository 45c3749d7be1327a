-- Move a feed watermark up to ARGV[1] (ms), never down: a writer that stalled past its lease and
-- publishes late cannot take back what its successor published.
-- KEYS: the watermark. ARGV: the stamp.
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
