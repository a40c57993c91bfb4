-- Entries pending for this consumer, e.g. delivered by a read whose reply was lost to a timeout.
-- KEYS[1..10] priority streams; ARGV[1] group, ARGV[2] consumer, ARGV[3] limit per stream
-- Returns {priority, entry id, task id}; entries deleted meanwhile are acknowledged and skipped.
local out = {}
for p = 1, 10 do
  local pending = redis.pcall('XPENDING', KEYS[p], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
  if type(pending) == 'table' and not pending.err then
    for _, e in ipairs(pending) do
      local entry = redis.call('XRANGE', KEYS[p], e[1], e[1])
      if entry[1] then
        out[#out + 1] = {p, e[1], entry[1][2][2]}
      else
        redis.call('XACK', KEYS[p], ARGV[1], e[1])
      end
    end
  end
end
return out
