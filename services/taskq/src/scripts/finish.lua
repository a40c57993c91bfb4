-- Record the outcome of one execution.
-- KEYS[1] task hash, KEYS[2] the entry's stream, KEYS[3] retry schedule, KEYS[4] dead-letter stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer, ARGV[4] attempt, ARGV[5] outcome
-- (succeeded | retry | dead), ARGV[6] result JSON or error, ARGV[7] retention (s),
-- ARGV[8] retry delay (ms), ARGV[9] task id
-- Returns 'ok', 'stale' (another execution owns the task now) or 'missing'.
local f = redis.call('HMGET', KEYS[1], 'status', 'worker', 'attempts')
local group, entry, outcome = ARGV[1], ARGV[2], ARGV[5]
local retention = tonumber(ARGV[7])
local now = now_ms()
if not f[1] then
  redis.call('XACK', KEYS[2], group, entry)
  redis.call('XDEL', KEYS[2], entry)
  return 'missing'
end

local function succeed()
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', now, 'result', ARGV[6])
  redis.call('ZREM', KEYS[3], ARGV[9])
  if retention > 0 then redis.call('EXPIRE', KEYS[1], retention) end
end

local owner = f[2] == ARGV[3] and f[3] == ARGV[4]
if not owner then
  -- This execution was presumed lost and the task handed to another worker, whose stream entry
  -- must stay pending until that worker finishes. A late success is still worth keeping.
  if outcome == 'succeeded' and not is_final(f[1]) then
    succeed()
  end
  return 'stale'
end

redis.call('XACK', KEYS[2], group, entry)
redis.call('XDEL', KEYS[2], entry)
if is_final(f[1]) then
  return 'stale'
end
if outcome == 'succeeded' then
  succeed()
elseif outcome == 'retry' then
  redis.call('HSET', KEYS[1], 'status', 'retrying', 'error', ARGV[6])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[8]), ARGV[9])
else
  redis.call('HSET', KEYS[1], 'status', 'dead', 'finished_at', now, 'error', ARGV[6])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 't', ARGV[9], 'error', ARGV[6])
  if retention > 0 then redis.call('EXPIRE', KEYS[1], retention) end
end
return 'ok'
