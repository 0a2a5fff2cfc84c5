#!lua
-- One message into a room's log, atomically (docs/CLUSTER.md, "A send").
-- KEYS: 1 meta hash, 2 log stream, 3 idempotency key (set when ARGV[4] is not empty)
-- ARGV: 1 caller's epoch, 2 user, 3 body, 4 client id or "", 5 stream MAXLEN (~),
--       6 idempotency key lifetime (s), 7 doorbell channel
-- Returns {seq, ts_ms, duplicate 0/1, epoch}, or the error "STALE_EPOCH <epoch>" when the
-- room's log belongs to a newer epoch than the caller's.
local meta, log, idem = KEYS[1], KEYS[2], KEYS[3]
local epoch, user, body, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if cid ~= '' then
  local prev = redis.call('GET', idem)
  if prev then
    local sep = string.find(prev, ':', 1, true)
    local cur = redis.call('HGET', meta, 'epoch') or epoch
    return {tonumber(string.sub(prev, 1, sep - 1)), tonumber(string.sub(prev, sep + 1)), 1, cur}
  end
end

local cur = redis.call('HGET', meta, 'epoch')
if cur and cur > epoch then
  return redis.error_reply('STALE_EPOCH ' .. cur)
end
if cur ~= epoch then
  redis.call('HSET', meta, 'epoch', epoch)
end

-- The meta hash lost while the log survived: continue after the log's last entry, never
-- hand out a seq the log already has.
if not redis.call('HGET', meta, 'top') then
  local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #last > 0 then
    local id = last[1][1]
    redis.call('HSET', meta, 'top', string.sub(id, 1, string.find(id, '-', 1, true) - 1))
  end
end

local now = redis.call('TIME')
local ts = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last_ts = tonumber(redis.call('HGET', meta, 'ts') or '0')
if ts < last_ts then
  ts = last_ts
end
local seq = redis.call('HINCRBY', meta, 'top', 1)
redis.call('HSET', meta, 'ts', ts)
local seq_s = string.format('%d', seq)
local ts_s = string.format('%d', ts)
redis.call('XADD', log, 'MAXLEN', '~', ARGV[5], seq_s .. '-0', 'u', user, 'b', body, 't', ts_s, 'c', cid)
if cid ~= '' then
  redis.call('SET', idem, seq_s .. ':' .. ts_s, 'EX', ARGV[6])
end
redis.call('PUBLISH', ARGV[7],
  'm|' .. epoch .. '|' .. seq_s .. '|' .. ts_s .. '|' .. #user .. '|' .. #cid .. '|' .. user .. cid .. body)
return {seq, ts, 0, epoch}
