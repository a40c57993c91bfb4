-- Move retries that came due back into their priority stream.
-- KEYS[1] retry schedule, KEYS[2..11] priority streams; ARGV[1] task key prefix, ARGV[2] limit
-- Returns how many came due.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))
for _, task_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], task_id)
  local key = ARGV[1] .. task_id
  local f = redis.call('HMGET', key, 'status', 'priority')
  if f[1] == 'retrying' then
    local p = tonumber(f[2]) or 5
    if p < 1 or p > 10 then p = 5 end
    local entry = redis.call('XADD', KEYS[1 + p], '*', 't', task_id)
    redis.call('HSET', key, 'stream_id', entry)
  end
end
return #due
