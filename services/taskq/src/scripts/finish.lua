-- Record the outcomes of executions: many per call, each one atomic, so a worker's batch costs
-- one script call (and, with appendfsync always, one fsync) instead of one per execution.
-- KEYS[1] retry schedule, KEYS[2] dead-letter stream, KEYS[3..12] priority streams (p1 first),
-- KEYS[13] the retry clock, KEYS[14] the index of succeeded tasks, KEYS[15] the finished counts
-- (all optional: an older caller passes none)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] task key prefix, ARGV[4] retention (s), then seven
-- values per execution: priority, entry id, task id, attempt, outcome (succeeded | retrying |
-- dead: taskq::event::Outcome; or interrupted: the worker shut down first), result JSON or
-- error, retry delay (ms).
-- Returns, per execution, 'ok', 'stale' (another execution owns the task now) or 'missing'.
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[3]
local retention = tonumber(ARGV[4])
local retention_s = ARGV[4]
local now = now_ms()
-- Numbers handed to redis.call are formatted with %.17g on every call: convert once.
local now_s = tostring(now)
local retry_at = retry_now(KEYS[13])
-- Ids of the tasks this call saw succeed, indexed for listing in one entry at the end.
local succeeded = {}

-- Entries to acknowledge and delete, per priority: one XACK and one XDEL per stream at the end
-- instead of one each per execution (the script is atomic, so the order inside it is invisible).
local done = {}
local function ack(p, entry)
  local entries = done[p]
  if not entries then
    entries = {}
    done[p] = entries
  end
  entries[#entries + 1] = entry
end

-- Records a success of the task at `key` whose record read `f` (status, worker, attempts, lost).
local function succeed(key, task_id, f, lost, payload)
  redis.call('HSET', key, 'status', 'succeeded', 'finished_at', now_s, 'result', payload)
  succeeded[#succeeded + 1] = task_id
  -- Only a retrying task can be in the retry schedule (a late success of a lost execution).
  if f[1] == 'retrying' then redis.call('ZREM', KEYS[1], task_id) end
  if lost then
    redis.call('XDEL', KEYS[2], f[4])
    redis.call('HSET', key, 'lost', '')
  end
  if retention > 0 then redis.call('EXPIRE', key, retention_s) end
end

local function finish(p, entry, task_id, attempt, outcome, payload, delay)
  local key = prefix .. task_id
  local f = redis.call('HMGET', key, 'status', 'worker', 'attempts', 'lost')
  if not f[1] then
    ack(p, entry)
    return 'missing'
  end
  -- Dead-lettered by claim.lua because every attempt was presumed lost (f[4]: the dead letter's
  -- id): provisional, a success of one of those executions still counts.
  local lost = f[1] == 'dead' and f[4] and f[4] ~= ''
  -- Whether a success may still be recorded: the task is not final, or its verdict is 'lost'.
  local open = lost or not is_final(f[1])

  local owner = f[2] == consumer and f[3] == attempt
  if not owner then
    -- This execution was presumed lost and the task handed to another worker, whose stream
    -- entry must stay pending until that worker finishes. A late success is still worth keeping.
    if outcome == 'succeeded' and open then
      succeed(key, task_id, f, lost, payload)
    end
    return 'stale'
  end

  ack(p, entry)
  if outcome == 'succeeded' and lost then
    -- the owner's own success after its execution was presumed lost: the same rule as above
    succeed(key, task_id, f, lost, payload)
    return 'ok'
  end
  if f[1] ~= 'running' then
    -- final already, or this is a resent finish whose first reply was lost (the retry may even
    -- have been promoted): recording it again would schedule a second execution
    return 'stale'
  end
  if outcome == 'succeeded' then
    succeed(key, task_id, f, lost, payload)
  elseif outcome == 'retrying' then
    redis.call('HSET', key, 'status', 'retrying', 'error', payload)
    redis.call('ZADD', KEYS[1], retry_at + tonumber(delay), task_id)
  elseif outcome == 'interrupted' then
    -- stopped by its worker's shutdown, not by the task: the attempt is given back (so an
    -- interruption never dead-letters a task) and the task is due again at once
    redis.call('HSET', key, 'status', 'retrying', 'error', payload, 'attempts',
      math.max((tonumber(attempt) or 1) - 1, 0))
    redis.call('ZADD', KEYS[1], retry_at, task_id)
  else
    redis.call('HSET', key, 'status', 'dead', 'finished_at', now_s, 'error', payload)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 't', task_id, 'error', payload)
    if retention > 0 then redis.call('EXPIRE', key, retention_s) end
  end
  return 'ok'
end

local out = {}
local i = 5
while ARGV[i] do
  out[#out + 1] = finish(tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
    ARGV[i + 5], ARGV[i + 6])
  i = i + 7
end
for p = 1, 10 do
  local entries = done[p]
  if entries then
    redis.call('XACK', KEYS[2 + p], group, unpack(entries))
    redis.call('XDEL', KEYS[2 + p], unpack(entries))
  end
end
if KEYS[14] and #succeeded > 0 then
  index_finished(KEYS[14], table.concat(succeeded, ','), now, retention, KEYS[15], 'succeeded',
    #succeeded)
end
return out
