-- One page of the tasks in one status, its cost bounded by the page size: at most ARGV[3]
-- candidates are examined (so a page may hold fewer tasks than that, even none, and still have a
-- next cursor), each checked against its record's current status (and priority).
-- KEYS[1..10] priority streams (p1 first), KEYS[11] retry schedule, KEYS[12] scheduled tasks,
-- KEYS[13] dead-letter stream, KEYS[14] succeeded index, KEYS[15] cancelled index
-- ARGV[1] status, ARGV[2] priority (0: any), ARGV[3] limit, ARGV[4] and ARGV[5] the cursor
-- ('' and '': from the start), ARGV[6] task key prefix, ARGV[7] consumer group
-- Where each status is found, and its order:
--   queued                 the priority streams, most urgent first, oldest first; cursor
--                          (priority, entry id) of the last entry examined
--   running                the same order, over the entries delivered and not acknowledged
--                          (XPENDING), so a backlog of queued entries is never scanned
--   scheduled, retrying    their sorted sets, soonest due first; cursor (score, task id)
--   dead, succeeded,       the dead-letter stream and the finished indexes, newest first;
--   cancelled              cursor (entry id, ids of that entry already examined)
-- Returns {cursor part 1, cursor part 2 ('' and '' when the listing is complete), {HGETALL of
-- each task listed}}.
local status, want_p, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ca, cb, prefix, group = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local budget = limit
local tasks = {}
local seen = {}

local function take(task_id)
  if seen[task_id] then return end
  seen[task_id] = true
  local key = prefix .. task_id
  local f = redis.call('HMGET', key, 'status', 'priority')
  if f[1] ~= status then return end
  if want_p > 0 and tonumber(f[2]) ~= want_p then return end
  tasks[#tasks + 1] = redis.call('HGETALL', key)
end

local function field(values, name)
  for i = 1, #values, 2 do
    if values[i] == name then return values[i + 1] end
  end
  return nil
end

if status == 'queued' or status == 'running' then
  local first, last = 1, 10
  if want_p > 0 then first, last = want_p, want_p end
  local p, start = first, '-'
  if ca ~= '' then
    p = math.max(tonumber(ca), first)
    if p == tonumber(ca) then start = '(' .. cb end
  end
  while p <= last do
    local ids = {}
    if status == 'queued' then
      for _, e in ipairs(redis.call('XRANGE', KEYS[p], start, '+', 'COUNT', budget)) do
        ids[#ids + 1] = {e[1], field(e[2], 't')}
      end
    else
      local pending = redis.pcall('XPENDING', KEYS[p], group, start, '+', budget)
      if type(pending) == 'table' and not pending.err then
        for _, e in ipairs(pending) do
          local entry = redis.call('XRANGE', KEYS[p], e[1], e[1])[1]
          ids[#ids + 1] = {e[1], entry and field(entry[2], 't')}
        end
      end
    end
    for _, e in ipairs(ids) do
      if e[2] then take(e[2]) end
    end
    budget = budget - #ids
    if budget <= 0 then
      return {tostring(p), ids[#ids][1], tasks}
    end
    p, start = p + 1, '-'
  end
  return {'', '', tasks}
end

if status == 'scheduled' or status == 'retrying' then
  local key = KEYS[11]
  if status == 'scheduled' then key = KEYS[12] end
  local rows
  if ca == '' then
    rows = redis.call('ZRANGE', key, 0, budget - 1, 'WITHSCORES')
  else
    local rank = redis.call('ZRANK', key, cb)
    if rank then
      rows = redis.call('ZRANGE', key, rank + 1, rank + budget, 'WITHSCORES')
    else
      -- the cursor's task left the set meanwhile: resume after its score (tasks due in the very
      -- same millisecond and ordered after it are skipped)
      rows = redis.call('ZRANGE', key, '(' .. ca, '+inf', 'BYSCORE', 'LIMIT', 0, budget, 'WITHSCORES')
    end
  end
  for i = 1, #rows, 2 do take(rows[i]) end
  if #rows / 2 >= budget then
    return {rows[#rows], rows[#rows - 1], tasks}
  end
  return {'', '', tasks}
end

local index = ({dead = 13, succeeded = 14, cancelled = 15})[status]
if not index then
  return redis.error_reply('ERR unknown status ' .. status)
end
local key = KEYS[index]
local stop, skip = '+', 0
if ca ~= '' then stop, skip = ca, tonumber(cb) end
while true do
  local entries = redis.call('XREVRANGE', key, stop, '-', 'COUNT', 16)
  if #entries == 0 then
    return {'', '', tasks}
  end
  for _, e in ipairs(entries) do
    -- the cursor's own entry comes again first (the range is inclusive); if it was trimmed
    -- away meanwhile, the first entry is an older one, none of whose ids were examined
    if e[1] ~= ca then skip = 0 end
    local ids = {}
    for id in string.gmatch(field(e[2], 't') or '', '[^,]+') do ids[#ids + 1] = id end
    -- newest first within the entry too
    for i = #ids - skip, 1, -1 do
      if budget <= 0 then
        return {e[1], tostring(#ids - i), tasks}
      end
      take(ids[i])
      budget = budget - 1
    end
    skip = 0
    stop = '(' .. e[1]
  end
end
