-- Resolve a ticket: free its agent's slot and hand that agent the most urgent queued ticket it can take.
-- KEYS: 1 record, 2 events stream
-- ARGV: 1 ticket_id, 2 now_ms, 3 key prefix
-- Returns {outcome: resolved|already|missing|not_routed, next ticket id or '', agent or ''}
local rec = KEYS[1]
local P = ARGV[3]
local st = redis.call('HGET', rec, 'status')
if not st then return {'missing', '', ''} end
if st == 'resolved' then return {'already', '', ''} end
if st ~= 'assigned' and st ~= 'attached' and st ~= 'queued' then return {'not_routed', st, ''} end
local id = ARGV[1]
local agent = redis.call('HGET', rec, 'assignee') or ''
if st == 'queued' then
  redis.call('ZREM', P .. ':queue:' .. (redis.call('HGET', rec, 'team') or ''), id)
end
local next_id = ''
if redis.call('HGET', rec, 'holds_slot') == '1' and agent ~= '' then
  local akey = P .. ':agent:' .. agent
  redis.call('HINCRBY', akey, 'load', -1)
  redis.call('HSET', rec, 'holds_slot', '0')
  local a = redis.call('HGETALL', akey)
  local best_q, best_s = nil, nil
  for i = 1, #a, 2 do
    if string.sub(a[i], 1, 6) == 'skill:' and (tonumber(a[i + 1]) or 0) > 0 then
      local q = P .. ':queue:' .. string.sub(a[i], 7)
      local top = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
      if top[1] and (best_s == nil or tonumber(top[2]) < best_s) then
        best_q, best_s, next_id = q, tonumber(top[2]), top[1]
      end
    end
  end
  local cap = tonumber(redis.call('HGET', akey, 'capacity')) or 0
  local load = tonumber(redis.call('HGET', akey, 'load')) or 0
  if best_q and redis.call('HGET', akey, 'active') ~= '0' and load < cap then
    redis.call('ZREM', best_q, next_id)
    redis.call('HINCRBY', akey, 'load', 1)
    local nrec = P .. ':t:' .. next_id
    redis.call('HSET', nrec, 'status', 'assigned', 'assignee', agent, 'holds_slot', '1', 'assigned_at', ARGV[2])
    redis.call('ZREM', P .. ':idx:status:queued', next_id)
    redis.call('ZADD', P .. ':idx:status:assigned', ARGV[2], next_id)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'type', 'ticket.assigned', 'ticket_id', next_id,
      'assignee', agent, 'reason', 'dequeued on resolve')
  else
    next_id = ''
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'type', 'agent.load', 'agent', agent,
    'load', redis.call('HGET', akey, 'load'))
end
redis.call('ZREM', P .. ':idx:status:' .. st, id)
redis.call('ZADD', P .. ':idx:status:resolved', ARGV[2], id)
redis.call('HSET', rec, 'status', 'resolved', 'resolved_at', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'type', 'ticket.resolved', 'ticket_id', id, 'agent', agent)
return {'resolved', next_id, agent}
