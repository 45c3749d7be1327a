-- Take the attributor's lease if free or ours, and (re)arm its expiry; answer 1 when we hold it.
-- KEYS: the lease. ARGV: our name, the lease in milliseconds.
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
