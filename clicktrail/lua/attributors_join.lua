-- Say an attributor is alive for ARGV[2] ms more, forget those whose time ran out, and answer the
-- names of the live ones, sorted (their ranks); {} while a live one counts partitions differently
-- (ARGV[3]): partitions of two counts would give one advertiser two writers, so a newcomer with
-- another count waits, unregistered, for those of the old count to stop.
-- KEYS: the attributors hash (name -> "<expires ms>:<partitions>"). ARGV: our name, ttl ms, partitions.
local t = redis.call('TIME')  -- the server's clock: the attributors' own clocks may disagree
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local live = {ARGV[1]}
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  local sep = string.find(value, ':', 1, true) or 0
  local expires = tonumber(string.sub(value, 1, sep - 1)) or 0
  if expires < now then
    redis.call('HDEL', KEYS[1], name)
  elseif name ~= ARGV[1] then
    if string.sub(value, sep + 1) ~= ARGV[3] then
      redis.call('HDEL', KEYS[1], ARGV[1])
      return {}
    end
    live[#live + 1] = name
  end
end
redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[2])) .. ':' .. ARGV[3])
table.sort(live)
return live
