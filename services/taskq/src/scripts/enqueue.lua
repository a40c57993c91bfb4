-- Enqueue one task atomically: task hash + stream entry, or + the scheduled set for a task due
-- later (+ idempotency record).
-- KEYS, in full: [1] task hash, [2] the task's priority stream, [3..12] the ten priority streams
-- (for the backpressure check's count), [13] the backpressure check's count of waiting tasks,
-- [14] scheduled tasks, [15] the caller's idempotency key (optional), [16] where the same key was
-- stored before keys were scoped (optional; read, never written).
-- KEYS, short (ARGV[13] = 'short'): the ten streams left out, so [3] the count, [4] scheduled,
-- [5] and [6] the idempotency keys. Parsing the ten stream names and handing them to Lua cost
-- Redis about 4 % of an enqueue, and they are needed only when the count has expired: a short
-- call that finds it expired writes nothing and answers {4, '', 0, 0, 0}, and the caller calls
-- again in full.
-- ARGV[1] task id, ARGV[2] description, ARGV[3] priority, ARGV[4] max attempts,
-- ARGV[5] idempotency ttl (s), ARGV[6] record layout version, ARGV[7] most tasks waiting (0 or
-- absent: no limit), ARGV[8] digest of the request (description, priority, timeout), ARGV[9]
-- the task's execution deadline in ms (0 or absent: the worker's default), ARGV[10] how long (ms)
-- the count of waiting tasks is trusted, ARGV[11] when to start ('now', 'delay': ARGV[12] ms
-- after now, 'at': at ARGV[12] ms since the epoch; absent: now), ARGV[13] 'short' or 'full'
-- The call of earlier versions, KEYS[1..2] and ARGV[1..6] (the benchmark's ceilings), still
-- works: no limit, no idempotency record.
-- Returns {1, id, created_ms, due_ms (0: queued at once), fresh} for a new task, {0, existing id,
-- 0, 0, 0} for a replay, {2, '', tasks waiting, 0, fresh} when the queue is full, {3, existing
-- id, 0, 0, 0} when the key created a task for another request, {4, '', 0, 0, 0} when a short
-- call needs the streams. fresh: after a full call with a limit, how many more ms the count
-- stays trusted (the caller may call short until then); 0 when no count is stored.
local short = ARGV[13] == 'short'
local shift = short and 10 or 0
local count_key, scheduled_key = KEYS[13 - shift], KEYS[14 - shift]
local idempotency_key, legacy_key = KEYS[15 - shift], KEYS[16 - shift]
if idempotency_key then
  local stored = redis.call('GET', idempotency_key)
  local stored_here = stored
  if not stored and legacy_key then
    stored = redis.call('GET', legacy_key)
  end
  if stored then
    -- '{task id} {request digest}'. A record written before keys were bound to their request
    -- holds the task id alone: with no digest to compare, it counts as a match and replays.
    local id, digest = string.match(stored, '^(%S+) (%S+)$')
    if not id then
      return {0, stored, 0, 0, 0}
    end
    if digest ~= ARGV[8] then
      return {3, id, 0, 0, 0}
    end
    -- Rewritten as it is: a write, so a WAIT behind this call (REPLICA_ACKS) confirms that the
    -- replicas hold everything up to here, the first request's task included.
    if stored_here then redis.call('SET', idempotency_key, stored, 'KEEPTTL') end
    return {0, id, 0, 0, 0}
  end
end
-- Backpressure. Waiting = entries in the ten streams: queued, plus delivered to a worker and not
-- yet acknowledged (running); tasks waiting for a retry are not counted. Summing the streams
-- (ten XLEN) needs no counter that every other script would have to keep right, but costs more
-- than the rest of this script together: the sum is kept in the count key for ARGV[10] ms, and
-- each enqueue meanwhile adds one. Tasks leaving the streams meanwhile are not subtracted, so the
-- check errs on the side of refusing.
local limit = tonumber(ARGV[7]) or 0
local counted
local fresh = 0
if limit > 0 then
  local waiting = tonumber(redis.call('GET', count_key))
  if waiting then
    counted = 'cached'
    if not short then fresh = redis.call('PTTL', count_key) end
  elseif short then
    return {4, '', 0, 0, 0}
  else
    waiting = 0
    for i = 3, 12 do
      waiting = waiting + redis.call('XLEN', KEYS[i])
    end
    counted = waiting
  end
  if waiting >= limit then
    return {2, '', waiting, 0, fresh}
  end
end
-- All or nothing under a refusal: Redis refuses OOM, READONLY and MISCONF at a script's first
-- write and lets later writes through, so the first write (XADD) is the only one that can be
-- refused, and nothing is written before it.
local now = now_ms()
-- Numbers handed to redis.call are formatted with %.17g on every call: convert once.
local now_s = tostring(now)
local due = 0
if ARGV[11] == 'delay' then
  due = now + tonumber(ARGV[12])
elseif ARGV[11] == 'at' then
  due = tonumber(ARGV[12])
end
local timeout = tonumber(ARGV[9]) or 0
-- What both kinds of task write after their record: the deadline, and the idempotency record.
local function write_extras()
  if timeout > 0 then
    redis.call('HSET', KEYS[1], 'timeout_ms', timeout)
  end
  if idempotency_key then
    redis.call('SET', idempotency_key, ARGV[1] .. ' ' .. ARGV[8], 'EX', ARGV[5])
  end
end
if due > now then
  -- Scheduled: the record and the scheduled set, no stream entry until it is due (promote.lua).
  -- The HSET is the first write, so a refusal leaves nothing written. Not counted as waiting.
  redis.call('HSET', KEYS[1], 'v', ARGV[6], 'id', ARGV[1], 'description', ARGV[2],
    'priority', ARGV[3], 'status', 'scheduled', 'attempts', '0', 'max_attempts', ARGV[4],
    'created_at', now_s, 'run_at', tostring(due))
  redis.call('ZADD', scheduled_key, due, ARGV[1])
  write_extras()
  return {1, ARGV[1], now, due, fresh}
end
local entry = redis.call('XADD', KEYS[2], '*', 't', ARGV[1])
redis.call('HSET', KEYS[1], 'v', ARGV[6], 'id', ARGV[1], 'description', ARGV[2],
  'priority', ARGV[3], 'status', 'queued', 'attempts', '0', 'max_attempts', ARGV[4],
  'created_at', now_s, 'stream_id', entry)
write_extras()
-- after the first write (XADD), so a refusal still leaves nothing written
if counted == 'cached' then
  redis.call('INCR', count_key)
elseif counted then
  -- the only place a count is stored, so the only one that makes it trusted for a while
  fresh = tonumber(ARGV[10]) or 100
  redis.call('SET', count_key, counted + 1, 'PX', fresh)
end
return {1, ARGV[1], now, 0, fresh}
