-- Mark a dead-lettered entry's ticket dead, only where the entry provably is that ticket's. The runtime calls it
-- only with an id the stage validated from the entry (never a raw field of an entry it could not decode); here it
-- also leaves alone a ticket that has no record (no stub left behind), one another entry owns (ingest stage: the
-- record's stream_id is another entry's), and one already routed (its agent slot or queue place stays held).
-- The ticket.dead event names the ticket only when it was marked.
-- KEYS: 1 record, 2 events stream, 3.. one status index per status, in the order of ARGV[4]
-- ARGV: 1 reason, 2 now_ms, 3 ticket_id, 4 statuses (comma list), 5 owner entry id ('' = no check),
--       6 events maxlen, 7 reason for the event (shortened)
-- Returns 1 marked, 0 no such ticket, -1 owned by another entry, -2 already routed.
local routed = {assigned = true, queued = true, attached = true, resolved = true}
local function event(ticket_id)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'type', 'ticket.dead', 'ticket_id', ticket_id,
    'reason', ARGV[7])
end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  event('')
  return 0
end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'stream_id') ~= ARGV[5] then
  event('')
  return -1
end
if routed[st] then
  event('')
  return -2
end
local index = {}
local i = 3
for s in string.gmatch(ARGV[4], '[^,]+') do
  index[s] = KEYS[i]
  i = i + 1
end
redis.call('HSET', KEYS[1], 'status', 'dead', 'dead_reason', ARGV[1])
if index[st] then redis.call('ZREM', index[st], ARGV[3]) end
redis.call('ZADD', index['dead'], ARGV[2], ARGV[3])
event(ARGV[3])
return 1
