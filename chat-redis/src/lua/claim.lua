#!lua
-- Holds a name for a holder for a while: taken when free or already the holder's (which
-- extends it), refused when someone else holds it.
-- KEYS: 1 the name's key. ARGV: 1 holder, 2 lifetime (ms).
-- Returns 1 when the holder has it, 0 when someone else does.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
