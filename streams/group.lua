-- Dedup: commit one batch of grouping decisions, atomically and in order, for every dedup worker at once.
-- The worker decided the batch against the shared decision log up to sequence number ARGV[1]. If another worker
-- appended since (the sequence moved), nothing is written and the reply is {'stale', seq}: the worker reads
-- the log again, rolls its decisions back and decides again. So decisions are linearised: each one was made
-- knowing every decision before it, whichever worker made it (two workers racing on a new storm make one group).
-- Per ticket: it joins its group, then the merges it caused are applied: the merged group's members move to the
-- survivor (lists and records re-pointed), its size adds up, an open incident of the merged group is folded into
-- the survivor's (or the survivor takes it over) with `incident.merged` on the feed and no alert: nobody is paged
-- twice. Then, when the worker's decision says so (`o`: the group is a storm by rate and holds K tickets, see
-- models/grouping.py), the group opens its master incident and raises the alert, here, inside the commit, so none
-- is lost or sent twice by a crash.
-- KEYS: 1 sequence, 2 decision log stream, 3 incidents zset, 4 alerts stream, 5 events stream,
--       6 .. 5+T: the tickets' records, then per group G (in the order of ARGV's group list): hash, members list,
--       then one record key per member id listed in ARGV (members of merged groups from before this batch),
--       last the storming zset (open incidents whose storm state is on, by when it ends; see storm_end.lua)
-- ARGV: 1 expected sequence, 2 now_ms, 3 K (opening is the decision's `o`; K here is the re-open rule's), 4 ttl_s, 5 events maxlen, 6 log MINID (ms), 7 T, 8 G, 9 M,
--       then G pairs (group id, members expected before the batch or -1 when not checked), then M member ids,
--       then T pairs (decision JSON {t, g, m: [[merged, survivor]...], u, team, sample, a: alert JSON,
--       o: 1 when it opens the incident, d: the trail (d.storm: the storm test)}, embedding bytes)
-- A ticket joining a resolved incident re-opens it or is a follow-up of it (after_resolve below).
-- Returns {'ok', new sequence, last log entry id, per ticket {final group, size, incident 0/1, alert,
--          after-resolve note JSON or ''}}
--      or {'stale', sequence now}
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if seq ~= tonumber(ARGV[1]) then
  return {'stale', seq}
end
local now, K, ttl, evmax = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local T, G, M = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local ghash, gmem = {}, {}
local storming = KEYS[#KEYS]
local a = 10
for i = 1, G do
  local gid, expect = ARGV[a], tonumber(ARGV[a + 1])
  ghash[gid] = KEYS[5 + T + 2 * i - 1]
  gmem[gid] = KEYS[5 + T + 2 * i]
  if expect >= 0 and redis.call('LLEN', gmem[gid]) ~= expect then
    return {'stale', seq}
  end
  a = a + 2
end
local rec_of = {}
for i = 1, M do
  rec_of[ARGV[a]] = KEYS[5 + T + 2 * G + i]
  a = a + 1
end
local specs = {}
for i = 1, T do
  local spec = cjson.decode(ARGV[a])
  specs[i] = {spec, ARGV[a], ARGV[a + 1]}
  rec_of[spec['t']] = KEYS[5 + i]
  a = a + 2
end

local function event(...)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', evmax, '*', ...)
end

-- An open incident carries its storm's rate and size over time: rate and peak_rate (tickets/s, the storm test's
-- at the latest member), and at its opening and each doubling of its size from K on a point [ms, size, rate] in
-- `series` and an `incident.updated` event on the feed (no alert: nobody is paged for growth).
-- While the storm state is on, its end (if no new ticket keeps it on: the trail's storm.until, s) is the group's
-- storm_until (ms) and its score in the storming zset, where storm_end.lua finds it; a storm that had ended and is
-- on again (a new burst, until still ahead) says so with incident.storm_resumed (no page).
local function track(gid, n, storm, opening)
  local untl = tonumber(storm['until'])
  if storm['state'] == 'on' and untl then
    local until_ms = math.floor(untl * 1000)
    local was = tonumber(redis.call('HGET', ghash[gid], 'storm_until') or '0')
    if until_ms > was then
      redis.call('HSET', ghash[gid], 'storm_until', until_ms)
      redis.call('ZADD', storming, until_ms, gid)
    end
    -- said over (storm_end.lua: storm_until <= then < now), so an until ahead of now is past it: ZADDed above
    if until_ms > tonumber(now) and redis.call('HGET', ghash[gid], 'storm_ended_at') then
      redis.call('HDEL', ghash[gid], 'storm_ended_at')
      event('type', 'incident.storm_resumed', 'group', gid, 'size', n, 'rate', tostring(storm['rate'] or ''))
    end
  end
  local rate = tonumber(storm['rate'])
  if rate then
    local peak = tonumber(redis.call('HGET', ghash[gid], 'peak_rate') or '0')
    redis.call('HSET', ghash[gid], 'rate', rate)
    if rate > peak then redis.call('HSET', ghash[gid], 'peak_rate', rate) end
  end
  local step = K
  while step < n do step = step * 2 end
  if opening or n == step then
    local series = cjson.decode(redis.call('HGET', ghash[gid], 'series') or '[]')
    series[#series + 1] = {tonumber(now), n, rate or cjson.null}
    redis.call('HSET', ghash[gid], 'series', cjson.encode(series))
    if not opening then
      event('type', 'incident.updated', 'group', gid, 'size', n, 'rate', tostring(rate or ''),
        'peak_rate', redis.call('HGET', ghash[gid], 'peak_rate') or '')
    end
  end
end

local function open_incident(gid, n, alert_json, storm)
  redis.call('HSET', ghash[gid], 'incident', '1', 'opened_at', now)
  if storm['rate'] then
    redis.call('HSET', ghash[gid], 'storm_rate', storm['rate'], 'storm_baseline', storm['baseline'] or '')
  end
  redis.call('ZADD', KEYS[3], now, gid)
  redis.call('XADD', KEYS[4], '*', 'type', 'incident.opened', 'group', gid, 'size', n, 'data', alert_json)
  track(gid, n, storm, true)
end

local function is_incident(gid)
  return redis.call('HGET', ghash[gid], 'incident') == '1'
end

-- an incident nobody resolved: its members attach to it (a resolved one takes follow-ups, see after_resolve)
local function is_open_incident(gid)
  return is_incident(gid) and redis.call('HGET', ghash[gid], 'status') ~= 'resolved'
end

-- the storm test of a decision's trail (d.storm), or an empty table
local function storm_of(spec)
  local d = spec['d']
  return type(d) == 'table' and type(d['storm']) == 'table' and d['storm'] or {}
end

-- A ticket joining a resolved incident. Either the outage is back: K tickets since the resolve, and the group
-- bursting over its baseline at this ticket (its storm test's ratio >= burst; K alone when the test is off) - the
-- incident re-opens under its own id with the reason and pages once (incident.reopened). Or it is a straggler (people
-- still reporting what was fixed): a follow-up linked to the resolved incident, routed on its own, no page.
-- Returns (reopened, note for the ticket's trail).
local function after_resolve(gid, spec, n, alert_json)
  local since = redis.call('HINCRBY', ghash[gid], 'since_resolved', 1)
  local st = storm_of(spec)
  local ratio, burst = tonumber(st['ratio']), tonumber(st['burst'])
  local bursting = st['rule'] == 'k' or (ratio ~= nil and burst ~= nil and ratio >= burst)
  if since >= K and bursting then
    local reason = since .. ' tickets since it was resolved'
    if ratio then reason = reason .. ', arriving at ' .. ratio .. 'x its baseline' end
    local count = redis.call('HINCRBY', ghash[gid], 'reopen_count', 1)
    redis.call('HSET', ghash[gid], 'status', 'open', 'reopened_at', now, 'reopen_reason', reason, 'since_resolved', 0)
    redis.call('ZADD', KEYS[3], now, gid)
    redis.call('XADD', KEYS[4], '*', 'type', 'incident.reopened', 'group', gid, 'size', n, 'reason', reason,
      'data', alert_json)
    event('type', 'incident.reopened', 'ticket_id', spec['t'], 'group', gid, 'size', n, 'reason', reason,
      'reopen_count', count)
    return true, {action = 'reopened', incident = gid, reason = reason, since_resolved = since}
  end
  local reason = 'like resolved incident ' .. gid .. ' (' .. since .. ' since its resolve; it re-opens at ' .. K ..
    ' while bursting)'
  event('type', 'incident.followup', 'ticket_id', spec['t'], 'group', gid, 'size', n, 'reason', reason)
  return false, {action = 'followup', incident = gid, reason = reason, since_resolved = since}
end

-- the ticket joins group gid: returns size, incident (bool), alert, note (after a resolve, see above; or nil)
local function join(gid, spec, alert_json)
  local n = redis.call('HINCRBY', ghash[gid], 'size', 1)
  if n == 1 then
    redis.call('HSET', ghash[gid], 'gid', gid, 'created_at', now, 'team', spec['team'], 'sample', spec['sample'],
      'status', 'open')
  end
  redis.call('HSET', ghash[gid], 'last_at', now)
  redis.call('RPUSH', gmem[gid], spec['t'])
  redis.call('EXPIRE', ghash[gid], ttl)
  redis.call('EXPIRE', gmem[gid], ttl)
  local urgent = spec['u'] == 1
  local alert, evt = 'none', 'ticket.grouped'
  local incident = is_incident(gid)
  local note = nil
  if incident and not is_open_incident(gid) then
    -- re-opened (a member again, the page is the re-open's), or a follow-up: routed on its own, no page for it
    incident, note = after_resolve(gid, spec, n, alert_json)
    if incident then
      alert = 'incident'
    elseif urgent then
      alert = 'suppressed'
    end
    event('type', evt, 'ticket_id', spec['t'], 'group', gid, 'size', n)
    return n, incident, alert, note
  end
  if incident then
    if urgent then alert = 'suppressed' end
    evt = 'incident.grew'
    track(gid, n, storm_of(spec))
  elseif urgent and n == 1 then
    redis.call('XADD', KEYS[4], '*', 'type', 'ticket.urgent', 'group', gid, 'size', n, 'data', alert_json)
    alert = 'sent'
  elseif urgent then
    alert = 'suppressed'
  end
  event('type', evt, 'ticket_id', spec['t'], 'group', gid, 'size', n)
  return n, incident, alert, nil
end

-- group m merges into group s (an open incident of m moves to s); returns false (opening is the decision's `o`)
local function merge(m, s, alert_json)
  if redis.call('HGET', ghash[m], 'merged_into') then return false end
  local members = redis.call('LRANGE', gmem[m], 0, -1)
  local m_inc = is_open_incident(m)
  local s_inc = is_incident(s)
  for i = 1, #members, 500 do
    redis.call('RPUSH', gmem[s], unpack(members, i, math.min(i + 499, #members)))
  end
  redis.call('DEL', gmem[m])
  local n = redis.call('HINCRBY', ghash[s], 'size', tonumber(redis.call('HGET', ghash[m], 'size') or '0'))
  redis.call('HSET', ghash[m], 'merged_into', s, 'status', 'merged', 'merged_at', now)
  redis.call('HSET', ghash[s], 'last_at', now)
  local opened = false
  if m_inc then
    local m_on = redis.call('ZSCORE', storming, m)
    redis.call('ZREM', KEYS[3], m)
    redis.call('ZREM', storming, m)
    if not s_inc then
      -- the survivor takes the incident over: same opening time, same assignee, no new alert
      local v = redis.call('HMGET', ghash[m], 'opened_at', 'assignee')
      redis.call('HSET', ghash[s], 'incident', '1', 'opened_at', v[1] or now)
      if v[2] then redis.call('HSET', ghash[s], 'assignee', v[2]) end
      redis.call('ZADD', KEYS[3], v[1] or now, s)
      s_inc = true
    end
    -- the storm's end goes with the incident: the survivor's is the later of the two, and a storm of m still on
    -- keeps the survivor in the storming zset (so storm_end.lua says it is over even if no member joins it again)
    local m_until = tonumber(redis.call('HGET', ghash[m], 'storm_until') or '0')
    local s_until = tonumber(redis.call('HGET', ghash[s], 'storm_until') or '0')
    if m_until > s_until then redis.call('HSET', ghash[s], 'storm_until', m_until) end
    if m_on then
      redis.call('ZADD', storming, math.max(m_until, s_until), s)
      if redis.call('HGET', ghash[s], 'storm_ended_at') then
        redis.call('HDEL', ghash[s], 'storm_ended_at')
        event('type', 'incident.storm_resumed', 'group', s, 'size', n, 'rate', '')
      end
    end
  end
  local inc = is_open_incident(s) and '1' or '0'
  for _, id in ipairs(members) do
    if rec_of[id] and redis.call('EXISTS', rec_of[id]) == 1 then
      redis.call('HSET', rec_of[id], 'group', s, 'incident', inc)
    end
  end
  if s_inc and not opened then
    event('type', 'incident.merged', 'group', s, 'merged', m, 'size', n, 'was_incident', m_inc and '1' or '0')
  end
  return opened
end

local function final(gid)
  local hops = 0
  while hops < 50 do
    local into = ghash[gid] and redis.call('HGET', ghash[gid], 'merged_into')
    if not into or not ghash[into] then return gid end
    gid, hops = into, hops + 1
  end
  return gid
end

local out = {}
local last_id = ''
for i = 1, T do
  local spec, raw, emb = specs[i][1], specs[i][2], specs[i][3]
  local rec = KEYS[5 + i]
  seq = seq + 1
  last_id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[6], '*', 'seq', seq, 'ticket_id', spec['t'],
    'data', raw, 'emb', emb)
  local alert_json = spec['a']
  if redis.call('HEXISTS', rec, 'grouped_seq') == 1 then
    local v = redis.call('HMGET', rec, 'group', 'group_size', 'incident', 'alert', 'after_resolve')
    out[i] = {v[1] or '', tonumber(v[2]) or 0, tonumber(v[3]) or 0, v[4] or 'none', v[5] or ''}
  else
    local _, _, alert, note = join(spec['g'], spec, alert_json)
    for _, pair in ipairs(spec['m']) do
      if merge(pair[1], pair[2], alert_json) then alert = 'incident' end
    end
    local gid = final(spec['g'])
    local n = tonumber(redis.call('HGET', ghash[gid], 'size'))
    if spec['o'] == 1 and not is_incident(gid) then
      open_incident(gid, n, alert_json, storm_of(spec))
      event('type', 'incident.opened', 'ticket_id', spec['t'], 'group', gid, 'size', n)
      alert = 'incident'
    end
    -- a member of an open incident (a follow-up of a resolved one is not)
    local inc = is_open_incident(gid) and 1 or 0
    local note_json = note and cjson.encode(note) or ''
    redis.call('HSET', rec, 'group', gid, 'group_size', n, 'incident', inc, 'alert', alert, 'grouped_seq', seq)
    if note then redis.call('HSET', rec, 'after_resolve', note_json) end
    out[i] = {gid, n, inc, alert, note_json}
  end
end
redis.call('SET', KEYS[1], seq)
return {'ok', seq, last_id, out}
