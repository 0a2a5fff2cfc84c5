#!lua
-- One session of a user entering (+1) or leaving (-1) a room on one node, or a dead
-- node's sessions reaped (delta "reap"). A user is announced when the count over all
-- nodes goes 0 -> 1 (joined) or 1 -> 0 (left); each announcement bumps the room's
-- presence version and rings the doorbell.
-- KEYS: 1 meta hash, 2 users hash (user -> sessions over all nodes),
--       3 this node's hash (user -> its sessions)
-- ARGV: 1 user (ignored for "reap"), 2 "1", "-1", "here", "gone" or "reap",
--       3 doorbell channel
-- Returns {announcements..., pv}: each announcement as "+user" or "-user".
local meta, users, on = KEYS[1], KEYS[2], KEYS[3]
local channel = ARGV[3]
local out = {}

local function announce(sign, user)
  local pv = redis.call('HINCRBY', meta, 'pv', 1)
  local now = redis.call('TIME')
  local ts = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('PUBLISH', channel, 'p|' .. string.format('%d', pv) .. '|' .. sign .. '|'
    .. string.format('%d', ts) .. '|' .. user)
  out[#out + 1] = sign .. user
end

local function change(user, delta)
  local total = redis.call('HINCRBY', users, user, delta)
  if total <= 0 then
    redis.call('HDEL', users, user)
    if total - delta > 0 then
      announce('-', user)
    end
  elseif total == delta then
    announce('+', user)
  end
end

if ARGV[2] == 'here' or ARGV[2] == 'gone' then
  -- Idempotent form (the runtime broker's): the node has the user here or not, whatever
  -- it said before, so a retry after a lost reply counts nothing twice.
  local user = ARGV[1]
  local had = tonumber(redis.call('HGET', on, user) or '0')
  local want = 0
  if ARGV[2] == 'here' then
    want = 1
  end
  if want == 1 then
    redis.call('HSET', on, user, 1)
  else
    redis.call('HDEL', on, user)
  end
  if want ~= had then
    change(user, want - had)
  end
elseif ARGV[2] == 'reap' then
  local mine = redis.call('HGETALL', on)
  for i = 1, #mine, 2 do
    change(mine[i], -tonumber(mine[i + 1]))
  end
  redis.call('DEL', on)
else
  local user, delta = ARGV[1], tonumber(ARGV[2])
  local mine = redis.call('HINCRBY', on, user, delta)
  if mine <= 0 then
    redis.call('HDEL', on, user)
  end
  -- A leave with nothing of this node's to undo (a reaper was faster): it must not take
  -- away another node's sessions.
  if mine >= 0 then
    change(user, delta)
  end
end
out[#out + 1] = tonumber(redis.call('HGET', meta, 'pv') or '0')
return out
