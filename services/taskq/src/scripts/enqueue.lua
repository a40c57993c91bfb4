-- Enqueue one task atomically: task hash + stream entry (+ idempotency key).
-- KEYS[1] task hash, KEYS[2] priority stream, KEYS[3] idempotency key (optional)
-- ARGV[1] task id, ARGV[2] description, ARGV[3] priority, ARGV[4] max attempts,
-- ARGV[5] idempotency ttl (s), ARGV[6] record layout version
-- Returns {1, id, created_ms} for a new task, {0, existing id, 0} for a replay.
if #KEYS == 3 then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {0, existing, 0}
  end
end
-- All or nothing under a refusal: Redis refuses OOM, READONLY and MISCONF at a script's first
-- write and lets later writes through, so the first write (XADD) is the only one that can be
-- refused, and nothing is written before it.
local now = now_ms()
local entry = redis.call('XADD', KEYS[2], '*', 't', ARGV[1])
redis.call('HSET', KEYS[1], 'v', ARGV[6], 'id', ARGV[1], 'description', ARGV[2],
  'priority', ARGV[3], 'status', 'queued', 'attempts', 0, 'max_attempts', ARGV[4],
  'created_at', now, 'stream_id', entry)
if #KEYS == 3 then
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5])
end
return {1, ARGV[1], now}
