-- Queue a dead or cancelled task again: a new attempt series at its priority. The record keeps
-- its last error (and the dead-letter stream its entry); the retention expiry of the finished
-- record is lifted.
-- KEYS[1] task hash, KEYS[2..11] priority streams
-- ARGV[1] task id
-- Returns false for an unknown task, 'requeued' when it was queued again, otherwise its status.
local f = redis.call('HMGET', KEYS[1], 'status', 'priority')
if not f[1] then
  return false
end
if f[1] ~= 'dead' and f[1] ~= 'cancelled' then
  return f[1]
end
local p = tonumber(f[2]) or 5
if p < 1 or p > 10 then p = 5 end
local entry = redis.call('XADD', KEYS[1 + p], '*', 't', ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'stream_id', entry)
redis.call('HDEL', KEYS[1], 'finished_at')
redis.call('PERSIST', KEYS[1])
return 'requeued'
