-- poolgate lease v1
-- In-flight leases of one backend: a sorted set of lease ids scored by their expiry (Redis clock,
-- ms), so the leases of a killed instance expire by themselves.
-- KEYS[1] lease zset   ARGV[1] 'put' | 'drop' | 'count'   ARGV[2] lease id   ARGV[3] ttl ms
-- Reply: the number of unexpired leases after the operation.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now_ms))
if ARGV[1] == 'put' then
  local ttl = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], string.format('%d', now_ms + ttl), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl + 60000))
elseif ARGV[1] == 'drop' then
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return redis.call('ZCARD', KEYS[1])
