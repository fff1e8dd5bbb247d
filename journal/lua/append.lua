-- Atomic append of a batch of events to one tenant's stream.
--
-- KEYS[1] stream  KEYS[2] heads (hash thread -> seq)  KEYS[3] fences (hash thread -> reason)
-- KEYS[4] evicted (exists once `agent-journal maintain` dropped idle threads' heads from Redis)
-- KEYS[5..] idempotency keys of the batch (string "seq:ts_ms:digest", with a TTL; older values lack the digest)
-- ARGV[1] idempotency TTL (s)  ARGV[2] n events, then per event 5 values:
--   thread, expected head ("" = any), index into KEYS of its idempotency key (0 = none),
--   digest of the body ("" without a key), body
-- then m, and m pairs "thread floor": the head PostgreSQL holds for a thread Redis has no head for.
--
-- Replies "ok created ts seq1 dup1 ts1 seq2 dup2 ts2 ..." as one space-separated string (a flat
-- array costs the client a parse per element) where created = 1 when this call made the stream;
-- or {"conflict", i, actual_head}; or {"fenced", thread, reason}; or {"held", thread, reason} when the
-- thread's fence is a hold ("hold:…": an operation such as retention's delete is changing its stored
-- history for a moment; the client waits and calls again); or {"reused", i, seq} when an
-- idempotency key already names an event whose digest differs (same key, other content); or
-- {"restore", thread, ...} when the tenant had threads evicted and these threads have no head in
-- Redis: the client reads their heads from PostgreSQL and calls again with them as floors.
-- Everything is checked before anything is written, so a refused batch writes nothing.

local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local now = redis.call('TIME')
local ts = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local heads = {}      -- thread -> head as it will be after the items seen so far
local batch_idem = {} -- KEYS index -> "seq:ts" issued earlier in this batch
local plan = {}       -- per item: seq, dup flag, ts
local any_fence = redis.call('EXISTS', KEYS[3]) == 1
local floors = {}     -- thread -> head restored from PostgreSQL by the client
local fbase = 3 + n * 5
for j = 1, tonumber(ARGV[fbase] or '0') do
  floors[ARGV[fbase + 2 * j - 1]] = tonumber(ARGV[fbase + 2 * j])
end
local any_evicted = nil -- asked only when a thread has no head (a new thread, or an evicted one)
local restore = {}    -- threads whose head must come from PostgreSQL
local restoring = {}

for i = 0, n - 1 do
  local base = 3 + i * 5
  local thread = ARGV[base]
  local expected = ARGV[base + 1]
  local ik = tonumber(ARGV[base + 2])
  local digest = ARGV[base + 3]
  local fence = any_fence and redis.call('HGET', KEYS[3], thread)
  if fence then
    if string.sub(fence, 1, 5) == 'hold:' then
      return {'held', thread, fence}
    end
    return {'fenced', thread, fence}
  end
  local prior = nil
  if ik > 0 then
    prior = batch_idem[ik] or redis.call('GET', KEYS[ik])
  end
  if prior then
    local sep = string.find(prior, ':', 1, true)
    local seq = tonumber(string.sub(prior, 1, sep - 1))
    local rest = string.sub(prior, sep + 1)
    local sep2 = string.find(rest, ':', 1, true)
    local prior_ts = rest
    if sep2 then
      prior_ts = string.sub(rest, 1, sep2 - 1)
      if string.sub(rest, sep2 + 1) ~= digest then
        return {'reused', i, seq}
      end
    end
    plan[#plan + 1] = {seq, 1, tonumber(prior_ts), prior}
  else
    local head = heads[thread]
    if head == nil then
      local stored = redis.call('HGET', KEYS[2], thread)
      if stored then
        head = tonumber(stored)
      elseif floors[thread] then
        head = floors[thread]
      else
        if any_evicted == nil then
          any_evicted = redis.call('EXISTS', KEYS[4]) == 1
        end
        if any_evicted and not restoring[thread] then
          restoring[thread] = true
          restore[#restore + 1] = thread
        end
        head = 0
      end
    end
    if expected ~= '' and tonumber(expected) ~= head and not restoring[thread] then
      return {'conflict', i, head}
    end
    head = head + 1
    heads[thread] = head
    plan[#plan + 1] = {head, 0, ts}
    if ik > 0 then
      batch_idem[ik] = head .. ':' .. ts .. ':' .. digest
    end
  end
end

if #restore > 0 then
  table.insert(restore, 1, 'restore')
  return restore
end

local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  created = 1
end
local reply = {'ok', created, ts}
for i = 0, n - 1 do
  local base = 3 + i * 5
  local p = plan[i + 1]
  local ik = tonumber(ARGV[base + 2])
  if p[2] == 0 then
    redis.call('XADD', KEYS[1], '*', 't', ARGV[base], 's', p[1], 'ts', ts, 'b', ARGV[base + 4])
    if ik > 0 then
      redis.call('SET', KEYS[ik], p[1] .. ':' .. ts .. ':' .. ARGV[base + 3], 'EX', ttl)
    end
  elseif ik > 0 then
    -- A repeat writes no event, but sets its key again (same value, fresh TTL): a write on this connection, so
    -- the WAIT/WAITAOF that follows a 'replicated' or 'fsync' retry covers the original event too (it comes
    -- before this write in the replication stream and the AOF). Without it a retry on another connection
    -- proved nothing. SET, not EXPIRE: tenant users may run SET in this script (journal/acl.py).
    redis.call('SET', KEYS[ik], p[4], 'EX', ttl)
  end
  reply[#reply + 1] = p[1]
  reply[#reply + 1] = p[2]
  reply[#reply + 1] = p[3]
end
for thread, head in pairs(heads) do
  redis.call('HSET', KEYS[2], thread, head)
end
return table.concat(reply, ' ')
