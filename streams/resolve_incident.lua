-- Resolve a master incident: mark the group resolved and resolve every routed member ticket with it,
-- freeing the agent slots they hold (like resolve.lua, without handing out the next queued ticket).
-- KEYS: 1 group hash, 2 group members list, 3 incidents zset, 4 events stream
-- ARGV: 1 group id, 2 now_ms, 3 key prefix
-- Returns {outcome: resolved|already|missing|not_incident, tickets resolved, {agents whose load changed}}
local g = KEYS[1]
local P = ARGV[3]
if redis.call('EXISTS', g) == 0 then return {'missing', 0, {}} end
if redis.call('HGET', g, 'incident') ~= '1' then return {'not_incident', 0, {}} end
if redis.call('HGET', g, 'status') == 'resolved' then return {'already', 0, {}} end
local n = 0
local freed, agents = {}, {}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local rec = P .. ':t:' .. id
  local v = redis.call('HMGET', rec, 'status', 'assignee', 'holds_slot', 'team')
  local st, agent = v[1], v[2] or ''
  if st == 'assigned' or st == 'attached' or st == 'queued' then
    if st == 'queued' then
      redis.call('ZREM', P .. ':queue:' .. (v[4] or ''), id)
    end
    if v[3] == '1' and agent ~= '' then
      redis.call('HINCRBY', P .. ':agent:' .. agent, 'load', -1)
      redis.call('HSET', rec, 'holds_slot', '0')
      if not freed[agent] then
        freed[agent] = true
        agents[#agents + 1] = agent
      end
    end
    redis.call('ZREM', P .. ':idx:status:' .. st, id)
    redis.call('ZADD', P .. ':idx:status:resolved', ARGV[2], id)
    redis.call('HSET', rec, 'status', 'resolved', 'resolved_at', ARGV[2])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'type', 'ticket.resolved', 'ticket_id', id,
      'agent', agent, 'reason', 'incident resolved')
    n = n + 1
  end
end
for _, agent in ipairs(agents) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'type', 'agent.load', 'agent', agent,
    'load', redis.call('HGET', P .. ':agent:' .. agent, 'load'))
end
redis.call('HSET', g, 'status', 'resolved', 'resolved_at', ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'type', 'incident.resolved', 'group', ARGV[1],
  'size', redis.call('HGET', g, 'size') or '0', 'tickets_resolved', n)
return {'resolved', n, agents}
