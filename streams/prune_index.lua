-- Housekeeping: remove index members whose ticket record no longer exists (it expired), checking again that the
-- record is gone and the member's score is still that old (a ticket re-ingested under the same id keeps its entry).
-- KEYS: 1 index zset, 2.. one record key per id (same order as ARGV[2..])
-- ARGV: 1 cutoff score (ms), 2.. the ids
-- Returns how many members were removed.
local removed = 0
for i = 2, #KEYS do
  local id = ARGV[i]
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= tonumber(ARGV[1]) then
      removed = removed + redis.call('ZREM', KEYS[1], id)
    end
  end
end
return removed
