-- Mark a dead-lettered entry's ticket dead. Only touches a record that exists: a dead entry must not leave a
-- stub ticket behind.
-- KEYS: 1 record, 2.. one status index per status, in the order of ARGV[4]
-- ARGV: 1 reason, 2 now_ms, 3 ticket_id, 4 statuses (comma list)
-- Returns 1 marked, 0 no such ticket.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
local index = {}
local i = 2
for s in string.gmatch(ARGV[4], '[^,]+') do
  index[s] = KEYS[i]
  i = i + 1
end
redis.call('HSET', KEYS[1], 'status', 'dead', 'dead_reason', ARGV[1])
if index[st] then redis.call('ZREM', index[st], ARGV[3]) end
redis.call('ZADD', index['dead'], ARGV[2], ARGV[3])
return 1
