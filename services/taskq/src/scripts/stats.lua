-- Queue statistics in one round trip.
-- KEYS[1..10] priority streams, KEYS[11] retry schedule, KEYS[12] dead-letter stream,
-- KEYS[13] worker heartbeats, KEYS[14] scheduled tasks, KEYS[15] paused priorities, KEYS[16]
-- finished counts;
-- ARGV[1] group, ARGV[2] dead after (ms)
-- Returns {queued p1..p10, in flight p1..p10, retry scheduled, dead-lettered, live workers,
-- age (ms) of the oldest undelivered entry p1..p10 (0 when none), scheduled, paused p1..p10
-- (1 or 0), succeeded since the counts began}.
local queued, in_flight, oldest_age = {}, {}, {}
local now = now_ms()
for p = 1, 10 do
  local len = redis.call('XLEN', KEYS[p])
  local pending = 0
  local last_delivered = nil
  oldest_age[p] = 0
  if len > 0 then
    local groups = redis.pcall('XINFO', 'GROUPS', KEYS[p])
    if type(groups) == 'table' and not groups.err then
      for _, g in ipairs(groups) do
        local name, count, last
        for j = 1, #g, 2 do
          if g[j] == 'name' then name = g[j + 1] end
          if g[j] == 'pending' then count = g[j + 1] end
          if g[j] == 'last-delivered-id' then last = g[j + 1] end
        end
        if name == ARGV[1] then
          pending = count or 0
          last_delivered = last
        end
      end
    end
  end
  if len > pending then
    local first = redis.call('XRANGE', KEYS[p], '(' .. (last_delivered or '0-0'), '+', 'COUNT', 1)
    if first[1] then
      local ms = tonumber(string.match(first[1][1], '^(%d+)'))
      if ms then oldest_age[p] = math.max(now - ms, 0) end
    end
  end
  in_flight[p] = pending
  queued[p] = math.max(len - pending, 0)
end
local out = {}
for p = 1, 10 do out[#out + 1] = queued[p] end
for p = 1, 10 do out[#out + 1] = in_flight[p] end
out[#out + 1] = redis.call('ZCARD', KEYS[11])
out[#out + 1] = redis.call('XLEN', KEYS[12])
out[#out + 1] = redis.call('ZCOUNT', KEYS[13], now - tonumber(ARGV[2]), '+inf')
for p = 1, 10 do out[#out + 1] = oldest_age[p] end
out[#out + 1] = redis.call('ZCARD', KEYS[14])
for p = 1, 10 do out[#out + 1] = redis.call('SISMEMBER', KEYS[15], p) end
out[#out + 1] = tonumber(redis.call('HGET', KEYS[16], 'succeeded')) or 0
return out
