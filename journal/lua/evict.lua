-- Drop idle threads' heads and projected marks from Redis, once PostgreSQL holds all of them.
--
-- KEYS[1] heads  KEYS[2] projected  KEYS[3] evicted (the tenant's flag)
-- ARGV pairs: thread, the head PostgreSQL holds for it (its verified chain head).
-- A thread is dropped only if Redis issued exactly that head (no append since) and the projector
-- marked it projected; the flag is set first, so an append after this asks the client for the head.
-- Replies the number of threads dropped.

local dropped = 0
for i = 1, #ARGV, 2 do
  local thread = ARGV[i]
  local seq = tonumber(ARGV[i + 1])
  local head = tonumber(redis.call('HGET', KEYS[1], thread) or '-1')
  local projected = tonumber(redis.call('HGET', KEYS[2], thread) or '-1')
  if head == seq and projected ~= nil and projected >= seq then
    if dropped == 0 then
      redis.call('SET', KEYS[3], '1')
    end
    redis.call('HDEL', KEYS[1], thread)
    redis.call('HDEL', KEYS[2], thread)
    dropped = dropped + 1
  end
end
return dropped
