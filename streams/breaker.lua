-- Circuit breaker around the transformer fallback: one state machine in Redis, updated atomically, so every
-- worker sees the same state and no read-modify-write race can lose a transition.
-- KEYS: 1 breaker hash, 2 events stream
-- ARGV: 1 op (allow | record | state), 2 now_ms, 3 budget_ms, 4 failure_threshold, 5 cooldown_ms,
--       6 backlog_ms, 7 probe_max, 8 ok (1/0), 9 latency_ms, 10 backlog age ms, 11 error text
-- allow  -> {1|0, state}: may this batch escalate? (open -> half_open after the cooldown; half_open grants probe_max)
-- record -> {state}: a fallback batch finished: latency over budget or an error counts a failure
--           (failure_threshold in a row opens); a backlog over backlog_ms opens at once; in half_open one
--           success closes and one failure reopens.
local B = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local state = redis.call('HGET', B, 'state') or 'closed'

local function transition(to, reason)
  if to == state then return end
  redis.call('HSET', B, 'state', to, 'changed_at', now, 'reason', reason)
  if to == 'open' then redis.call('HSET', B, 'opened_at', now, 'probes', 0, 'failures', 0) end
  if to == 'half_open' then redis.call('HSET', B, 'probes', 0) end
  if to == 'closed' then redis.call('HSET', B, 'failures', 0, 'probes', 0) end
  redis.call('HINCRBY', B, 'transitions', 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'type', 'breaker.state', 'state', to, 'from', state,
    'reason', reason, 'latency_ms', redis.call('HGET', B, 'last_latency_ms') or '0', 'budget_ms', ARGV[3],
    'at', now)
  state = to
end

if op == 'allow' then
  if state == 'open' and now - tonumber(redis.call('HGET', B, 'opened_at') or '0') >= tonumber(ARGV[5]) then
    transition('half_open', 'cooldown elapsed: probing')
  end
  if state == 'closed' then return {1, state} end
  if state == 'half_open' then
    if redis.call('HINCRBY', B, 'probes', 1) <= tonumber(ARGV[7]) then return {1, state} end
    redis.call('HINCRBY', B, 'probes', -1)
  end
  return {0, state}
end

if op == 'record' then
  local lat, age = tonumber(ARGV[9]), tonumber(ARGV[10])
  redis.call('HSET', B, 'last_latency_ms', lat, 'last_backlog_ms', age, 'last_at', now)
  if state == 'open' then return {state} end  -- a batch started before the trip: nothing to learn
  if age > tonumber(ARGV[6]) then
    transition('open', 'backlog: oldest escalation waited ' .. math.floor(age) .. 'ms > ' .. ARGV[6] .. 'ms')
    return {state}
  end
  local bad = nil
  if ARGV[8] ~= '1' then
    bad = 'error: ' .. ARGV[11]
  elseif lat > tonumber(ARGV[3]) then
    bad = 'latency ' .. math.floor(lat) .. 'ms over budget ' .. ARGV[3] .. 'ms'
  end
  if bad then
    if state == 'half_open' then
      transition('open', 'probe failed: ' .. bad)
    elseif redis.call('HINCRBY', B, 'failures', 1) >= tonumber(ARGV[4]) then
      transition('open', bad)
    end
  elseif state == 'half_open' then
    transition('closed', 'probe succeeded')
  else
    redis.call('HSET', B, 'failures', 0)
  end
  return {state}
end
return {state}
