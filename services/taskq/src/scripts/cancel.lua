-- Cancel a task that is not running: queued, scheduled, or waiting for a retry.
-- KEYS[1] task hash, KEYS[2] retry schedule, KEYS[3..12] priority streams, KEYS[13] scheduled tasks,
-- KEYS[14] the index of cancelled tasks, KEYS[15] the finished counts (optional: an older caller
-- passes neither)
-- ARGV[1] group, ARGV[2] retention (s), ARGV[3] task id
-- Returns false for an unknown task, otherwise the status after the call.
local f = redis.call('HMGET', KEYS[1], 'status', 'priority', 'stream_id')
if not f[1] then
  return false
end
if f[1] == 'queued' or f[1] == 'retrying' or f[1] == 'scheduled' then
  local p = tonumber(f[2]) or 5
  if f[3] and p >= 1 and p <= 10 then
    redis.call('XACK', KEYS[2 + p], ARGV[1], f[3])
    redis.call('XDEL', KEYS[2 + p], f[3])
  end
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[13], ARGV[3])
  local now = now_ms()
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now)
  local retention = tonumber(ARGV[2])
  if retention > 0 then redis.call('EXPIRE', KEYS[1], retention) end
  if KEYS[14] then index_finished(KEYS[14], ARGV[3], now, retention, KEYS[15], 'cancelled', 1) end
  return 'cancelled'
end
return f[1]
