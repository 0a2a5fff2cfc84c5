#!lua
-- One step of a room's retention (docs/CLUSTER.md, "Retention"), atomically: the stream
-- keeps its newest `count` entries (messages and changes alike) and nothing older than
-- `age`, never its newest entry; the state hash loses the trimmed seqs; meta `first`
-- records the first seq kept, and the room's channel hears it. At most `budget`
-- entries go per call: the caller calls again while `more` says so.
-- KEYS: 1 meta hash, 2 log stream, 3 state hash, 4 the room's own policy (hash: `age`
--       ms or "", `count` or ""; missing: the caller's default)
-- ARGV: 1 default max age (ms) or "", 2 default max count or "", 3 budget,
--       4 now (ms since 1970) or "" for Redis' clock, 5 doorbell channel
-- Returns {trimmed, first kept seq (0: the room has no log), more 0/1}.
local meta, log, state, policy = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local age, count = ARGV[1], ARGV[2]
if redis.call('EXISTS', policy) == 1 then
  local p = redis.call('HMGET', policy, 'age', 'count')
  age, count = p[1] or '', p[2] or ''
end
age, count = tonumber(age), tonumber(count)
local budget = math.max(tonumber(ARGV[3]) or 500, 1)

local function seq_of(id)
  return tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
end

local len = redis.call('XLEN', log)
local first = tonumber(redis.call('HGET', meta, 'first') or '0')
if len == 0 then
  return {0, first, 0}
end
if not age and not count then
  return {0, first, 0}
end

-- How many of the oldest entries go: by count, then by age (`t` never goes backwards
-- along the stream, so the old ones are a prefix); never the newest entry.
local n = 0
if count then
  n = math.max(len - math.max(count, 1), 0)
end
local head = redis.call('XRANGE', log, '-', '+', 'COUNT', math.min(budget, len - 1) + 1)
if age then
  local now = tonumber(ARGV[4])
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local cutoff = now - age
  local old = 0
  for i = 1, #head do
    local raw, t = head[i][2], nil
    for j = 1, #raw, 2 do
      if raw[j] == 't' then
        t = tonumber(raw[j + 1])
      end
    end
    if t and t < cutoff then
      old = i
    else
      break
    end
  end
  n = math.max(n, old)
end
local more = 0
n = math.min(n, len - 1)
if n > budget then
  n, more = budget, 1
end
if n == 0 then
  return {0, math.max(first, seq_of(head[1][1])), 0}
end

local keep = seq_of(head[n + 1][1])
redis.call('XTRIM', log, 'MINID', keep .. '-0')
local gone = {}
for i = 1, n do
  table.insert(gone, seq_of(head[i][1]))
  if #gone == 200 then
    redis.call('HDEL', state, unpack(gone))
    gone = {}
  end
end
if #gone > 0 then
  redis.call('HDEL', state, unpack(gone))
end
if keep > first then
  first = keep
  redis.call('HSET', meta, 'first', first)
end
local epoch = redis.call('HGET', meta, 'epoch') or ''
redis.call('PUBLISH', ARGV[5], 'x|' .. epoch .. '|' .. string.format('%d', first))
return {n, first, more}
