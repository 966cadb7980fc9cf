-- An operator regroups an incident's tickets: split (the listed members form a new incident: another outage),
-- out (they leave it for a new group that is no incident), move (they join another existing group or incident),
-- merge (every member of the source joins the target; the source points to it: merge back after a split).
-- It goes through the dedup decision log like a grouping decision (sequence + 1, an `op` entry), so every dedup
-- worker applies it before deciding its next batch and later tickets land on the right side; a batch a worker
-- decided before it is decided again (group.lua answers 'stale'). Split, out and move also pin the two groups
-- apart: the automatic merge rule never joins them again (a merge by an operator lifts the pin).
-- Tickets that rode on the source's assignee (`attached`) ride on the target's when it is an open incident with
-- an active assignee; otherwise they are queued on their team by urgency (the caller runs fill.lua). Assigned
-- tickets keep their agent.
-- KEYS: 1 sequence, 2 decision log, 3 incidents zset, 4 events stream, 5 source hash, 6 source members,
--       7 target hash, 8 target members, 9 target assignee's agent key (KEYS[7] when none),
--       10 .. 9+S: one status index per status (ARGV[7]), then per moved ticket: record key, team queue key,
--       last the storming zset (see storm_end.lua)
-- ARGV: 1 kind (split|out|move|merge), 2 source id, 3 target id, 4 now_ms, 5 events maxlen, 6 log MINID (ms),
--       7 statuses (comma list), 8 members the source held when read (stale check), 9 sample for a new group,
--       10 team for a new group, 11.. moved ticket ids (merge: every member of the source)
-- Returns {'ok', sequence, moved, queued (ids), attached} or {'stale'} or {'error', reason}
local kind, src, dst, now, evmax = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sh, sm, th, tm = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
if redis.call('EXISTS', sh) == 0 then return {'error', 'missing'} end
if redis.call('HGET', sh, 'merged_into') then return {'error', 'merged'} end
if redis.call('LLEN', sm) ~= tonumber(ARGV[8]) then return {'stale'} end
local create = kind == 'split' or kind == 'out'
if create and redis.call('EXISTS', th) == 1 then return {'stale'} end  -- the id was taken: the caller picks another
if not create then
  if redis.call('EXISTS', th) == 0 then return {'error', 'target_missing'} end
  if redis.call('HGET', th, 'merged_into') then return {'error', 'target_merged'} end
end
local index, nstatus = {}, 0
for s in string.gmatch(ARGV[7], '[^,]+') do
  nstatus = nstatus + 1
  index[s] = KEYS[9 + nstatus]
end
local ids = {}
for i = 11, #ARGV do ids[#ids + 1] = ARGV[i] end
local members = redis.call('LRANGE', sm, 0, -1)
local present = {}
for _, m in ipairs(members) do present[m] = true end
for _, id in ipairs(ids) do
  if not present[id] then return {'error', 'not_member:' .. id} end
end

local seq = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if create then
  redis.call('HSET', th, 'gid', dst, 'created_at', now, 'last_at', now, 'team', ARGV[10], 'sample', ARGV[9],
    'status', 'open', 'size', 0, 'split_from', src)
  if kind == 'split' then
    redis.call('HSET', th, 'incident', '1', 'opened_at', now)
    redis.call('ZADD', KEYS[3], now, dst)
  end
  local ttl = redis.call('TTL', sh)
  if ttl > 0 then redis.call('EXPIRE', th, ttl) end
end
local s_inc = redis.call('HGET', sh, 'incident') == '1'
if kind == 'merge' and s_inc and redis.call('HGET', th, 'incident') ~= '1' then
  -- the target takes the source's incident over: same opening time, same assignee
  local v = redis.call('HMGET', sh, 'opened_at', 'assignee')
  redis.call('HSET', th, 'incident', '1', 'opened_at', v[1] or now)
  if v[2] and not redis.call('HGET', th, 'assignee') then redis.call('HSET', th, 'assignee', v[2]) end
  redis.call('ZADD', KEYS[3], v[1] or now, dst)
end
-- the target takes tickets as members of an open incident, and their riders, only when it is one
local t_open = redis.call('HGET', th, 'incident') == '1' and redis.call('HGET', th, 'status') ~= 'resolved'
local t_agent = redis.call('HGET', th, 'assignee')
if t_agent and (KEYS[9] == th or redis.call('HGET', KEYS[9], 'active') == '0') then t_agent = nil end

local moving = {}
for _, id in ipairs(ids) do moving[id] = true end
local keep = {}
for _, m in ipairs(members) do
  if not moving[m] then keep[#keep + 1] = m end
end
redis.call('DEL', sm)
for i = 1, #keep, 500 do
  redis.call('RPUSH', sm, unpack(keep, i, math.min(i + 499, #keep)))
end
for i = 1, #ids, 500 do
  redis.call('RPUSH', tm, unpack(ids, i, math.min(i + 499, #ids)))
end
redis.call('HSET', sh, 'size', #keep)
local size = redis.call('HINCRBY', th, 'size', #ids)
redis.call('HSET', th, 'last_at', now)

local queued, attached = {}, 0
for i, id in ipairs(ids) do
  local rec, queue = KEYS[9 + nstatus + 2 * i - 1], KEYS[9 + nstatus + 2 * i]
  if redis.call('EXISTS', rec) == 1 then
    redis.call('HSET', rec, 'group', dst, 'incident', t_open and '1' or '0')
    local v = redis.call('HMGET', rec, 'status', 'urgency')
    if v[1] == 'attached' then
      if t_open and t_agent then
        redis.call('HSET', rec, 'assignee', t_agent)
        attached = attached + 1
      else
        -- nobody covers it any more: it waits on its team's queue by urgency, like route.lua queues it
        local score = math.floor((1 - (tonumber(v[2]) or 0)) * 100) * 1e13 + tonumber(now)
        redis.call('ZADD', queue, score, id)
        redis.call('ZREM', index['attached'], id)
        redis.call('ZADD', index['queued'], now, id)
        redis.call('HSET', rec, 'status', 'queued', 'assignee', '')
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', evmax, '*', 'type', 'ticket.queued', 'ticket_id', id,
          'team', redis.call('HGET', rec, 'team') or '', 'reason', 'moved out of incident ' .. src)
        queued[#queued + 1] = id
      end
    end
  end
end

-- The storm's end (group.lua's track): a split-off incident was part of the storm, so it is said over when the
-- source's storm is, unless its own members keep it on; a merge carries the later end to the target.
local storming = KEYS[#KEYS]
local s_on = redis.call('ZSCORE', storming, src)
if s_on and (kind == 'split' or (kind == 'merge' and t_open)) then
  local s_until = tonumber(redis.call('HGET', sh, 'storm_until') or s_on)
  local t_until = tonumber(redis.call('HGET', th, 'storm_until') or '0')
  if s_until > t_until then redis.call('HSET', th, 'storm_until', s_until) end
  redis.call('ZADD', storming, math.max(s_until, t_until, tonumber(redis.call('ZSCORE', storming, dst) or '0')), dst)
  redis.call('HDEL', th, 'storm_ended_at')
end
if kind == 'merge' then
  redis.call('ZREM', storming, src)
  redis.call('HSET', sh, 'merged_into', dst, 'status', 'merged', 'merged_at', now)
  redis.call('ZREM', KEYS[3], src)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', evmax, '*', 'type', 'incident.merged', 'group', dst, 'merged', src,
    'size', size, 'was_incident', s_inc and '1' or '0', 'reason', 'merged by an operator')
else
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', evmax, '*', 'type', 'incident.split', 'group', src, 'target', dst,
    'kind', kind, 'moved', #ids, 'size', #keep, 'target_size', size)
end
local op = cjson.encode({kind = kind, src = src, dst = dst, tids = ids, incident = kind == 'split' and 1 or 0})
redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[6], '*', 'seq', seq, 'op', op)
redis.call('SET', KEYS[1], seq)
return {'ok', seq, #ids, queued, attached}
