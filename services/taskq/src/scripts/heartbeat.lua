-- Record that a worker is alive. KEYS[1] worker heartbeats; ARGV[1] worker id, ARGV[2] score
-- override ('' for now; '0' marks the worker dead at once so its entries are reclaimed).
local score = now_ms()
if ARGV[2] ~= '' then score = tonumber(ARGV[2]) end
redis.call('ZADD', KEYS[1], score, ARGV[1])
return score
