#!lua
-- A user's read marker in a room moves forward (never back), and the other nodes holding
-- the room hear it on the room's channel (docs/CLUSTER.md, "Read markers").
-- KEYS: 1 the user's read markers hash (room -> last seq read)
-- ARGV: 1 room, 2 seq, 3 the room's doorbell channel, 4 this node, 5 the user's name
-- Returns 1 when the marker moved, 0 when it was already there or ahead.
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= cur then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'r|' .. ARGV[4] .. '|' .. ARGV[2] .. '|' .. ARGV[5])
return 1
