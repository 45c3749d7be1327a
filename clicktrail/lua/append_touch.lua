-- Append a redirect click to the stream and keep it in the click cache (EventBuffer.append_click).
-- KEYS: stream, advertiser domains, click cache key.
-- ARGV: advertiser, landing host, max stream length, count, payload, cache value, cache TTL seconds
--! include host_allowed.lua
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {'domain_not_allowed'} end
if not host_allowed(ARGV[2], cjson.decode(raw)) then return {'domain_not_allowed'} end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {'overloaded'} end
-- Entry fields as pixel/records.py names them (ADVERTISER, KIND = TOUCH_ENTRY, COUNT, DATA).
redis.call('XADD', KEYS[1], '*', 'a', ARGV[1], 'k', 't', 'n', ARGV[4], 'd', ARGV[5])
redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[7])
return {'ok'}
