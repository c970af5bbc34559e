-- poolgate heartbeat v1
-- The instance registry: a sorted set of instance ids scored by when their heartbeat expires
-- (Redis clock, ms).
-- KEYS[1] registry zset   ARGV[1] 'beat' | 'leave'   ARGV[2] instance id   ARGV[3] ttl ms
-- Reply: the number of live instances after the operation.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now_ms))
if ARGV[1] == 'beat' then
  redis.call('ZADD', KEYS[1], string.format('%d', now_ms + tonumber(ARGV[3])), ARGV[2])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return redis.call('ZCARD', KEYS[1])
