#!lua flags=no-writes
-- A room's log after a seq, or its latest entries, with the meta that goes with them, in
-- one atomic read.
-- KEYS: 1 meta hash, 2 log stream, 3 users hash
-- ARGV: 1 "after" or "latest", 2 the seq to read after (for "after"), 3 max entries,
--       4 "1" to include the presence snapshot (users hash)
-- Returns {epoch or "", top, pv, entries, users}: entries as XRANGE gives them, users as
-- HGETALL gives them ({} unless asked).
local meta, log, users = KEYS[1], KEYS[2], KEYS[3]
local m = redis.call('HMGET', meta, 'epoch', 'top', 'pv')
local entries
if ARGV[1] == 'after' then
  entries = redis.call('XRANGE', log, '(' .. ARGV[2] .. '-0', '+', 'COUNT', ARGV[3])
else
  entries = redis.call('XREVRANGE', log, '+', '-', 'COUNT', ARGV[3])
end
local who = {}
if ARGV[4] == '1' then
  who = redis.call('HGETALL', users)
end
return {m[1] or '', tonumber(m[2] or '0'), tonumber(m[3] or '0'), entries, who}
