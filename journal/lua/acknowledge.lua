-- After a PostgreSQL commit, one call per tenant: move the committed-position mark forward,
-- acknowledge the committed stream entries, and raise the per-thread "projected" markers
-- (never lowering them). The mark is left as is when it is behind what PostgreSQL had committed
-- before this batch: then Redis lost its tail (an older AOF/RDB restored, or a fresh server) and
-- the caller must repair the heads first.
-- KEYS[1] projected hash; KEYS[2] stream; KEYS[3] the projected feed (a short stream that wakes
-- the clients waiting for durability 'projected', journal/ops.py).
-- ARGV[1] group; ARGV[2] mark field; ARGV[3] committed ms before the batch, or '' for no mark;
-- ARGV[4] committed ms after it; ARGV[5] n, the number of stream ids; ARGV[6 .. 5+n] the ids;
-- then thread, seq pairs for the projected markers.
-- Replies 1 when the mark was stale (left as is), else 0.
local stale = 0
if ARGV[3] ~= '' then
  local mark = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
  if mark < tonumber(ARGV[3]) then
    stale = 1
  elseif mark < tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
  end
end
local last = 5 + tonumber(ARGV[5])
for i = 6, last, 1000 do  -- unpack is bounded by the Lua stack
  redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, i, math.min(i + 999, last)))
end
local raised = {}
for i = last + 1, #ARGV, 2 do
  local seq = tonumber(ARGV[i + 1])
  if tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') < seq then
    redis.call('HSET', KEYS[1], ARGV[i], seq)
    raised[#raised + 1] = ARGV[i]
    raised[#raised + 1] = ARGV[i + 1]
  end
end
if #raised > 0 then
  -- A small batch's markers ride along, so its waiters need not read them back; a large batch's entry
  -- is only a wake-up (the waiters read the markers). Short-lived, so an idle tenant keeps no feed.
  if #raised > 64 then
    raised = {'', '0'}
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '64', '*', unpack(raised))
  redis.call('PEXPIRE', KEYS[3], 60000)
end
return stale
