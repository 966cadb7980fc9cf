-- Resolve a ticket: free its agent's slot and hand that agent the most urgent queued ticket it can take.
-- The caller reads the record (assignee, team) and the head of each queue the agent is skilled for, then
-- passes those keys; anything that moved in between makes this return 'stale' before writing, and the
-- caller reads again.
-- KEYS: 1 record, 2 events stream, 3 the assignee's agent key (the record key when there is none),
--       4 the ticket's team queue, 5 .. 4+S: one status index per status (in the order of ARGV[4]),
--       then per candidate: its queue key, its record key (the queue key again when the queue is empty)
-- ARGV: 1 ticket_id, 2 now_ms, 3 events maxlen, 4 statuses (comma list), 5 assignee read ('' = none),
--       6 team read, 7 record ttl_s, 8.. per candidate: the ticket id at the head of that queue ('' = empty)
-- The resolved record gets its TTL back; the dequeued one holds a slot, so it loses its TTL. A head whose record
-- is no longer queued (expired) is not handed out (fill.lua drops it from its queue).
-- Returns {outcome: resolved|already|missing|not_routed|stale, next ticket id or status or '', agent or ''}
local rec = KEYS[1]
local st = redis.call('HGET', rec, 'status')
if not st then return {'missing', '', ''} end
if st == 'resolved' then return {'already', '', ''} end
if st ~= 'assigned' and st ~= 'attached' and st ~= 'queued' then return {'not_routed', st, ''} end
local index = {}
local nstatus = 0
for s in string.gmatch(ARGV[4], '[^,]+') do
  nstatus = nstatus + 1
  index[s] = KEYS[4 + nstatus]
end
local agent = redis.call('HGET', rec, 'assignee') or ''
if agent ~= ARGV[5] or (redis.call('HGET', rec, 'team') or '') ~= ARGV[6] then return {'stale', '', ''} end
-- check every candidate before writing anything
local ncand = #ARGV - 7
local best_i, best_s = nil, nil
for c = 1, ncand do
  local q, cid = KEYS[3 + nstatus + 2 * c], ARGV[7 + c]
  local top = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  if (top[1] or '') ~= cid then return {'stale', '', ''} end
  if cid ~= '' and (best_s == nil or tonumber(top[2]) < best_s) then
    best_i, best_s = c, tonumber(top[2])
  end
end

local id = ARGV[1]
if st == 'queued' then
  redis.call('ZREM', KEYS[4], id)
end
local next_id = ''
if redis.call('HGET', rec, 'holds_slot') == '1' and agent ~= '' then
  local akey = KEYS[3]
  redis.call('HINCRBY', akey, 'load', -1)
  redis.call('HSET', rec, 'holds_slot', '0')
  local cap = tonumber(redis.call('HGET', akey, 'capacity')) or 0
  local load = tonumber(redis.call('HGET', akey, 'load')) or 0
  local nrec = KEYS[4 + nstatus + 2 * (best_i or 0)]  -- (KEYS[4 + nstatus] when there is no candidate)
  if best_i and redis.call('HGET', akey, 'active') ~= '0' and load < cap
      and redis.call('HGET', nrec, 'status') == 'queued' then
    next_id = ARGV[7 + best_i]
    redis.call('ZREM', KEYS[3 + nstatus + 2 * best_i], next_id)
    redis.call('HINCRBY', akey, 'load', 1)
    redis.call('HSET', nrec, 'status', 'assigned', 'assignee', agent, 'holds_slot', '1', 'assigned_at', ARGV[2])
    redis.call('PERSIST', nrec)
    redis.call('ZREM', index['queued'], next_id)
    redis.call('ZADD', index['assigned'], ARGV[2], next_id)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'ticket.assigned', 'ticket_id', next_id,
      'assignee', agent, 'reason', 'dequeued on resolve')
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'agent.load', 'agent', agent,
    'load', redis.call('HGET', akey, 'load'))
end
redis.call('ZREM', index[st], id)
redis.call('ZADD', index['resolved'], ARGV[2], id)
redis.call('HSET', rec, 'status', 'resolved', 'resolved_at', ARGV[2])
redis.call('EXPIRE', rec, ARGV[7])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'ticket.resolved', 'ticket_id', id, 'agent', agent)
return {'resolved', next_id, agent}
