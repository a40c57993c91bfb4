-- Move retries and scheduled tasks that came due into their priority stream.
-- KEYS[1] retry schedule, KEYS[2..11] priority streams, KEYS[12] scheduled tasks (optional: an
-- older caller passes only the retry schedule); ARGV[1] task key prefix, ARGV[2] limit
-- Returns {how many came due, ms until the next one is due or -1 when none waits}.
local now = now_ms()
local limit = tonumber(ARGV[2])
local moved = 0

local function promote(set, from_status, to_status)
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, limit - moved)
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

promote(KEYS[1], 'retrying', nil)
if KEYS[12] and moved < limit then
  promote(KEYS[12], 'scheduled', 'queued')
end

local next_due = -1
for _, set in ipairs({KEYS[1], KEYS[12]}) do
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(tonumber(first[2]) - now, 0)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
return {moved, next_due}
