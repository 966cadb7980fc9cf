-- Fill free slots: hand queued tickets, most urgent then oldest across the given queues, to the free active agent
-- maximising skill x spare capacity (as route.lua picks), until no given head can be placed. Run whenever
-- capacity appears: a resolve, an incident resolve, an agent raised, added or set active again, a new ticket
-- queued behind a waiting queue while an agent was free.
-- The caller reads the agents it thinks free and the first N ids of each queue those agents could serve, then
-- passes their keys; when a queue's head moved in between (a ticket queued ahead, one taken) this returns 'stale'
-- before writing, and the caller reads again. Loads are read here, live.
-- KEYS: 1 events stream, 2 .. 1+S: one status index per status (in the order of ARGV[3]),
--       then one key per agent (ARGV[5 .. 4+A]), then per queue: its key, then the record key of each head passed
-- ARGV: 1 now_ms, 2 events maxlen, 3 statuses (comma list), 4 A (how many agents), 5 .. 4+A agent ids,
--       then per queue: team, n, n head ids (the queue's first n, in order)
-- A head whose record is not 'queued' any more (it expired) is dropped from its queue, not handed out.
-- A dequeued ticket holds a slot: its record loses its TTL (resolve gives it back).
-- Returns {'filled', {ticket id, agent, ticket id, agent, ...}} or {'stale', {}}
local index = {}
local nstatus = 0
for s in string.gmatch(ARGV[3], '[^,]+') do
  nstatus = nstatus + 1
  index[s] = KEYS[1 + nstatus]
end
local na = tonumber(ARGV[4])
local agent_ids, agent_key = {}, {}
for j = 1, na do
  local id = ARGV[4 + j]
  agent_ids[j] = id
  agent_key[id] = KEYS[1 + nstatus + j]
end

local teams, queue_key, rec_key, ids, pos = {}, {}, {}, {}, {}
local nq = 0
local ki, ai = 2 + nstatus + na, 5 + na
while ai <= #ARGV do
  nq = nq + 1
  queue_key[nq] = KEYS[ki]
  teams[nq], rec_key[nq], ids[nq], pos[nq] = ARGV[ai], {}, {}, 1
  local n = tonumber(ARGV[ai + 1])
  for h = 1, n do
    ids[nq][h] = ARGV[ai + 1 + h]
    rec_key[nq][h] = KEYS[ki + h]
  end
  ki, ai = ki + 1 + n, ai + 2 + n
end

-- check every queue before writing anything: the ids passed are still its first ones, in order
local scores = {}
for c = 1, nq do
  scores[c] = {}
  local n = #ids[c]
  local top = redis.call('ZRANGE', queue_key[c], 0, n - 1, 'WITHSCORES')
  for h = 1, n do
    if top[2 * h - 1] ~= ids[c][h] then return {'stale', {}} end
    scores[c][h] = tonumber(top[2 * h])
  end
end

local function pick(team)
  local best, bestw = nil, 0
  for j = 1, na do
    local id = agent_ids[j]
    local v = redis.call('HMGET', agent_key[id], 'capacity', 'load', 'active', 'skill:' .. team)
    local cap, load, skill = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[4]) or 0
    if v[3] ~= '0' and skill > 0 and load < cap then
      local w = skill * (cap - load)
      if w > bestw or (w == bestw and best and id < best) then
        best, bestw = id, w
      end
    end
  end
  return best
end

local handed, touched, order = {}, {}, {}
local blocked = {}
while true do
  -- the most urgent, then oldest, head among the queues that can still be served
  local c, best = nil, nil
  for q = 1, nq do
    local h = pos[q]
    if not blocked[q] and h <= #ids[q] and (best == nil or scores[q][h] < best) then
      c, best = q, scores[q][h]
    end
  end
  if not c then break end
  local h = pos[c]
  local id = ids[c][h]
  if redis.call('HGET', rec_key[c][h], 'status') ~= 'queued' then
    redis.call('ZREM', queue_key[c], id)
    redis.call('ZREM', index['queued'], id)
    pos[c] = h + 1
  else
    local a = pick(teams[c])
    if not a then
      blocked[c] = true  -- nobody free for this team: its later tickets cannot go either
    else
      redis.call('ZREM', queue_key[c], id)
      redis.call('HINCRBY', agent_key[a], 'load', 1)
      redis.call('HSET', rec_key[c][h], 'status', 'assigned', 'assignee', a, 'holds_slot', '1',
        'assigned_at', ARGV[1])
      redis.call('PERSIST', rec_key[c][h])
      redis.call('ZREM', index['queued'], id)
      redis.call('ZADD', index['assigned'], ARGV[1], id)
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'type', 'ticket.assigned', 'ticket_id', id,
        'assignee', a, 'team', teams[c], 'reason', 'dequeued: a slot came free')
      handed[#handed + 1] = id
      handed[#handed + 1] = a
      if not touched[a] then
        touched[a] = true
        order[#order + 1] = a
      end
      pos[c] = h + 1
    end
  end
end
for _, a in ipairs(order) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'type', 'agent.load', 'agent', a,
    'load', redis.call('HGET', agent_key[a], 'load'))
end
return {'filled', handed}
