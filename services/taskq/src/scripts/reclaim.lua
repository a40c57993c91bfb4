-- Take over the pending entries of dead workers (missing heartbeat) and of orphans (idle too long).
-- KEYS[1] worker heartbeats, KEYS[2..11] priority streams, KEYS[12] sweep cursors (hash: priority
-- -> entry id where the next XAUTOCLAIM of that stream starts)
-- ARGV[1] group, ARGV[2] this consumer, ARGV[3] dead after (ms), ARGV[4] lease (ms), ARGV[5] limit,
-- ARGV[6] the Redis time the caller expects (ms, '' for no check), ARGV[7] how far behind it and
-- ARGV[8] how far ahead of it Redis's time may be (ms; a call queued on its connection runs late)
-- Returns {priority, entry id, task id} per entry now owned by this consumer, or
-- {{-1, 'clock', offset ms}} and takes nothing when the clock disagrees with the expectation (it
-- jumped: heartbeats cannot be judged until live workers have beaten on the new clock).
local group, me = ARGV[1], ARGV[2]
local budget = tonumber(ARGV[5])
local dead_after = tonumber(ARGV[3])
local now = now_ms()
local out = {}

if ARGV[6] and ARGV[6] ~= '' then
  local off = now - tonumber(ARGV[6])
  if off < -tonumber(ARGV[7]) or off > tonumber(ARGV[8] or ARGV[7]) then
    return {{-1, 'clock', tostring(off)}}
  end
end

-- A heartbeat stamped ahead of now came before a backward jump: count it from now, or a worker
-- that died before the jump would look alive for the jump's length.
local ahead = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now + dead_after), '+inf')
for _, worker in ipairs(ahead) do
  redis.call('ZADD', KEYS[1], now, worker)
end

local function take(p, claimed)
  for _, c in ipairs(claimed) do
    if type(c) == 'table' and c[2] and c[2][2] then
      out[#out + 1] = {p, c[1], c[2][2]}
      budget = budget - 1
    end
  end
end

local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead_after)
for _, worker in ipairs(dead) do
  if worker ~= me then
    local remaining = 0
    for p = 1, 10 do
      local pending = redis.pcall('XPENDING', KEYS[1 + p], group, '-', '+', 1000, worker)
      if type(pending) == 'table' and not pending.err then
        for _, e in ipairs(pending) do
          if budget > 0 then
            take(p, redis.call('XCLAIM', KEYS[1 + p], group, me, 0, e[1]))
          else
            remaining = remaining + 1
          end
        end
      end
    end
    if remaining == 0 then
      -- XPENDING above lists at most 1000 per stream: make sure nothing is left before removing
      -- the consumer, since DELCONSUMER drops whatever it still has pending.
      for p = 1, 10 do
        local rest = redis.pcall('XPENDING', KEYS[1 + p], group, '-', '+', 1, worker)
        if type(rest) == 'table' and not rest.err and rest[1] then
          remaining = remaining + 1
        end
      end
    end
    if remaining == 0 then
      for p = 1, 10 do
        redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1 + p], group, worker)
      end
      redis.call('ZREM', KEYS[1], worker)
    end
  end
end

-- The orphan sweep. XAUTOCLAIM examines at most 10 x COUNT entries a call, so each stream's
-- sweep resumes where the previous one (by any worker) stopped, and wraps to 0-0 at the end:
-- long-running entries at the head of a pending list cannot hide the orphans behind them.
for p = 1, 10 do
  if budget <= 0 then break end
  local cursor = redis.call('HMGET', KEYS[12], p)[1] or '0-0'
  local reply = redis.pcall('XAUTOCLAIM', KEYS[1 + p], group, me, ARGV[4], cursor, 'COUNT', budget)
  if type(reply) == 'table' and not reply.err then
    redis.call('HSET', KEYS[12], p, reply[1])
    take(p, reply[2])
  end
end
return out
