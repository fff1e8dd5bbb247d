-- Raise thread heads to at least the given floors (what PostgreSQL already holds), never lower
-- them. Used when Redis has lost its tail, so no seq PostgreSQL has is ever issued again.
-- KEYS[1] heads hash; ARGV: thread1, floor1, thread2, floor2, ...  Replies the number raised.
local raised = 0
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local floor = tonumber(ARGV[i + 1])
  if current < floor then
    redis.call('HSET', KEYS[1], ARGV[i], floor)
    raised = raised + 1
  end
end
return raised
