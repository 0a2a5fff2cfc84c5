-- One change to a room's moderation state (docs/CLUSTER.md, "Moderation state").
-- KEYS[1]: the room's moderation hash.
-- ARGV[1]: drop every field that starts with this (nothing when empty);
-- ARGV[2], ARGV[3]: then set this field to this value (nothing when ARGV[2] is empty).
-- One script, so that a reader never sees a ban lifted but not yet given again.
if ARGV[1] ~= '' then
  local n = #ARGV[1]
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, n) == ARGV[1] then
      redis.call('HDEL', KEYS[1], f)
    end
  end
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
return 1
