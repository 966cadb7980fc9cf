-- Move alerts whose next try is due from the delay zset back onto the alerts stream, at most ARGV[2] per call.
-- A member is the JSON array of the entry's flat fields (alert_id, attempt and first_at included), so the alert
-- keeps its id and its count. XADD and ZREM run together: a member is moved once, however many workers call this.
-- KEYS: 1 delayed zset, 2 alerts stream
-- ARGV: 1 now (ms), 2 most to move
-- Returns how many were moved.
local delayed, alerts = KEYS[1], KEYS[2]
local due = redis.call('ZRANGE', delayed, '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', alerts, '*', unpack(cjson.decode(member)))
  redis.call('ZREM', delayed, member)
end
return #due
