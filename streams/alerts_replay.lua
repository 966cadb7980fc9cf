-- Re-queue one dead-lettered alert, once: the dead entry's id joins the replayed set, and only a first join
-- writes the alert back onto the alerts stream (a second `replay-alerts` run, or two at once, sends nothing).
-- KEYS: 1 replayed set, 2 alerts stream
-- ARGV: 1 dead entry id, 2.. the alert's flat fields
-- Returns the new alerts entry id, or false when it was replayed before.
local replayed, alerts = KEYS[1], KEYS[2]
if redis.call('SADD', replayed, ARGV[1]) == 0 then
  return false
end
return redis.call('XADD', alerts, '*', unpack(ARGV, 2))
