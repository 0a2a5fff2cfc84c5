#!lua flags=no-writes
-- A room's log after a seq, its latest entries, or a page before a seq, with the meta
-- that goes with them and the current state of the messages among them, in one atomic
-- read.
-- KEYS: 1 meta hash, 2 log stream, 3 users hash, 4 state hash
-- ARGV: 1 "after", "latest" or "before", 2 the seq to read after (for "after") or the
--       stream id to end at (for "before": "(<seq>-0" or "+"), 3 max entries,
--       4 "1" to include the presence snapshot (users hash)
-- Returns {epoch or "", top, pv, entries, users, states, first}: entries as XRANGE gives them
-- (XREVRANGE for "latest" and "before"), users as HGETALL gives them ({} unless asked),
-- states one per entry: a message's current state, an edit's target's (its body goes
-- once the target is deleted), or "" (unchanged, or another entry); first: the oldest
-- seq the log still keeps (retention's meta `first`, or the stream's first entry when
-- trimmed further; top + 1 for an empty stream with a top), 0 when nothing is gone.
local meta, log, users, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local m = redis.call('HMGET', meta, 'epoch', 'top', 'pv', 'first')
local entries
if ARGV[1] == 'after' then
  entries = redis.call('XRANGE', log, '(' .. ARGV[2] .. '-0', '+', 'COUNT', ARGV[3])
elseif ARGV[1] == 'before' then
  entries = redis.call('XREVRANGE', log, ARGV[2], '-', 'COUNT', ARGV[3])
else
  entries = redis.call('XREVRANGE', log, '+', '-', 'COUNT', ARGV[3])
end
local states = {}
if state then
  for i, e in ipairs(entries) do
    local id, raw = e[1], e[2]
    local f = {}
    for j = 1, #raw, 2 do
      f[raw[j]] = raw[j + 1]
    end
    local of
    if not f.k or f.k == '' then
      of = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
    elseif f.k == 'edit' then
      of = f.g
    end
    states[i] = (of and redis.call('HGET', state, of)) or ''
  end
end
local who = {}
if ARGV[4] == '1' then
  who = redis.call('HGETALL', users)
end
local top, first = tonumber(m[2] or '0'), tonumber(m[4] or '0')
local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #head > 0 then
  local id = head[1][1]
  first = math.max(first, tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1)))
elseif top > 0 then
  first = math.max(first, top + 1)
end
if first <= 1 then
  first = 0
end
return {m[1] or '', top, tonumber(m[3] or '0'), entries, who, states, first}
