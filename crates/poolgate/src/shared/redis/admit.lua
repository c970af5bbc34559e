-- poolgate admit v2
-- One admission, atomically: the backend's cooldown and half-open probe slot, then `cost` tokens
-- from every bucket, all or nothing, plus (when asked and every bucket stays at least half full
-- after it) an allowance of extra tokens per bucket for the calling instance to admit later
-- requests from without a call; or (mode 'give') tokens given back; or (mode 'owe', TPM usage
-- above its reservation) tokens taken without admitting anything, into debt down to minus the
-- capacity. An instance that never sends 'owe' reads a bucket in debt as an empty one that
-- refills.
--
-- Versions. The script's own version (the first line) changes with what it does, takes or
-- returns; every instance runs its own text by SHA (EVALSHA), so two versions never run each
-- other's logic. The data it keeps has a schema version, part of every key (`SCHEMA` on the
-- Rust side, `v1`): a change of that layout bumps the schema, so instances of two layouts never
-- read each other's data. v2 (allowances, no lease arguments, the probe holder in two
-- arguments, no cooldown read for 'give'/'owe') keeps the v1 layout: v1 and v2 instances share
-- buckets, cooldowns and probe slots during a rolling upgrade.
--
-- KEYS[1] cooldown hash   KEYS[2] probe slot   KEYS[3..] buckets
-- ARGV[1] mode 'take' | 'give' | 'owe'
-- ARGV[2] probe holder (instance id)   ARGV[3] probe number   ARGV[4] probe ttl ms
--   (the slot's value is `<holder>:<number>`, as v1 kept it)
-- ARGV[5 + 3(i-1)] per-minute limit of bucket i   ARGV[6 + 3(i-1)] cost of bucket i
-- ARGV[7 + 3(i-1)] allowance asked for bucket i (tokens; 0 = none)
--
-- Reply: {code, detail, now_ms, until_ms (-1 none), level, broken, seq, reason, extra...}
--   (the cooldown fields as report.lua keeps them; for 'give'/'owe' they are not read: -1/0)
--   code 0 admitted, 1 admitted as the probe
--        extra = tokens left in each bucket, then the allowance granted for each
--   code 2 limited: detail = bucket index, extra = {wait_us}
--   code 3 cooling: detail = ms left
--   code 4 probe in flight: detail = the probe slot's ms left
--   code 5 broken
--   code 6 given back (or owed): extra = tokens left in each bucket
--
-- Buckets: level in units, one token = 60,000,000 units (the microseconds in a minute), a bucket
-- of n/min gains n units per microsecond; capacity n tokens; a missing bucket is full. All
-- values stay below 2^53, so Lua's doubles are exact.
--
-- Allowances: granted all or none, only in mode 'take', only when every bucket of the admission
-- keeps at least half its capacity after the cost and the grant, so near a limit every request
-- comes here and admission is exact. Granted tokens are taken from the buckets like any other:
-- the cluster's total never exceeds a limit; tokens an instance does not use lapse (its side).

local UNIT = 60000000
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local mode = ARGV[1]

local until_ms, level, broken, seq, reason = -1, 0, 0, 0, 0
if mode == 'take' then
  local cd = redis.call('HMGET', KEYS[1], 'until', 'level', 'broken', 'seq', 'reason')
  until_ms = tonumber(cd[1]) or -1
  level = tonumber(cd[2]) or 0
  broken = tonumber(cd[3]) or 0
  seq = tonumber(cd[4]) or 0
  reason = tonumber(cd[5]) or 0
end

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
local n = #KEYS - 2
local levels, lasts, rates = {}, {}, {}
local grant = mode == 'take'
local asked = false
for i = 1, n do
  local a = 5 + 3 * (i - 1)
  local rate = tonumber(ARGV[a])
  local cost = tonumber(ARGV[a + 1]) * UNIT
  local b = redis.call('HMGET', KEYS[2 + i], 'l', 't', 'r')
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
    local want = tonumber(ARGV[a + 2]) or 0
    if want > 0 then asked = true end
    if want < 0 or lvl - want * UNIT < rate * UNIT / 2 then grant = false end
  elseif mode == 'owe' then
    lvl = math.max(lvl - cost, -rate * UNIT)
  else
    lvl = math.min(lvl + cost, rate * UNIT)
  end
  levels[i], lasts[i], rates[i] = lvl, last, rate
end

-- (Never with the probe: its backend is just out of a cooldown.)
local granted = {}
grant = grant and asked and probe == 0
for i = 1, n do
  granted[i] = 0
  if grant then
    granted[i] = tonumber(ARGV[7 + 3 * (i - 1)])
    levels[i] = levels[i] - granted[i] * UNIT
  end
end

local extra = {}
for i = 1, n do
  local key = KEYS[2 + i]
  redis.call('HSET', key, 'l', int(levels[i]), 't', int(lasts[i]), 'r', int(rates[i]))
  -- Expire once it would be full again (plus a second): a missing bucket is a full one.
  redis.call('PEXPIRE', key, int(math.ceil(wait_us(rates[i] * UNIT - levels[i], rates[i]) / 1000) + 1000))
  extra[i] = math.floor(levels[i] / UNIT)
end
if mode ~= 'take' then return reply(6, 0, extra) end
for i = 1, n do extra[n + i] = granted[i] end

if probe == 1 then
  redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[3], 'PX', ARGV[4])
end
return reply(probe, 0, extra)
