-- The domain-suffix rule, as pixel/registry.py's host_allowed states it: a host may send for a
-- list of domains when it is one of them or a subdomain of one. Scripts that need it include this
-- file (clicktrail/scripting.py); tests/test_lua.py checks it against the Python rule on Redis.
local function host_allowed(host, domains)
  for _, d in ipairs(domains) do
    if host == d or (#host > #d and string.sub(host, -(#d + 1)) == '.' .. d) then
      return d
    end
  end
  return nil
end
