-- Resolve a master incident: mark the group resolved and resolve every routed member ticket with it,
-- freeing the agent slots they hold (like resolve.lua, without handing out the next queued ticket).
-- The caller reads the member list and each member's assignee and team, then passes their keys; anything
-- that moved in between makes this return 'stale' before writing, and the caller reads again.
-- KEYS: 1 group hash, 2 group members list, 3 incidents zset, 4 events stream,
--       5 .. 4+S: one status index per status (in the order of ARGV[4]),
--       then per member: record key, agent key (the record key when none), team queue key
-- ARGV: 1 group id, 2 now_ms, 3 events maxlen, 4 statuses (comma list), 5 record ttl_s,
--       6.. per member: ticket id, assignee read ('' = none), team read
-- Each resolved member's record gets its TTL back (one holding a slot had none). Queued tickets waiting for the
-- freed slots are handed out by fill.lua, which the caller runs next.
-- Returns {outcome: resolved|already|missing|not_incident|stale, tickets resolved, {agents whose load changed}}
local g = KEYS[1]
if redis.call('EXISTS', g) == 0 then return {'missing', 0, {}} end
if redis.call('HGET', g, 'incident') ~= '1' then return {'not_incident', 0, {}} end
if redis.call('HGET', g, 'status') == 'resolved' then return {'already', 0, {}} end
local index = {}
local nstatus = 0
for s in string.gmatch(ARGV[4], '[^,]+') do
  nstatus = nstatus + 1
  index[s] = KEYS[4 + nstatus]
end
local nmem = (#ARGV - 5) / 3
local members = redis.call('LRANGE', KEYS[2], 0, -1)
if #members ~= nmem then return {'stale', 0, {}} end
for m = 1, nmem do
  local rec = KEYS[2 + nstatus + 3 * m]
  local v = redis.call('HMGET', rec, 'assignee', 'team')
  if members[m] ~= ARGV[3 + 3 * m] or (v[1] or '') ~= ARGV[4 + 3 * m] or (v[2] or '') ~= ARGV[5 + 3 * m] then
    return {'stale', 0, {}}
  end
end

local n = 0
local freed, agents, agent_key = {}, {}, {}
for m = 1, nmem do
  local rec, akey, queue = KEYS[2 + nstatus + 3 * m], KEYS[3 + nstatus + 3 * m], KEYS[4 + nstatus + 3 * m]
  local id = ARGV[3 + 3 * m]
  local v = redis.call('HMGET', rec, 'status', 'assignee', 'holds_slot')
  local st, agent = v[1], v[2] or ''
  if st == 'assigned' or st == 'attached' or st == 'queued' then
    if st == 'queued' then
      redis.call('ZREM', queue, id)
    end
    if v[3] == '1' and agent ~= '' then
      redis.call('HINCRBY', akey, 'load', -1)
      redis.call('HSET', rec, 'holds_slot', '0')
      if not freed[agent] then
        freed[agent] = true
        agents[#agents + 1] = agent
        agent_key[agent] = akey
      end
    end
    redis.call('ZREM', index[st], id)
    redis.call('ZADD', index['resolved'], ARGV[2], id)
    redis.call('HSET', rec, 'status', 'resolved', 'resolved_at', ARGV[2])
    redis.call('EXPIRE', rec, ARGV[5])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'type', 'ticket.resolved', 'ticket_id', id,
      'agent', agent, 'reason', 'incident resolved')
    n = n + 1
  end
end
for _, agent in ipairs(agents) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'type', 'agent.load', 'agent', agent,
    'load', redis.call('HGET', agent_key[agent], 'load'))
end
redis.call('HSET', g, 'status', 'resolved', 'resolved_at', ARGV[2], 'since_resolved', 0)  -- group.lua re-opens on K since
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'type', 'incident.resolved', 'group', ARGV[1],
  'size', redis.call('HGET', g, 'size') or '0', 'tickets_resolved', n)
return {'resolved', n, agents}
