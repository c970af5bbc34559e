-- poolgate admit v1
-- One admission, atomically: the backend's cooldown and half-open probe slot, then `cost` tokens
-- from every bucket, all or nothing; or (mode 'give') tokens given back; or (mode 'owe', TPM
-- usage above its reservation) tokens taken without admitting anything, into debt down to minus
-- the capacity. 'owe' was added compatibly: an instance that never sends it reads a bucket in
-- debt as an empty one that refills.
-- Changing what this script does or returns: rename it to v2 (the Rust side keys its data by
-- schema version) so old and new instances never run each other's logic during a rolling upgrade.
--
-- KEYS[1] cooldown hash   KEYS[2] probe slot   KEYS[3] lease zset   KEYS[4..] buckets
-- ARGV[1] mode 'take' | 'give' | 'owe'
-- ARGV[2] probe token     ARGV[3] probe ttl ms
-- ARGV[4] lease id ('' = none)   ARGV[5] lease ttl ms
-- ARGV[6 + 2(i-1)] per-minute limit of bucket i   ARGV[7 + 2(i-1)] cost of bucket i
--
-- Reply: {code, detail, now_ms, until_ms (-1 none), level, broken, seq, reason, extra...}
--   (the cooldown fields as report.lua keeps them)
--   code 0 admitted, 1 admitted as the probe   extra = tokens left in each bucket
--   code 2 limited: detail = bucket index, extra = {wait_us}
--   code 3 cooling: detail = ms left
--   code 4 probe in flight: detail = the probe slot's ms left
--   code 5 broken
--   code 6 given back (or owed)
--
-- Buckets: level in units, one token = 60,000,000 units (the microseconds in a minute), a bucket
-- of n/min gains n units per microsecond; capacity n tokens; a missing bucket is full. All
-- values stay below 2^53, so Lua's doubles are exact.

local UNIT = 60000000
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

local cd = redis.call('HMGET', KEYS[1], 'until', 'level', 'broken', 'seq', 'reason')
local until_ms = tonumber(cd[1]) or -1
local level = tonumber(cd[2]) or 0
local broken = tonumber(cd[3]) or 0
local seq = tonumber(cd[4]) or 0
local reason = tonumber(cd[5]) or 0

-- Integers passed to commands that want one, never in exponent notation.
local function int(x) return string.format('%d', x) end

local function reply(code, detail, extra)
  local r = {code, detail, now_ms, until_ms, level, broken, seq, reason}
  for i = 1, #extra do r[#r + 1] = extra[i] end
  return r
end

-- ceil(deficit / rate) in integers (the division of doubles may round either way).
local function wait_us(deficit, rate)
  local q = math.floor(deficit / rate)
  while q * rate < deficit do q = q + 1 end
  while q > 0 and (q - 1) * rate >= deficit do q = q - 1 end
  return q
end

local mode = ARGV[1]
local probe = 0
if mode == 'take' then
  if broken == 1 then return reply(5, 0, {}) end
  if until_ms >= 0 then
    if now_ms < until_ms then return reply(3, until_ms - now_ms, {}) end
    local held = redis.call('PTTL', KEYS[2])
    if held > 0 then return reply(4, held, {}) end
    if held == -1 then return reply(4, 1000, {}) end
    probe = 1
  end
end

-- Read and refill every bucket first; write only when all can pay.
local n = #KEYS - 3
local levels, lasts, rates = {}, {}, {}
for i = 1, n do
  local rate = tonumber(ARGV[6 + 2 * (i - 1)])
  local cost = tonumber(ARGV[7 + 2 * (i - 1)]) * UNIT
  local b = redis.call('HMGET', KEYS[3 + i], 'l', 't', 'r')
  local lvl, last, old_rate = tonumber(b[1]), tonumber(b[2]), tonumber(b[3]) or rate
  if lvl == nil or last == nil then
    lvl, last = rate * UNIT, now_us
  else
    local elapsed = now_us - last
    if elapsed < 0 then elapsed = 0 end
    -- A bucket in debt (never below minus its capacity) repays it first, a minute's refill at
    -- most, so every sum stays within the capacity's range.
    if lvl < 0 then
      local pay = math.min(elapsed, UNIT)
      lvl = lvl + pay * old_rate
      elapsed = elapsed - pay
    end
    -- A minute fills any bucket; the cap keeps elapsed * rate exact.
    if elapsed > UNIT then elapsed = UNIT end
    -- Refill at the rate the bucket had, then clamp to the (maybe new) capacity.
    lvl = math.min(lvl + elapsed * old_rate, old_rate * UNIT, rate * UNIT)
    if now_us > last then last = now_us end
  end
  if mode == 'take' then
    if lvl < cost then return reply(2, i, {wait_us(cost - lvl, rate)}) end
    lvl = lvl - cost
  elseif mode == 'owe' then
    lvl = math.max(lvl - cost, -rate * UNIT)
  else
    lvl = math.min(lvl + cost, rate * UNIT)
  end
  levels[i], lasts[i], rates[i] = lvl, last, rate
end

local left = {}
for i = 1, n do
  local key = KEYS[3 + i]
  redis.call('HSET', key, 'l', int(levels[i]), 't', int(lasts[i]), 'r', int(rates[i]))
  -- Expire once it would be full again (plus a second): a missing bucket is a full one.
  redis.call('PEXPIRE', key, int(math.ceil(wait_us(rates[i] * UNIT - levels[i], rates[i]) / 1000) + 1000))
  left[i] = math.floor(levels[i] / UNIT)
end
if mode ~= 'take' then return reply(6, 0, left) end

if probe == 1 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
if ARGV[4] ~= '' then
  local ttl = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', int(now_ms))
  redis.call('ZADD', KEYS[3], int(now_ms + ttl), ARGV[4])
  redis.call('PEXPIRE', KEYS[3], int(ttl + 60000))
end
return reply(probe, 0, left)
