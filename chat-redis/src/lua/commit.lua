#!lua
-- One entry into a room's log, atomically (docs/CLUSTER.md, "A send"): a message, or a
-- change to one (edit, delete, react) checked against the target's current state and
-- applied to it in the same step, so two nodes cannot both accept conflicting changes;
-- or the host's erasure of a user (erase: no target). A delete and an erase also take
-- the text they remove out of the stream (its tail rewritten: "No text left behind").
-- KEYS: 1 meta hash, 2 log stream, 3 idempotency key (set when ARGV[4] is not empty),
--       4 state hash (target seq -> the message's current state, for changed messages)
-- ARGV: 1 caller's epoch, 2 user, 3 body, 4 client id or "", 5 stream MAXLEN (~),
--       6 idempotency key lifetime (s), 7 doorbell channel,
--       8 kind ("" for a message, "edit", "delete", "react", "erase"), 9 target seq
--       or "",
--       10 emoji or "", 11 on ("1" or "0"), 12 reply_to seq or "",
--       13 edit window (ms), 14 most distinct emoji per message, 15 "1": any author
--       (a moderator's delete), 16 the user's key (folded name)
-- Returns {seq, ts_ms, duplicate 0/1, epoch}, or the error "STALE_EPOCH <epoch>" when the
-- room's log belongs to a newer epoch than the caller's, or "REFUSED <code> <why>" when a
-- change (or a reply) breaks a rule; then nothing was written.
local meta, log, idem, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local epoch, user, body, cid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local kind, target, emoji, on, reply_to = ARGV[8] or '', ARGV[9] or '', ARGV[10] or '', ARGV[11] or '', ARGV[12] or ''
local ukey = ARGV[16] or ''

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

local function refuse(code, why)
  return redis.error_reply('REFUSED ' .. code .. ' ' .. why)
end

-- The message `seq` names: its stream fields and its current state (nil when it never
-- changed), or nil and why not ("unknown": never handed out; "older": trimmed away;
-- "change": an entry that is not a message).
local function message_at(seq)
  local top = tonumber(redis.call('HGET', meta, 'top') or '0')
  if not seq or seq < 1 or seq > top then
    return nil, 'unknown'
  end
  local got = redis.call('XRANGE', log, seq .. '-0', seq .. '-0')
  if #got == 0 then
    return nil, 'older'
  end
  local f, raw = {}, got[1][2]
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
  end
  if f.k and f.k ~= '' then
    return nil, 'change'
  end
  local s = redis.call('HGET', state, seq)
  if s then
    s = cjson.decode(s)
  end
  return f, s
end

-- An entry's fields as a table.
local function fields_of(raw)
  local f = {}
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
  end
  return f
end

-- An entry's seq, from its stream id.
local function seq_of(id)
  return tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
end

-- The author's key: written with the entry when it differs from the name; an entry
-- without it has a name that is its own key (ASCII lower case).
local function author_of(f)
  return f.a or string.lower(f.u)
end

-- Takes text out of the stream: a stream entry cannot be changed in place, so the
-- entries from the oldest one whose text goes (`entries[from]`) to the top are
-- deleted, the stream's last id lowered to just below it (allowed since nothing above
-- it remains), and the entries appended again with the same ids and fields, the text
-- (`b`) of those `blank(fields)` names emptied. `entries` is XRANGE's answer from
-- `entries[1]` to the top. Returns how many entries were written again.
local function rewrite_tail(entries, blank)
  local from
  for i, e in ipairs(entries) do
    local f = fields_of(e[2])
    if f.b and f.b ~= '' and blank(f, seq_of(e[1])) then
      from = i
      break
    end
  end
  if not from then
    return 0
  end
  local ids = {}
  for i = from, #entries do
    table.insert(ids, entries[i][1])
    if #ids == 500 then
      redis.call('XDEL', log, unpack(ids))
      ids = {}
    end
  end
  if #ids > 0 then
    redis.call('XDEL', log, unpack(ids))
  end
  redis.call('XSETID', log, string.format('%d', seq_of(entries[from][1]) - 1) .. '-0')
  for i = from, #entries do
    local id, raw = entries[i][1], entries[i][2]
    local f = fields_of(raw)
    local out = raw
    if f.b and f.b ~= '' and blank(f, seq_of(id)) then
      out = {}
      for j = 1, #raw, 2 do
        out[j] = raw[j]
        out[j + 1] = (raw[j] == 'b') and '' or raw[j + 1]
      end
    end
    redis.call('XADD', log, id, unpack(out))
  end
  return #entries - from + 1
end

local s, target_n
if kind == 'erase' then
  -- The host's: nothing to check (the user may have nothing left here).
  s = nil
elseif kind ~= '' then
  target_n = tonumber(target)
  local f, st = message_at(target_n)
  if not f then
    if st == 'change' then
      return refuse('no_such_message', '#' .. target .. ' is a change, not a message')
    elseif st == 'older' then
      return refuse('no_such_message', '#' .. target .. ' is older than the messages the log keeps')
    end
    return refuse('no_such_message', 'no message #' .. target)
  end
  s = st or {}
  if s.d then
    return refuse('gone', '#' .. target .. ' is deleted')
  end
  local author = author_of(f)
  if kind == 'edit' or (kind == 'delete' and ARGV[15] ~= '1') then
    if author ~= ukey then
      return refuse('not_author', '#' .. target .. ' is ' .. f.u .. "'s message")
    end
  end
  if kind == 'edit' and ts - tonumber(f.t) > tonumber(ARGV[13]) then
    return refuse('edit_window_passed', '#' .. target .. ' can no longer be edited')
  end
  if kind == 'react' then
    s.r = s.r or {}
    local found
    for i = 1, #s.r do
      if s.r[i][1] == emoji then
        found = i
      end
    end
    if on == '1' and not found and #s.r >= tonumber(ARGV[14]) then
      return refuse('limit_reached', '#' .. target .. ' has reactions with ' .. ARGV[14] .. ' emoji, the most it may')
    end
  end
elseif reply_to ~= '' then
  local f, st = message_at(tonumber(reply_to))
  if not f and st ~= 'older' then
    return refuse('no_such_message', 'no message #' .. reply_to .. ' to reply to')
  end
  if f and st and st.d then
    return refuse('gone', '#' .. reply_to .. ' is deleted')
  end
end

if cur ~= epoch then
  redis.call('HSET', meta, 'epoch', epoch)
end
local seq = redis.call('HINCRBY', meta, 'top', 1)
redis.call('HSET', meta, 'ts', ts)
local seq_s = string.format('%d', seq)
local ts_s = string.format('%d', ts)
local fields = {'u', user, 'b', body, 't', ts_s, 'c', cid}
if ukey ~= '' and ukey ~= user then
  table.insert(fields, 'a'); table.insert(fields, ukey)
end
if kind ~= '' then
  table.insert(fields, 'k'); table.insert(fields, kind)
  if kind ~= 'erase' then
    table.insert(fields, 'g'); table.insert(fields, target)
  end
  if kind == 'react' then
    table.insert(fields, 'j'); table.insert(fields, emoji)
    table.insert(fields, 'o'); table.insert(fields, on)
  end
elseif reply_to ~= '' then
  table.insert(fields, 'r'); table.insert(fields, reply_to)
end
if kind == 'delete' then
  -- The deleted message's text and its edits' texts leave the stream.
  rewrite_tail(redis.call('XRANGE', log, target .. '-0', '+'), function(f, at)
    if at == target_n then
      return true
    end
    return f.k == 'edit' and f.g == target
  end)
elseif kind == 'erase' then
  -- Every message of the user still in the stream becomes a tombstone (as chat-core's
  -- Message::apply of an erase makes it), the user's reactions leave other messages,
  -- and the user's texts (messages and edits) leave the stream.
  local all = redis.call('XRANGE', log, '-', '+')
  for _, e in ipairs(all) do
    local f = fields_of(e[2])
    if not f.k or f.k == '' then
      local at = e[1]
      at = string.sub(at, 1, string.find(at, '-', 1, true) - 1)
      local st = redis.call('HGET', state, at)
      st = st and cjson.decode(st) or {}
      if author_of(f) == ukey then
        if not st.d then
          redis.call('HSET', state, at, cjson.encode({d = 1, v = seq}))
        end
      elseif st.r then
        local kept, touched = {}, false
        for _, r in ipairs(st.r) do
          local users = {}
          for _, u in ipairs(r[2]) do
            if u[1] == ukey then
              touched = true
            else
              table.insert(users, u)
            end
          end
          if #users > 0 then
            table.insert(kept, {r[1], users})
          end
        end
        if touched then
          st.r = (#kept > 0) and kept or nil
          st.v = seq
          redis.call('HSET', state, at, cjson.encode(st))
        end
      end
    end
  end
  -- States of messages the stream no longer holds (an edit's text among them) go.
  if #all > 0 then
    local floor = seq_of(all[1][1])
    for _, k in ipairs(redis.call('HKEYS', state)) do
      if tonumber(k) < floor then
        redis.call('HDEL', state, k)
      end
    end
  else
    redis.call('DEL', state)
  end
  rewrite_tail(all, function(f)
    return author_of(f) == ukey
  end)
end
redis.call('XADD', log, 'MAXLEN', '~', ARGV[5], seq_s .. '-0', unpack(fields))
if cid ~= '' then
  redis.call('SET', idem, seq_s .. ':' .. ts_s, 'EX', ARGV[6])
end

if kind ~= '' and kind ~= 'erase' then
  -- The target's new current state (as chat-core's Message::apply makes it): `b` the
  -- body after the last edit, `e` when, `d` deleted, `r` reactions (emoji, then
  -- {key, name} pairs in first-reaction order), `v` the seq of the last change.
  s.v = seq
  if kind == 'edit' then
    s.b = body
    s.e = ts
  elseif kind == 'delete' then
    s = {d = 1, v = seq}
  else
    local found
    for i = 1, #s.r do
      if s.r[i][1] == emoji then
        found = i
      end
    end
    if on == '1' then
      if not found then
        table.insert(s.r, {emoji, {}})
        found = #s.r
      end
      local users, here = s.r[found][2], false
      for i = 1, #users do
        if users[i][1] == ukey then
          here = true
        end
      end
      if not here then
        table.insert(users, {ukey, user})
      end
    elseif found then
      local users, kept = s.r[found][2], {}
      for i = 1, #users do
        if users[i][1] ~= ukey then
          table.insert(kept, users[i])
        end
      end
      if #kept == 0 then
        table.remove(s.r, found)
      else
        s.r[found][2] = kept
      end
    end
    if #s.r == 0 then
      s.r = nil
    end
  end
  redis.call('HSET', state, target, cjson.encode(s))
  -- States of messages the stream no longer holds go with them, now and then.
  if redis.call('HLEN', state) > 2 * tonumber(ARGV[5]) then
    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
    if #first > 0 then
      local id = first[1][1]
      local floor = tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
      for _, k in ipairs(redis.call('HKEYS', state)) do
        if tonumber(k) < floor then
          redis.call('HDEL', state, k)
        end
      end
    end
  end
end

if kind == '' and reply_to == '' then
  redis.call('PUBLISH', ARGV[7],
    'm|' .. epoch .. '|' .. seq_s .. '|' .. ts_s .. '|' .. #user .. '|' .. #cid .. '|' .. user .. cid .. body)
else
  -- Any other entry: its stream fields as JSON.
  local e = {}
  for i = 1, #fields, 2 do
    e[fields[i]] = fields[i + 1]
  end
  redis.call('PUBLISH', ARGV[7], 'e|' .. epoch .. '|' .. seq_s .. '|' .. cjson.encode(e))
end
return {seq, ts, 0, epoch}
