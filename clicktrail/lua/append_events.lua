-- Append one request's events to the stream (collector/buffer.py's EventBuffer.append).
-- KEYS: stream, pixels, tokens, rejected counts, event sources (apps, offline and CRM event sets)
-- ARGV: pixel or source id, host ('' = no domain check), token hash ('' = no token check),
--       max stream length, rejected reasons as JSON list ('' = none), event count,
--       the events as one JSON array ('' when none),
--       the event_source values the request claims, comma-separated ('' = an endpoint for pixels only)
-- On a Redis Cluster (collector/buffer.py) it runs in the registry's slot with no events ('' as
-- ARGV[7]): the check alone, KEYS[1] never touched; append_stream.lua then adds the entry.
--! include host_allowed.lua
local raw = redis.call('HGET', KEYS[2], ARGV[1]) or redis.call('HGET', KEYS[5], ARGV[1])
if not raw then return {'unknown_pixel'} end
local pixel = cjson.decode(raw)
local adv = pixel['advertiser_id']
local kind = pixel['kind'] or 'web'  -- pixels have no kind: they are the web source
local matched = ''
-- A whole request refused for a known pixel is counted for its diagnostics (per event it held).
local function refuse(reason, label)
  redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':' .. label, math.max(1, tonumber(ARGV[6]) or 0))
  return {reason, kind}
end
if ARGV[3] ~= '' then
  local tok = redis.call('HGET', KEYS[3], ARGV[3])
  if not tok then return refuse('bad_token', 'request: Access-Token is not a valid token') end
  tok = cjson.decode(tok)
  if tok['advertiser_id'] ~= adv then
    return refuse('token_advertiser', "request: Access-Token belongs to another advertiser")
  end
  local scoped = false
  for _, s in ipairs(tok['scopes']) do if s == 'events' then scoped = true end end
  if not scoped then return refuse('token_scope', "request: Access-Token lacks the 'events' scope") end
end
-- A source that is not a pixel takes only events naming its kind (pixel/sources.py); after the
-- token check, so that only the owner's token learns what kind the id is.
if kind ~= 'web' then
  if ARGV[8] == '' then return refuse('not_a_pixel', 'request: ' .. kind .. ' event source sent as a pixel') end
  for claimed in string.gmatch(ARGV[8], '[^,]+') do
    if claimed ~= kind then
      return refuse('event_source_mismatch', 'request: event_source is not ' .. kind)
    end
  end
end
if ARGV[2] ~= '' then
  matched = host_allowed(ARGV[2], pixel['domains'])
  if not matched then return refuse('domain_not_allowed', 'request: page domain is not registered for the pixel') end
end
if ARGV[5] ~= '' then
  for _, reason in ipairs(cjson.decode(ARGV[5])) do
    redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':' .. reason, 1)
  end
end
if ARGV[7] ~= '' then
  -- Shed load rather than let Redis run out of memory; never trim what is not yet stored.
  if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {'overloaded'} end
  -- Entry fields as pixel/records.py names them (ADVERTISER, COUNT, DATA).
  redis.call('XADD', KEYS[1], '*', 'a', adv, 'n', ARGV[6], 'd', ARGV[7])
end
return {'ok', adv, matched}
