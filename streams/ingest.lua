-- HTTP door: accept a validated ticket once per ticket id (the idempotency key).
-- KEYS: 1 record, 2 ingest stream (a lane), 3 idx:all, 4 idx:status:received, 5 events stream
-- ARGV: 1 ticket_id, 2 ticket JSON, 3 now_ms, 4 unused (a lane is never trimmed: an entry no worker has read
--       must not be lost; ROUTING_MAX_INGEST_LAG caps the lanes instead), 5 record ttl_s, 6 events maxlen,
--       7 body hash (sha256 hex of the ticket's canonical JSON)
-- Returns {stream_id, created, accepted hash}: created=1 written now; 0 the id was seen before with this body (or
-- with none recorded: a record the stream door made), nothing written; -1 the id was accepted with another body,
-- nothing written. The hash is the one the record holds ('' when none).
local existing = redis.call('HGET', KEYS[1], 'stream_id')
if existing then
  local accepted = redis.call('HGET', KEYS[1], 'body_hash') or ''
  if accepted ~= '' and accepted ~= ARGV[7] then
    return {existing, -1, accepted}
  end
  return {existing, 0, accepted}
end
local sid = redis.call('XADD', KEYS[2], '*', 'data', ARGV[2], 'ticket_id', ARGV[1])
redis.call('HSET', KEYS[1], 'ticket_id', ARGV[1], 'ticket', ARGV[2], 'stream_id', sid,
  'status', 'received', 'received_at', ARGV[3], 'body_hash', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'type', 'ticket.received', 'ticket_id', ARGV[1])
return {sid, 1, ARGV[7]}
