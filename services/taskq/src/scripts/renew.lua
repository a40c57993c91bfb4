-- Keep the lease of long-running entries: claiming them again resets their idle time.
-- KEYS[1..10] priority streams; ARGV[1] group, ARGV[2] consumer, ARGV[3..] pairs (priority, entry id)
local i = 3
local renewed = 0
while ARGV[i] do
  local r = redis.call('XCLAIM', KEYS[tonumber(ARGV[i])], ARGV[1], ARGV[2], 0, ARGV[i + 1], 'JUSTID')
  renewed = renewed + #r
  i = i + 2
end
return renewed
