-- A stage's effectively-once commit for one entry: record update + next-stream entry + XACK, atomically.
-- A redelivered entry whose stage already committed is only acked, so a reclaimed entry never runs twice.
-- KEYS: 1 input stream, 2 output stream, 3 record, 4 idx:all, 5 idx:status:<new status>, 6 events stream
-- ARGV: 1 group, 2 entry id, 3 stage, 4 new status, 5 now_ms, 6 maxlen, 7 ttl_s, 8 ticket_id,
--       9 output JSON ('' = no output), 10 embedding bytes ('' = none), 11 owner stream id ('' = no check),
--       12 key prefix (for the old status index), 13 event type, 14 event JSON,
--       15.. record field/value pairs
-- Returns 1 committed, 0 already committed (acked only), -1 ticket id owned by another entry (duplicate).
local rec = KEYS[3]
local done = 'done:' .. ARGV[3]
if redis.call('HEXISTS', rec, done) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
if ARGV[11] ~= '' then
  -- stream door: the first entry to claim a client-supplied id owns it; later ones are duplicates
  local owner = redis.call('HGET', rec, 'stream_id')
  if owner and owner ~= ARGV[11] then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
    return -1
  end
  if not owner then
    -- received = when the entry reached the ingest stream (its id's millisecond part)
    local received = string.match(ARGV[11], '^(%d+)')
    redis.call('HSET', rec, 'stream_id', ARGV[11], 'received_at', received, 'ticket_id', ARGV[8])
    redis.call('ZADD', KEYS[4], received, ARGV[8])
  end
end
local old = redis.call('HGET', rec, 'status')
if old and old ~= ARGV[4] then
  redis.call('ZREM', ARGV[12] .. ':idx:status:' .. old, ARGV[8])
end
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[8])
redis.call('HSET', rec, done, ARGV[2], 'status', ARGV[4])
for i = 15, #ARGV, 2 do
  redis.call('HSET', rec, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', rec, ARGV[7])
if ARGV[9] ~= '' then
  if ARGV[10] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'data', ARGV[9], 'emb', ARGV[10], 'ticket_id', ARGV[8])
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'data', ARGV[9], 'ticket_id', ARGV[8])
  end
end
if ARGV[13] ~= '' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', 100000, '*', 'type', ARGV[13], 'ticket_id', ARGV[8], 'data', ARGV[14])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
