-- The storm behind an open incident is over: its storm state ended (no ticket kept it on past its storm_until, see
-- group.lua's track and models/grouping.py: the rate stayed under storm_calm x baseline for storm_quiet_s). Says so
-- once on the feed (incident.storm_ended, no page: the incident stays open for people to resolve) and takes the
-- group out of the storming zset. Every dedup worker sweeps; the checks here make the event one per ending.
-- KEYS: 1 storming zset, 2 the group's hash, 3 events stream
-- ARGV: 1 group id, 2 now_ms, 3 events maxlen
-- Returns 1 when it said so, 0 when there was nothing to say (kept on since, merged, resolved, said already).
local gid, now = ARGV[1], tonumber(ARGV[2])
local score = tonumber(redis.call('ZSCORE', KEYS[1], gid) or '-1')
if score < 0 then return 0 end
if score > now then return 0 end  -- a ticket kept it on after the sweep read the zset
redis.call('ZREM', KEYS[1], gid)
local h = redis.call('HMGET', KEYS[2], 'incident', 'status', 'storm_ended_at', 'size', 'peak_rate', 'storm_until')
if h[1] ~= '1' or h[2] ~= 'open' or h[3] then return 0 end
redis.call('HSET', KEYS[2], 'storm_ended_at', now)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', 'incident.storm_ended', 'group', gid,
  'size', h[4] or '0', 'peak_rate', h[5] or '', 'storm_until', h[6] or '')
return 1
