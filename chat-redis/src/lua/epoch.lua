#!lua
-- Replaces the cluster epoch, once: only when it is missing or still the one the caller
-- saw, so that two nodes noticing the same loss make one new epoch, not two.
-- KEYS: 1 the epoch key. ARGV: 1 the epoch the caller saw, 2 the new one.
-- Returns the epoch in force afterwards.
local cur = redis.call('GET', KEYS[1])
if not cur or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return cur
