-- Housekeeping: delete a stage group's consumer only if it holds no pending entry (checked in the same atomic
-- step, so an entry handed to it in between is never dropped from the pending list).
-- KEYS: 1 stream
-- ARGV: 1 group, 2 consumer
-- Returns 1 deleted, 0 kept (it has pending entries).
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
