-- Keep the lease of long-running entries: claiming them again resets their idle time. Only
-- entries still pending for this consumer are touched: XCLAIM would otherwise take an entry back
-- from the worker it was handed to after this one was presumed dead.
-- KEYS[1..10] priority streams; ARGV[1] group, ARGV[2] consumer, ARGV[3..] pairs (priority, entry id)
local i = 3
local renewed = 0
while ARGV[i] do
  local stream, entry = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  local mine = redis.pcall('XPENDING', stream, ARGV[1], entry, entry, 1, ARGV[2])
  if type(mine) == 'table' and not mine.err and mine[1] then
    local r = redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, entry, 'JUSTID')
    renewed = renewed + #r
  end
  i = i + 2
end
return renewed
