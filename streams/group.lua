-- Dedup: put one ticket into its near-duplicate group; open a master incident when the group reaches K.
-- Alerts go to the alerts stream here, inside the commit, so none is lost or sent twice by a crash.
-- KEYS: 1 record, 2 group hash, 3 group members list, 4 incidents zset, 5 alerts stream, 6 events stream
-- ARGV: 1 ticket_id, 2 group id, 3 now_ms, 4 K, 5 urgent (1/0), 6 alert JSON (ticket summary),
--       7 ttl_s, 8 team, 9 sample text, 10 unused (the alerts stream is never trimmed: an alert not yet sent must
--       not be lost), 11 events maxlen
-- Returns {group size, incident (0/1), alert: none|sent|suppressed|incident}
local rec = KEYS[1]
if redis.call('HEXISTS', rec, 'done:dedup') == 1 then
  local v = redis.call('HMGET', rec, 'group_size', 'incident', 'alert')
  return {tonumber(v[1]) or 0, tonumber(v[2]) or 0, v[3] or 'none'}
end
local g = KEYS[2]
local n = redis.call('HINCRBY', g, 'size', 1)
if n == 1 then
  redis.call('HSET', g, 'gid', ARGV[2], 'created_at', ARGV[3], 'team', ARGV[8], 'sample', ARGV[9], 'status', 'open')
end
redis.call('HSET', g, 'last_at', ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('EXPIRE', g, ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[7])
local urgent = ARGV[5] == '1'
local incident = redis.call('HGET', g, 'incident') == '1'
local alert = 'none'
local evt = 'ticket.grouped'
if incident then
  if urgent then alert = 'suppressed' end
  evt = 'incident.grew'
elseif n >= tonumber(ARGV[4]) then
  redis.call('HSET', g, 'incident', '1', 'opened_at', ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
  redis.call('XADD', KEYS[5], '*', 'type', 'incident.opened', 'group', ARGV[2],
    'size', n, 'data', ARGV[6])
  incident = true
  alert = 'incident'
  evt = 'incident.opened'
elseif urgent and n == 1 then
  redis.call('XADD', KEYS[5], '*', 'type', 'ticket.urgent', 'group', ARGV[2],
    'size', n, 'data', ARGV[6])
  alert = 'sent'
elseif urgent then
  alert = 'suppressed'
end
local inc = incident and 1 or 0
redis.call('HSET', rec, 'group', ARGV[2], 'group_size', n, 'incident', inc, 'alert', alert)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[11], '*', 'type', evt, 'ticket_id', ARGV[1], 'group', ARGV[2], 'size', n)
return {n, inc, alert}
