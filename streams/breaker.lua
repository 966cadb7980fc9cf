-- Circuit breaker around the transformer fallback: one state machine in Redis, updated atomically, so every
-- worker sees the same state and no read-modify-write race can lose a transition.
-- KEYS: 1 breaker hash, 2 events stream, 3 escalate stream (the fallback's queue; optional),
--       4.. ingest streams (the enrich stage's input; optional)
-- ARGV: 1 op (allow | record | state), 2 now_ms, 3 budget_ms, 4 failure_threshold, 5 cooldown_ms,
--       6 backlog_ms, 7 probe_max, 8 ok (1/0), 9 latency_ms, 10 backlog age ms, 11 error text,
--       12 the fallback's consumer group, 13 allow: texts to escalate now / record: texts in the batch,
--       14 allow: tickets in the enrich batch, 15 the enrich consumer group, 16 events maxlen,
--       17 behind_ms (0: off), 18 allow: tickets/s the enrich batch was classified at (0: not measured),
--       19 allow: the enrich consumer that measured it
-- allow  -> {1|0, state}: may this batch escalate? Before any answer is late it looks at the fallback's queue:
--           if the oldest waiting escalation is older than backlog_ms, or the escalations pending would take
--           longer than budget_ms at the fallback's measured rate, it opens at once (so a flood trips it
--           within one enrich batch, not after slow fallback batches finish). Pending = waiting in the
--           escalate stream + this batch + the share (moving average) of the tickets still waiting for enrich
--           that will escalate: in a flood those are already on their way, and a fallback busy with them takes
--           CPU from the fast path. And the fast path itself: if the tickets waiting for enrich need longer
--           than behind_ms at its measured rate (per enrich consumer a moving average over its batches of 32+,
--           summed over the consumers heard from in the last FAST_FRESH_MS: N enrich workers drain N times
--           faster), it opens whatever the escalation share: the fast path is behind, and on shared cores every
--           fallback batch slows it further (with a 4% share the queue rule saw a 10x flood only once an
--           escalation had waited its 1 s: 3.19 / 5.85 s into the storm, 0.78 / 0.80 s with this rule).
--           open -> half_open after the cooldown; half_open grants probe_max.
-- record -> {state}: a fallback batch finished: latency over budget or an error counts a failure
--           (failure_threshold in a row opens); a backlog over backlog_ms opens at once; in half_open one
--           success closes and one failure reopens. Keeps a moving average of the fallback's texts/s.
local B = KEYS[1]
local FAST_FRESH_MS = 30000  -- an enrich consumer's rate counts this long after its last batch of 32+
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
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[16], '*', 'type', 'breaker.state', 'state', to, 'from', state,
    'reason', reason, 'latency_ms', redis.call('HGET', B, 'last_latency_ms') or '0', 'budget_ms', ARGV[3],
    'at', now)
  state = to
end

-- A consumer group's queue: how many entries wait (undelivered + in flight) and since when (ms, or nil).
local function queue(stream, group)
  if not stream or not group or group == '' then return 0, nil end
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return 0, nil end
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == group then
      local pending, lag = tonumber(f['pending']) or 0, tonumber(f['lag']) or 0
      local oldest = nil
      if pending > 0 then
        local p = redis.call('XPENDING', stream, group)
        oldest = tonumber(string.match(p[2], '^(%d+)'))
      end
      local nxt = redis.call('XRANGE', stream, '(' .. f['last-delivered-id'], '+', 'COUNT', 1)
      if nxt[1] then
        local t = tonumber(string.match(nxt[1][1], '^(%d+)'))
        if not oldest or t < oldest then oldest = t end
      end
      return pending + lag, oldest
    end
  end
  return 0, nil
end

if op == 'allow' then
  if state == 'open' and now - tonumber(redis.call('HGET', B, 'opened_at') or '0') >= tonumber(ARGV[5]) then
    transition('half_open', 'cooldown elapsed: probing')
  end
  local n, m = tonumber(ARGV[13]) or 0, tonumber(ARGV[14]) or 0
  local share = tonumber(redis.call('HGET', B, 'share') or '0')
  if m > 0 then
    share = share > 0 and (0.9 * share + 0.1 * n / m) or n / m
    redis.call('HSET', B, 'share', share)
  end
  local seen, who = tonumber(ARGV[18]) or 0, ARGV[19] or ''
  if m >= 32 and seen > 0 then
    local field = 'fast_rate:' .. who
    local old = tonumber(string.match(redis.call('HGET', B, field) or '', '^([%d.]+)') or '0')
    redis.call('HSET', B, field, (old > 0 and (0.7 * old + 0.3 * seen) or seen) .. '@' .. now)
  end
  local behind = tonumber(ARGV[17]) or 0
  if state ~= 'open' then
    -- the fast path's rate: the sum over enrich consumers heard from lately (one that stopped stops counting)
    local fast, h = 0, redis.call('HGETALL', B)
    for i = 1, #h, 2 do
      if string.sub(h[i], 1, 10) == 'fast_rate:' then
        local r, at = string.match(h[i + 1], '^([%d.]+)@(%d+)$')
        if r and now - tonumber(at) <= FAST_FRESH_MS then
          fast = fast + tonumber(r)
        else
          redis.call('HDEL', B, h[i])
        end
      end
    end
    redis.call('HSET', B, 'fast_rate', fast)
    local waiting, oldest = queue(KEYS[3], ARGV[12])
    local upstream = 0
    for i = 4, #KEYS do upstream = upstream + queue(KEYS[i], ARGV[15]) end
    -- this batch was read already, so it is not in the upstream count
    local coming = math.floor(upstream * share)
    local pending = waiting + n + coming
    local rate = tonumber(redis.call('HGET', B, 'rate') or '0')
    local age = oldest and (now - oldest) or 0
    redis.call('HSET', B, 'queue', waiting, 'queue_age_ms', age, 'upstream', upstream)
    if age > tonumber(ARGV[6]) then
      transition('open', 'backlog: oldest escalation waited ' .. math.floor(age) .. 'ms > ' .. ARGV[6] .. 'ms')
    elseif rate > 0 and pending * 1000 / rate > tonumber(ARGV[3]) then
      transition('open', 'backlog: ' .. pending .. ' escalations pending (' .. (waiting + n) .. ' now, ~' ..
        coming .. ' in the ' .. upstream .. ' tickets before enrich) at ' .. math.floor(rate) ..
        '/s need ' .. math.floor(pending * 1000 / rate) .. 'ms > budget ' .. ARGV[3] .. 'ms')
    elseif behind > 0 and fast > 0 and upstream * 1000 / fast > behind then
      transition('open', 'fast path behind: ' .. upstream .. ' tickets wait for enrich at ' .. math.floor(fast) ..
        '/s, ' .. math.floor(upstream * 1000 / fast) .. 'ms > ' .. behind .. 'ms: its CPU goes to the fast path')
    end
  end
  if state == 'closed' then return {1, state} end
  if n == 0 then return {0, state} end  -- a batch with nothing to escalate must not take the probe slot
  if state == 'half_open' then
    if redis.call('HINCRBY', B, 'probes', 1) <= tonumber(ARGV[7]) then return {1, state} end
    redis.call('HINCRBY', B, 'probes', -1)
  end
  return {0, state}
end

if op == 'record' then
  local lat, age, n = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[13]) or 0
  redis.call('HSET', B, 'last_latency_ms', lat, 'last_backlog_ms', age, 'last_at', now)
  -- A batch of a few texts is mostly fixed overhead and understates the batched rate: it only counts until
  -- a batch of 8+ has been measured (a pessimistic rate beats none when the first flood arrives).
  if ARGV[8] == '1' and n > 0 and lat > 0 then
    local seen = n * 1000 / lat
    local old = tonumber(redis.call('HGET', B, 'rate') or '0')
    local sized = redis.call('HGET', B, 'rate_sized') == '1'
    if n >= 8 then
      redis.call('HSET', B, 'rate', sized and (0.7 * old + 0.3 * seen) or seen, 'rate_sized', 1)
    elseif not sized then
      redis.call('HSET', B, 'rate', old > 0 and (0.7 * old + 0.3 * seen) or seen)
    end
  end
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
