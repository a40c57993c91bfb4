-- Move retries and scheduled tasks that came due into their priority stream.
-- KEYS[1] retry schedule, KEYS[2..11] priority streams, KEYS[12] scheduled tasks, KEYS[13] the
-- retry clock (both optional: an older caller passes only the retry schedule and streams);
-- ARGV[1] task key prefix, ARGV[2] limit
-- Returns {how many came due, ms until the next one is due or -1 when none waits}.
--
-- Retries are due on the retry clock (prelude's retry_now): Redis's time plus a skew. When
-- Redis's clock goes back by more than a second from the latest time a promotion saw, the
-- skew grows by the jump, so the retry clock continues where it was and retries keep their
-- backoff instead of waiting for the jump's length. Scheduled tasks stay on Redis's wall clock
-- (`run_at` is a wall time). A forward jump cannot be told from a pause of every worker: it
-- makes retries due early, never late.
local JUMP_MS, SEEN_STEP_MS = 1000, 1000
local now = now_ms()
local retry_clock = now
if KEYS[13] then
  local c = redis.call('HMGET', KEYS[13], 'skew', 'seen')
  local skew, seen = tonumber(c[1]) or 0, tonumber(c[2])
  retry_clock = now + skew
  if seen and retry_clock < seen - JUMP_MS then
    skew = skew + (seen - retry_clock)
    retry_clock = seen
    redis.call('HSET', KEYS[13], 'skew', skew, 'seen', seen)
  elseif not seen or retry_clock >= seen + SEEN_STEP_MS then
    redis.call('HSET', KEYS[13], 'seen', retry_clock)
  end
end
local limit = tonumber(ARGV[2])
local moved = 0

local function promote(set, from_status, to_status, at)
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', at, 'LIMIT', 0, limit - moved)
  for _, task_id in ipairs(due) do
    redis.call('ZREM', set, task_id)
    local key = ARGV[1] .. task_id
    local f = redis.call('HMGET', key, 'status', 'priority')
    if f[1] == from_status then
      local p = tonumber(f[2]) or 5
      if p < 1 or p > 10 then p = 5 end
      local entry = redis.call('XADD', KEYS[1 + p], '*', 't', task_id)
      if to_status then
        redis.call('HSET', key, 'stream_id', entry, 'status', to_status)
      else
        redis.call('HSET', key, 'stream_id', entry)
      end
    end
  end
  moved = moved + #due
end

promote(KEYS[1], 'retrying', nil, retry_clock)
if KEYS[12] and moved < limit then
  promote(KEYS[12], 'scheduled', 'queued', now)
end

local next_due = -1
for _, pair in ipairs({{KEYS[1], retry_clock}, {KEYS[12], now}}) do
  local set, at = pair[1], pair[2]
  local first = set and redis.call('ZRANGE', set, 0, 0, 'WITHSCORES') or {}
  if first[2] then
    local wait = math.max(tonumber(first[2]) - at, 0)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
return {moved, next_due}
