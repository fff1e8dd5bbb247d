-- Move a tenant's committed-position mark forward after a PostgreSQL commit, unless the mark
-- is behind what PostgreSQL had committed before this batch: then Redis lost its tail (an older
-- AOF/RDB restored, or a fresh server) and the caller must repair the heads first.
-- KEYS[1] projected hash; ARGV[1] field; ARGV[2] committed ms before the batch; ARGV[3] after.
-- Replies 1 when stale (mark left as is), else 0.
local mark = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if mark < tonumber(ARGV[2]) then
  return 1
end
if mark < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 0
