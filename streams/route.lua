-- Route one ticket, atomically: pick the available agent maximising skill x spare capacity and take a
-- slot, or queue the ticket by urgency; children of an assigned master incident attach to its assignee.
-- Commits the record, the routed-stream entry and the XACK in the same step (effectively once).
-- KEYS: 1 input stream, 2 routed stream, 3 record, 4 agents set, 5 team queue, 6 group hash, 7 events stream
-- ARGV: 1 group, 2 entry id, 3 ticket_id, 4 team, 5 urgency, 6 now_ms, 7 maxlen, 8 ttl_s, 9 key prefix,
--       10 output JSON (ticket summary)
-- Returns {status, assignee ('' if none), fresh (1 = routed now, 0 = already routed before)}
local rec = KEYS[3]
local P = ARGV[9]
if redis.call('HEXISTS', rec, 'done:route') == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  local v = redis.call('HMGET', rec, 'status', 'assignee')
  return {v[1] or '', v[2] or '', 0}
end

local function pick(team)
  local best, bestw = nil, 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local v = redis.call('HMGET', P .. ':agent:' .. id, 'capacity', 'load', 'active', 'skill:' .. team)
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

local status, assignee, reason = nil, '', ''
-- a resolved incident takes no new children: a recurrence is routed like any ticket
local incident = redis.call('HGET', KEYS[6], 'incident') == '1' and redis.call('HGET', KEYS[6], 'status') ~= 'resolved'
if incident then
  local a = redis.call('HGET', KEYS[6], 'assignee')
  if a then
    status, assignee, reason = 'attached', a, 'master incident already assigned'
  end
end
if not status then
  local a = pick(ARGV[4])
  if a then
    redis.call('HINCRBY', P .. ':agent:' .. a, 'load', 1)
    redis.call('HSET', rec, 'holds_slot', '1', 'assigned_at', ARGV[6])
    status, assignee, reason = 'assigned', a, 'max skill x spare capacity'
    if incident then
      redis.call('HSET', KEYS[6], 'assignee', a)
      reason = 'assigned for its master incident'
    end
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', 100000, '*', 'type', 'agent.load', 'agent', a,
      'load', redis.call('HGET', P .. ':agent:' .. a, 'load'))
  else
    -- lower score pops first: most urgent, then oldest
    local score = math.floor((1 - tonumber(ARGV[5])) * 100) * 1e13 + tonumber(ARGV[6])
    redis.call('ZADD', KEYS[5], score, ARGV[3])
    status, reason = 'queued', 'no available agent with this skill'
  end
end

local old = redis.call('HGET', rec, 'status')
if old and old ~= status then
  redis.call('ZREM', P .. ':idx:status:' .. old, ARGV[3])
end
redis.call('ZADD', P .. ':idx:status:' .. status, ARGV[6], ARGV[3])
redis.call('HSET', rec, 'done:route', ARGV[2], 'status', status, 'assignee', assignee, 'team', ARGV[4],
  'route', cjson.encode({status = status, assignee = assignee, team = ARGV[4], reason = reason,
    queue = (status == 'queued') and ARGV[4] or cjson.null}),
  't_route', ARGV[6])
redis.call('EXPIRE', rec, ARGV[8])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'ticket_id', ARGV[3], 'status', status,
  'assignee', assignee, 'team', ARGV[4], 'data', ARGV[10])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', 100000, '*', 'type', 'ticket.' .. status, 'ticket_id', ARGV[3],
  'assignee', assignee, 'team', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return {status, assignee, 1}
