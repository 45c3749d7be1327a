-- Give the lease back, if it is still ours. KEYS: the lease. ARGV: our name.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
