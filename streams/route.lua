-- Route one ticket, atomically: pick the available agent maximising skill x spare capacity and take a
-- slot, or queue the ticket by urgency; children of an assigned master incident attach to its assignee.
-- Commits the record, the routed-stream entry and the XACK in the same step (effectively once).
-- The runtime supplies KEYS[1], ARGV[1] and ARGV[2] (the entry it read); the stage supplies the rest.
-- KEYS: 1 input stream, 2 routed stream, 3 record, 4 team queue, 5 group hash, 6 events stream,
--       7 .. 6+S: one status index per status (S = how many, in the order of ARGV[11]),
--       then one key per agent, in the order of the agent ids in ARGV[12..]
-- ARGV: 1 group, 2 entry id, 3 ticket_id, 4 team, 5 urgency, 6 now_ms, 7 stream maxlen, 8 events maxlen,
--       9 ttl_s, 10 output JSON (ticket summary), 11 statuses (comma list), 12.. agent ids
-- Returns {status, assignee ('' if none), fresh (1 = routed now, 0 = already routed before),
--          fill (1 = queued behind older or more urgent tickets while an agent is free: the caller runs fill.lua)}
-- Queue rule: a new ticket never takes a free slot ahead of its team's queue head that scores lower (more
-- urgent, then older); it is queued and fill.lua hands the slot to the head. A slot holder's record has no TTL.
local rec = KEYS[3]
if redis.call('HEXISTS', rec, 'done:route') == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  local v = redis.call('HMGET', rec, 'status', 'assignee')
  return {v[1] or '', v[2] or '', 0, 0}
end
local index = {}
local nstatus = 0
for s in string.gmatch(ARGV[11], '[^,]+') do
  nstatus = nstatus + 1
  index[s] = KEYS[6 + nstatus]
end
local agent_key = {}
for j = 12, #ARGV do
  agent_key[ARGV[j]] = KEYS[6 + nstatus + j - 11]
end

local function pick(team)
  local best, bestw = nil, 0
  for j = 12, #ARGV do
    local id = ARGV[j]
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

local status, assignee, reason, fill = nil, '', '', 0
local why = ''  -- prefix of the reason when the incident's assignee cannot take its children
-- a resolved incident takes no new children: a recurrence is routed like any ticket
local incident = redis.call('HGET', KEYS[5], 'incident') == '1' and redis.call('HGET', KEYS[5], 'status') ~= 'resolved'
if incident then
  local a = redis.call('HGET', KEYS[5], 'assignee')
  if a and agent_key[a] and redis.call('HGET', agent_key[a], 'active') == '0' then
    -- never attach to an inactive agent: route like any ticket (a new assignee takes the incident over)
    why = 'incident assignee ' .. a .. ' is inactive; '
  elseif a then
    status, assignee, reason = 'attached', a, 'master incident already assigned'
  end
end
-- lower score pops first: most urgent, then oldest
local score = math.floor((1 - tonumber(ARGV[5])) * 100) * 1e13 + tonumber(ARGV[6])
local head = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
local behind = head[1] ~= nil and head[1] ~= ARGV[3] and tonumber(head[2]) <= score
if not status then
  local a = pick(ARGV[4])
  if a and behind then
    -- older or more urgent tickets wait for this team: they get the free slot first (fill.lua)
    redis.call('ZADD', KEYS[4], score, ARGV[3])
    status, reason, fill = 'queued', why .. 'older or more urgent tickets of this team are waiting', 1
  elseif a then
    redis.call('HINCRBY', agent_key[a], 'load', 1)
    redis.call('HSET', rec, 'holds_slot', '1', 'assigned_at', ARGV[6])
    status, assignee, reason = 'assigned', a, why .. 'max skill x spare capacity'
    if incident then
      redis.call('HSET', KEYS[5], 'assignee', a)
      reason = why .. 'assigned for its master incident'
    end
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'type', 'agent.load', 'agent', a,
      'load', redis.call('HGET', agent_key[a], 'load'))
  else
    redis.call('ZADD', KEYS[4], score, ARGV[3])
    status, reason = 'queued', why .. 'no available agent with this skill'
  end
end

local old = redis.call('HGET', rec, 'status')
if old and old ~= status and index[old] then
  redis.call('ZREM', index[old], ARGV[3])
end
redis.call('ZADD', index[status], ARGV[6], ARGV[3])
redis.call('HSET', rec, 'done:route', ARGV[2], 'status', status, 'assignee', assignee, 'team', ARGV[4],
  'route', cjson.encode({status = status, assignee = assignee, team = ARGV[4], reason = reason,
    queue = (status == 'queued') and ARGV[4] or cjson.null}),
  't_route', ARGV[6])
if status == 'assigned' then
  -- a ticket holding a slot never expires: its record is what frees the slot (resolve gives the TTL back)
  redis.call('PERSIST', rec)
else
  redis.call('EXPIRE', rec, ARGV[9])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'ticket_id', ARGV[3], 'status', status,
  'assignee', assignee, 'team', ARGV[4], 'data', ARGV[10])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'type', 'ticket.' .. status, 'ticket_id', ARGV[3],
  'assignee', assignee, 'team', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return {status, assignee, 1, fill}
