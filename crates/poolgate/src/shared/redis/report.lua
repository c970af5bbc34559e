-- poolgate report v1
-- Feeds one event into a backend's shared cooldown, atomically, and publishes the new state when
-- it changed. The rules are those of crates/poolgate/src/cooldown (CooldownState::record):
-- deadlines are absolute and only ever move later; a 429 while a cooldown runs belongs to the same
-- episode (the level does not rise, only an explicit Retry-After may lengthen it); a success ends
-- a cooldown only once it has expired; 401/403 break the backend until a success or a reset.
-- Changing what this script does or returns: rename it to v2 (see admit.lua).
--
-- KEYS[1] cooldown hash   KEYS[2] probe slot
-- ARGV[1] event: 'ok' | '429' | '5xx' | 'auth' | 'reset' | 'release' | 'sync'
-- ARGV[2] probe token held by the reporter ('' = none): the slot is freed if it still holds it
-- ARGV[3] Retry-After ms (-1 = none)   ARGV[4] base ms   ARGV[5] max ms
-- ARGV[6] jitter sample in [0, 1] (drawn by the caller)   ARGV[7] error cooldown ms
-- ARGV[8] channel   ARGV[9] backend id (for the message)
-- ARGV[10] sync: ms left of the reporter's own cooldown (-1 none)   ARGV[11] sync: broken 0/1
--
-- Reply: {changed 0/1, now_ms, until_ms (-1 none), level, broken, seq, reason}
-- reason: 0 none, 1 rate limited, 2 server error, 3 authentication failed
-- Message: 'v1 <seq> <now_ms> <until_ms> <level> <broken> <reason> <backend id>'

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local cd = redis.call('HMGET', KEYS[1], 'until', 'level', 'broken', 'seq', 'reason')
local until_ms = tonumber(cd[1]) or -1
local level = tonumber(cd[2]) or 0
local broken = tonumber(cd[3]) or 0
local seq = tonumber(cd[4]) or 0
local reason = tonumber(cd[5]) or 0
local before = until_ms .. ':' .. level .. ':' .. broken .. ':' .. reason

local event = ARGV[1]
local retry_after = tonumber(ARGV[3])
local base, max = tonumber(ARGV[4]), tonumber(ARGV[5])
local sample, error_ms = tonumber(ARGV[6]), tonumber(ARGV[7])

if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end

local running = until_ms >= 0 and now_ms < until_ms

-- until = max(until, now + d): a cooldown is never shortened. Returns whether it moved.
local function extend(d)
  local finish = now_ms + d
  if until_ms >= 0 and until_ms >= finish then return false end
  until_ms = finish
  return true
end

local function jitter(d)
  return d + math.floor(d * sample)
end

-- max(retry_after, base * 2^(count-1)) capped at max.
local function rate_limit_delay(count)
  local backoff = base
  for _ = 2, count do
    if backoff >= max or backoff == 0 then break end
    backoff = backoff * 2
  end
  if retry_after > backoff then backoff = retry_after end
  if backoff > max then backoff = max end
  return backoff
end

if event == 'ok' then
  broken = 0
  if not running then level, until_ms, reason = 0, -1, 0 end
elseif event == '429' then
  local delay
  if running then
    delay = 0
    if retry_after >= 0 then delay = math.min(retry_after, max) end
  else
    level = level + 1
    delay = rate_limit_delay(level)
  end
  if extend(jitter(delay)) then reason = 1 end
elseif event == '5xx' then
  if extend(jitter(error_ms)) then reason = 2 end
elseif event == 'auth' then
  broken, reason = 1, 3
elseif event == 'reset' then
  level, until_ms, broken, reason = 0, -1, 0, 0
  redis.call('DEL', KEYS[2])
elseif event == 'sync' then
  local left = tonumber(ARGV[10])
  if left >= 0 and extend(left) and reason == 0 then reason = 1 end
  if tonumber(ARGV[11]) == 1 then broken, reason = 1, 3 end
end

local changed = 0
if until_ms .. ':' .. level .. ':' .. broken .. ':' .. reason ~= before then
  changed = 1
  -- Only ever grows, even across a Redis restart that lost the hash (the clock moves on).
  seq = math.max(seq + 1, now_ms)
  local function int(x) return string.format('%d', x) end
  redis.call('HSET', KEYS[1], 'until', int(until_ms), 'level', int(level), 'broken', broken,
    'seq', int(seq), 'reason', reason)
  -- %d: Lua's own number-to-string conversion switches to exponents past 14 digits.
  redis.call('PUBLISH', ARGV[8], string.format('v1 %d %d %d %d %d %d %s',
    seq, now_ms, until_ms, level, broken, reason, ARGV[9]))
end
return {changed, now_ms, until_ms, level, broken, seq, reason}
