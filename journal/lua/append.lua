-- Atomic append of a batch of events to one tenant's stream.
--
-- KEYS[1] stream  KEYS[2] heads (hash thread -> seq)  KEYS[3] fences (hash thread -> reason)
-- KEYS[4..] idempotency keys of the batch (string "seq:ts_ms", with a TTL)
-- ARGV[1] idempotency TTL (s)  ARGV[2] n events, then per event 4 values:
--   thread, expected head ("" = any), index into KEYS of its idempotency key (0 = none), body
--
-- Replies "ok created ts seq1 dup1 ts1 seq2 dup2 ts2 ..." as one space-separated string (a flat
-- array costs the client a parse per element) where created = 1 when this call made the stream;
-- or {"conflict", i, actual_head}; or {"fenced", thread, reason}.
-- Everything is checked before anything is written, so a refused batch writes nothing.

local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local now = redis.call('TIME')
local ts = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local heads = {}      -- thread -> head as it will be after the items seen so far
local batch_idem = {} -- KEYS index -> "seq:ts" issued earlier in this batch
local plan = {}       -- per item: seq, dup flag, ts
local any_fence = redis.call('EXISTS', KEYS[3]) == 1

for i = 0, n - 1 do
  local base = 3 + i * 4
  local thread = ARGV[base]
  local expected = ARGV[base + 1]
  local ik = tonumber(ARGV[base + 2])
  local fence = any_fence and redis.call('HGET', KEYS[3], thread)
  if fence then
    return {'fenced', thread, fence}
  end
  local prior = nil
  if ik > 0 then
    prior = batch_idem[ik] or redis.call('GET', KEYS[ik])
  end
  if prior then
    local sep = string.find(prior, ':', 1, true)
    plan[#plan + 1] = {tonumber(string.sub(prior, 1, sep - 1)), 1, tonumber(string.sub(prior, sep + 1))}
  else
    local head = heads[thread]
    if head == nil then
      head = tonumber(redis.call('HGET', KEYS[2], thread) or '0')
    end
    if expected ~= '' and tonumber(expected) ~= head then
      return {'conflict', i, head}
    end
    head = head + 1
    heads[thread] = head
    plan[#plan + 1] = {head, 0, ts}
    if ik > 0 then
      batch_idem[ik] = head .. ':' .. ts
    end
  end
end

local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  created = 1
end
local reply = {'ok', created, ts}
for i = 0, n - 1 do
  local base = 3 + i * 4
  local p = plan[i + 1]
  if p[2] == 0 then
    redis.call('XADD', KEYS[1], '*', 't', ARGV[base], 's', p[1], 'ts', ts, 'b', ARGV[base + 3])
    local ik = tonumber(ARGV[base + 2])
    if ik > 0 then
      redis.call('SET', KEYS[ik], p[1] .. ':' .. ts, 'EX', ttl)
    end
  end
  reply[#reply + 1] = p[1]
  reply[#reply + 1] = p[2]
  reply[#reply + 1] = p[3]
end
for thread, head in pairs(heads) do
  redis.call('HSET', KEYS[2], thread, head)
end
return table.concat(reply, ' ')
