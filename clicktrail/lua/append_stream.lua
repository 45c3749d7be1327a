-- Append one entry to one shard's stream, under the length guard (collector/buffer.py on a Redis
-- Cluster, after the registry check of append_events.lua ran in the registry's own slot).
-- KEYS: the shard's stream
-- ARGV: max stream length, then the entry's fields and values (as pixel/records.py names them)
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return {'overloaded'} end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
return {'ok'}
