-- A stage's effectively-once commit for one entry: record update + next-stream entry + XACK, atomically.
-- A redelivered entry whose stage already committed is only acked, so a reclaimed entry never runs twice.
-- The runtime supplies KEYS[1], ARGV[1] and ARGV[2] (the entry it read); the stage supplies the rest.
-- KEYS: 1 input stream, 2 output stream, 3 record, 4 idx:all, 5 events stream,
--       6.. one status index per status, in the order of ARGV[15], last the dead-letter stream
-- ARGV: 1 group, 2 entry id, 3 stage, 4 new status, 5 now_ms, 6 the dead-letter stream's maxlen (the output stream
--       is never trimmed: it is another stage's input, whose unread or pending entries must not be lost),
--       7 events maxlen, 8 ttl_s,
--       9 ticket_id, 10 output JSON ('' = no output), 11 embedding bytes ('' = none),
--       12 owner stream id ('' = no check), 13 event type ('' = none), 14 event JSON,
--       15 statuses (comma list), 16.. record field/value pairs
-- Returns 1 committed, 0 already committed (acked only), -1 ticket id owned by another entry (duplicate), -2 ticket
-- id owned by another entry with another body (record field door_hash differs): the entry is dead-lettered with
-- the reason, in this same commit, and the first ticket is left as it was.
local rec = KEYS[3]
local done = 'done:' .. ARGV[3]
local done_by = redis.call('HGET', rec, done)
-- at the stream door another entry that already committed this id is no redelivery of this one: checked below
if done_by and (ARGV[12] == '' or done_by == ARGV[2]) then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
local index = {}
local i = 6
for s in string.gmatch(ARGV[15], '[^,]+') do
  index[s] = KEYS[i]
  i = i + 1
end
if ARGV[12] ~= '' then
  -- stream door: the first entry to claim a client-supplied id owns it; later ones are duplicates
  local owner = redis.call('HGET', rec, 'stream_id')
  if owner and owner ~= ARGV[12] then
    local accepted, mine = redis.call('HGET', rec, 'door_hash'), nil
    for j = 16, #ARGV, 2 do
      if ARGV[j] == 'door_hash' then mine = ARGV[j + 1] end
    end
    if accepted and mine and accepted ~= mine then
      -- a different ticket under a taken id: never dropped in silence (the HTTP door answers 409 for it)
      local fields = {}
      local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
      if e[1] then
        for i = 1, #e[1][2], 2 do
          if e[1][2][i] ~= 'emb' then fields[e[1][2][i]] = e[1][2][i + 1] end
        end
      end
      local reason = 'id conflict: ticket id ' .. ARGV[9] .. ' was taken by stream entry ' .. owner ..
        ' with another body (send a new id, or the same body to retry)'
      redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', ARGV[6], '*', 'stage', ARGV[3], 'stream', KEYS[1],
        'entry_id', ARGV[2], 'reason', reason, 'ticket_id', '', 'ticket_id_unverified', ARGV[9],
        'fields', cjson.encode(fields), 'at', ARGV[5])
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'type', 'ticket.dead', 'ticket_id', '',
        'reason', reason)
      redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
      return -2
    end
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
    return -1
  end
  if not owner then
    -- received = when the entry reached the ingest stream (its id's millisecond part)
    local received = string.match(ARGV[12], '^(%d+)')
    redis.call('HSET', rec, 'stream_id', ARGV[12], 'received_at', received, 'ticket_id', ARGV[9])
    redis.call('ZADD', KEYS[4], received, ARGV[9])
  end
end
local old = redis.call('HGET', rec, 'status')
if old and old ~= ARGV[4] and index[old] then
  redis.call('ZREM', index[old], ARGV[9])
end
redis.call('ZADD', index[ARGV[4]], ARGV[5], ARGV[9])
redis.call('HSET', rec, done, ARGV[2], 'status', ARGV[4])
for j = 16, #ARGV, 2 do
  redis.call('HSET', rec, ARGV[j], ARGV[j + 1])
end
redis.call('EXPIRE', rec, ARGV[8])
if ARGV[10] ~= '' then
  if ARGV[11] ~= '' then
    redis.call('XADD', KEYS[2], '*', 'data', ARGV[10], 'emb', ARGV[11], 'ticket_id', ARGV[9])
  else
    redis.call('XADD', KEYS[2], '*', 'data', ARGV[10], 'ticket_id', ARGV[9])
  end
end
if ARGV[13] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'type', ARGV[13], 'ticket_id', ARGV[9], 'data', ARGV[14])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
