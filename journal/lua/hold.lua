-- Hold or release one thread while an operation changes its stored history (retention's delete).
--
-- KEYS[1] heads (hash thread -> seq)  KEYS[2] fences (hash thread -> reason)
-- ARGV[1] "hold" or "release"  ARGV[2] thread  ARGV[3] the hold's reason, starting with "hold:"
--
-- "hold": only a thread Redis holds no head for (evicted: nothing of it is waiting to be projected)
-- and that is not fenced; the append script answers "held" for it until it is released, so no
-- append can land on a history being deleted. Replies 1 if held, 0 if not.
-- "release": removes the fence only if it is still this hold. Replies 1 if removed.

local thread, reason = ARGV[2], ARGV[3]
if ARGV[1] == 'hold' then
  if redis.call('HEXISTS', KEYS[1], thread) == 1 or redis.call('HEXISTS', KEYS[2], thread) == 1 then
    return 0
  end
  redis.call('HSET', KEYS[2], thread, reason)
  return 1
end
if redis.call('HGET', KEYS[2], thread) == reason then
  redis.call('HDEL', KEYS[2], thread)
  return 1
end
return 0
