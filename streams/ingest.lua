-- HTTP door: accept a validated ticket once per ticket id (the idempotency key).
-- KEYS: 1 record, 2 ingest stream (a lane), 3 idx:all, 4 idx:status:received, 5 events stream
-- ARGV: 1 ticket_id, 2 ticket JSON, 3 now_ms, 4 stream maxlen, 5 record ttl_s, 6 events maxlen
-- Returns {stream_id, created}: created=0 means the id was seen before and nothing was written.
local existing = redis.call('HGET', KEYS[1], 'stream_id')
if existing then
  return {existing, 0}
end
local sid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'data', ARGV[2], 'ticket_id', ARGV[1])
redis.call('HSET', KEYS[1], 'ticket_id', ARGV[1], 'ticket', ARGV[2], 'stream_id', sid,
  'status', 'received', 'received_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'type', 'ticket.received', 'ticket_id', ARGV[1])
return {sid, 1}
