-- Remove a worker that stopped. Only a consumer with nothing pending may go: XGROUP DELCONSUMER
-- would drop its pending entries for good. Otherwise the worker is marked dead at once (heartbeat
-- 0) so a live worker takes its entries over at its next pass.
-- KEYS[1] worker heartbeats, KEYS[2..11] priority streams; ARGV[1] group, ARGV[2] worker id
-- Returns the number of entries left pending (0 when the consumer was removed).
local left = 0
for p = 1, 10 do
  local pending = redis.pcall('XPENDING', KEYS[1 + p], ARGV[1], '-', '+', 1, ARGV[2])
  if type(pending) == 'table' and not pending.err and pending[1] then
    left = left + 1
  end
end
if left > 0 then
  redis.call('ZADD', KEYS[1], 0, ARGV[2])
  return left
end
for p = 1, 10 do
  redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1 + p], ARGV[1], ARGV[2])
end
redis.call('ZREM', KEYS[1], ARGV[2])
return 0
