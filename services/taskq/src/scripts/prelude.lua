-- Shared by every script: server time in milliseconds, so all timestamps come from one clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function is_final(status)
  return status == 'succeeded' or status == 'dead' or status == 'cancelled'
end
