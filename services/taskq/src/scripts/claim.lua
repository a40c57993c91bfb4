-- Claim and start tasks, most urgent first, in one atomic step.
-- KEYS[1..10] priority streams (p1 first), KEYS[11] dead-letter stream, KEYS[12] the set of paused
-- priorities (optional: an older caller passes none)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] task key prefix, ARGV[4] how many to start (see ARGV[7]),
-- ARGV[5] retention (s) for tasks dead-lettered here, ARGV[6] the calling process's run id (a new
-- one per process), ARGV[7] mode, ARGV[8..] triples (priority, entry id, task id) of entries already
-- delivered to this consumer (blocking read, reclaim, a claim whose reply was lost).
-- Mode 'all': start every delivered entry, then up to ARGV[4] fresh ones, most urgent first.
-- Mode 'slots': start up to ARGV[4] tasks in all, strictly most urgent first across delivered and
-- fresh entries (at one priority, delivered ones first: they are older); delivered entries left
-- over are returned as deferred, still pending for this consumer.
-- A paused priority's fresh entries are not read, and its delivered entries whose task is still
-- queued are not started (deferred, still pending for this consumer); a delivered entry whose
-- task is running (taken over from a dead worker, or a lost reply) starts as usual.
-- Returns {started, deferred, left, paused}: started is flat, seven values per started task
-- (priority, entry id, task id, description, attempt, max attempts, timeout ms (0: none)): one
-- table for the whole batch converts to the reply faster than one per task. {priority, entry
-- id, task id} per deferred
-- entry, {priority, entry id, task id, layout version} per entry left pending because a newer
-- release wrote its record, and the paused priorities.
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[3]
local want = tonumber(ARGV[4])
local retention = tonumber(ARGV[5])
local run = ARGV[6]
local mode = ARGV[7]
local now = now_ms()
-- Numbers handed to redis.call are formatted with %.17g on every call: convert once.
local now_s = tostring(now)
local attempt_strings = {}
local function attempt_string(n)
  local s = attempt_strings[n]
  if not s then
    s = tostring(n)
    attempt_strings[n] = s
  end
  return s
end
local out = {}
local n_out = 0
local function emit_started(p, entry, task_id, description, attempts, max_attempts, timeout_ms)
  out[n_out + 1] = p
  out[n_out + 2] = entry
  out[n_out + 3] = task_id
  out[n_out + 4] = description
  out[n_out + 5] = attempts
  out[n_out + 6] = max_attempts
  out[n_out + 7] = tonumber(timeout_ms) or 0
  n_out = n_out + 7
end
local left = {}
local ours = tonumber(RECORD_VERSION)
local paused = {}
if KEYS[12] then
  for _, p in ipairs(redis.call('SMEMBERS', KEYS[12])) do
    local n = tonumber(p)
    if n then paused[n] = true end
  end
end

local function drop(stream, entry)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end

local function start(p, entry, task_id, delivered)
  local stream = KEYS[p]
  if delivered then
    -- handed in by the caller: only start it if it is still this consumer's (a reclaim or a
    -- blocking read may be stale by now, and the entry another worker's)
    local mine = redis.pcall('XPENDING', stream, group, entry, entry, 1, consumer)
    if type(mine) ~= 'table' or mine.err or not mine[1] then
      return
    end
  end
  local key = prefix .. task_id
  -- Who claimed it last (worker, run) matters only for an entry handed in again: a fresh entry
  -- reads two fields fewer (each field read is a scan of the record and a Lua string).
  local f
  if delivered then
    f = redis.pcall('HMGET', key, 'status', 'attempts', 'max_attempts', 'description', 'v', 'stream_id',
      'timeout_ms', 'worker', 'run')
  else
    f = redis.pcall('HMGET', key, 'status', 'attempts', 'max_attempts', 'description', 'v', 'stream_id',
      'timeout_ms')
  end
  if f.err then
    -- not a hash at all (WRONGTYPE): unreadable, and an error here would fail every claim that
    -- hands this entry in, for ever
    redis.call('XADD', KEYS[11], 'MAXLEN', '~', 100000, '*', 't', task_id, 'error',
      'unreadable task record (not a hash)')
    drop(stream, entry)
    return
  end
  if (not f[1]) or is_final(f[1]) or (f[6] and f[6] ~= entry) then
    -- expired, cancelled or finished meanwhile, or a stray entry that is not the task's current
    -- one: nothing to run
    drop(stream, entry)
    return
  end
  if paused[p] and f[1] ~= 'running' then
    return 'paused'
  end
  local version = tonumber(f[5])
  if version and version > ours then
    -- written by a newer release during an upgrade: not this worker's to judge. Left pending and
    -- not started (no attempt counted); with no lease renewed, the orphan sweep hands it to
    -- another worker after the lease, until one that reads this version runs it.
    left[#left + 1] = {p, entry, task_id, f[5]}
    return
  end
  if f[5] ~= RECORD_VERSION or not f[4] then
    -- written by another version, or corrupted: an error for this task, not for the worker
    local err = 'unreadable task record (layout version ' .. tostring(f[5]) .. ', this worker reads '
      .. RECORD_VERSION .. ')'
    redis.call('HSET', key, 'status', 'dead', 'finished_at', now, 'error', err)
    redis.call('XADD', KEYS[11], 'MAXLEN', '~', 100000, '*', 't', task_id, 'error', err)
    if retention > 0 then redis.call('EXPIRE', key, retention) end
    drop(stream, entry)
    return
  end
  local attempts = tonumber(f[2]) or 0
  local max_attempts = tonumber(f[3]) or 1
  if delivered and f[1] == 'running' and f[8] == consumer and f[9] == run then
    -- claimed already by this very process for this very entry (stream_id matched above), and
    -- handed in again: the first claim's reply was lost, so its execution never started. Same
    -- attempt; attempts count executions that started. (A restarted process has another run id:
    -- its predecessor's execution may have started, so that one counts.)
    redis.call('HSET', key, 'started_at', now_s)
    emit_started(p, entry, task_id, f[4], attempts, max_attempts, f[7])
    return true
  end
  if attempts >= max_attempts then
    -- every allowed execution started and none finished: the task keeps losing its workers.
    -- Provisional ('lost'): an execution presumed lost may still be running, and its success,
    -- should it come, replaces this verdict and withdraws the dead letter (see finish.lua).
    local err = 'gave up after ' .. attempts .. ' executions that never finished (worker lost)'
    local letter = redis.call('XADD', KEYS[11], 'MAXLEN', '~', 100000, '*', 't', task_id, 'error', err)
    redis.call('HSET', key, 'status', 'dead', 'finished_at', now, 'error', err, 'lost', letter)
    if retention > 0 then redis.call('EXPIRE', key, retention) end
    drop(stream, entry)
    return
  end
  attempts = attempts + 1
  redis.call('HSET', key, 'status', 'running', 'attempts', attempt_string(attempts), 'started_at',
    now_s, 'worker', consumer, 'run', run)
  -- a record names its entry (checked above), except one written before records did
  if not f[6] then redis.call('HSET', key, 'stream_id', entry) end
  emit_started(p, entry, task_id, f[4], attempts, max_attempts, f[7])
  return true
end

local function read_fresh(p)
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
    'STREAMS', KEYS[p], '>')
  if reply then
    local entries = reply[1][2]
    for _, e in ipairs(entries) do
      start(p, e[1], e[2][2], false)
    end
    want = want - #entries
  end
end

local deferred = {}
if mode == 'slots' then
  local delivered = {}
  for p = 1, 10 do delivered[p] = {} end
  local i = 8
  while ARGV[i] do
    local list = delivered[tonumber(ARGV[i])]
    list[#list + 1] = {ARGV[i + 1], ARGV[i + 2]}
    i = i + 3
  end
  for p = 1, 10 do
    for _, d in ipairs(delivered[p]) do
      if want <= 0 then
        deferred[#deferred + 1] = {p, d[1], d[2]}
      else
        local started = start(p, d[1], d[2], true)
        if started == 'paused' then
          deferred[#deferred + 1] = {p, d[1], d[2]}
        elseif started then
          want = want - 1
        end
      end
    end
    if want > 0 and not paused[p] then read_fresh(p) end
  end
else
  local i = 8
  while ARGV[i] do
    start(tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], true)
    i = i + 3
  end
  for p = 1, 10 do
    if want <= 0 then break end
    if not paused[p] then read_fresh(p) end
  end
end
local paused_list = {}
for p = 1, 10 do
  if paused[p] then paused_list[#paused_list + 1] = p end
end
return {out, deferred, left, paused_list}
