-- poolgate inflight v1
-- In-flight counts per backend, kept per instance: each instance publishes how many attempts it
-- has in flight on each backend with its heartbeat (a lease that lives as long as the instance's
-- registry entry), so a killed instance's counts stop counting when its heartbeat expires.
-- KEYS[1] registry zset (instance id scored by heartbeat expiry, Redis clock ms)
-- KEYS[2..] one hash per backend: field instance id, value its count
-- ARGV[1] 'put' | 'sum'
--   put: ARGV[2] instance id, ARGV[3] hash ttl ms, ARGV[4..] the count for each hash
--   sum: (no more arguments) entries of instances no longer in the registry are deleted
-- Reply: put -> 0; sum -> {the live count of each hash}

if ARGV[1] == 'put' then
  for i = 2, #KEYS do
    redis.call('HSET', KEYS[i], ARGV[2], ARGV[2 + i])
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  end
  return 0
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sums = {}
for i = 2, #KEYS do
  local entries = redis.call('HGETALL', KEYS[i])
  local sum = 0
  for j = 1, #entries, 2 do
    local expires = tonumber(redis.call('ZSCORE', KEYS[1], entries[j]))
    if expires ~= nil and expires > now_ms then
      sum = sum + (tonumber(entries[j + 1]) or 0)
    else
      redis.call('HDEL', KEYS[i], entries[j])
    end
  end
  sums[#sums + 1] = sum
end
return sums
