-- Shared by every script: server time in milliseconds, so all timestamps come from one clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The retry schedule's clock: Redis's time plus the skew that backward jumps of its clock left
-- (KEYS of the retry clock hash, or nil for callers that predate it). Retries are scored and
-- promoted on it, so a clock that goes back does not hold them for the jump's length.
local function retry_now(clock_key)
  local now = now_ms()
  if not clock_key then return now end
  return now + (tonumber(redis.call('HMGET', clock_key, 'skew')[1]) or 0)
end
local function is_final(status)
  return status == 'succeeded' or status == 'dead' or status == 'cancelled'
end
-- Indexes finished tasks for listing (KEYS of a finished index, comma-separated task ids): one
-- stream entry per state change, entries older than the task retention (s, 0: kept) trimmed.
-- With the KEYS of the finished counts, adds `n` to the field `status` (throughput counters).
local function index_finished(index_key, ids, now, retention, counts_key, status, n)
  if counts_key then redis.call('HINCRBY', counts_key, status, n) end
  if retention > 0 then
    redis.call('XADD', index_key, 'MINID', '~', now - retention * 1000, '*', 't', ids)
  else
    redis.call('XADD', index_key, '*', 't', ids)
  end
end
