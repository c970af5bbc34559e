-- poolgate budget v2
-- A client key's spend budget or a backend's monthly cap, atomically: (mode 'take') reserve
-- `amount` in every limited window, all or nothing; or (mode 'settle') release a reservation
-- and record the real cost; or (mode 'record') add spend made without a reservation (a capped
-- backend's call that reserved nothing); or (mode 'read') return what is spent.
-- Changing what this script does or returns: rename it to v2 (see admit.lua).
--
-- KEYS[i] one hash {spent, reserved} per window (budget:<key>:d:<yyyymmdd>, :m:<yyyymm>, :t;
-- a backend's cap: budget:backend:<id>:m:<yyyymm> in every mode), amounts in integer
-- nanodollars.
-- take:   ARGV[1] 'take'   ARGV[2] amount
--         ARGV[3 + 3(i-1)] limit of window i   ARGV[4 + 3(i-1)] the least the window's spent
--         can be (the instance's ledger: the database's figure at start-up plus spend the
--         instance settled since): a fresh Redis does not forget the month, and spend settled
--         while Redis was unreachable reaches it again
--         ARGV[5 + 3(i-1)] PEXPIREAT in Unix ms (0 = never: the total)
-- settle: ARGV[1] 'settle' ARGV[2] amount reserved   ARGV[3] real cost
--         (a window whose hash has expired since is not recreated)
-- record: ARGV[1] 'record' ARGV[2] cost (spend without a reservation: a backend's monthly cap,
--         budget:backend:<id>:m:<yyyymm>)
--         ARGV[3 + 2(i-1)] the least window i's spent can be before the cost (as for 'take')
--         ARGV[4 + 2(i-1)] PEXPIREAT in Unix ms (0 = never)
-- read:   ARGV[1] 'read' (no other arguments)
-- 'record' and 'read' were added compatibly (an older instance never sends them, and they
-- keep the hashes as 'take' and 'settle' do).
--
-- Reply: take:   {0, spent_1, reserved_1, ...} (after the reservation)
--                {i, spent_i, reserved_i} window i refused (used up, or cannot cover amount)
--        settle: {0, spent_1, ...} (after the cost; -1: the window was forgotten) — v2 (v1
--                replied {0}: the settling instance then added the cost to its own figure,
--                which raced with the figures it read meanwhile)
--        record: {0, spent_1, ...} (after the cost)
--        read:   {0, spent_1, ...} (-1: no such window)
-- Amounts stay below 2^53 (the Rust side clamps), so Lua's doubles are exact.

local function int(x) return string.format('%d', x) end

local mode = ARGV[1]
local amount = tonumber(ARGV[2])
local n = #KEYS

if mode == 'settle' then
  local cost = tonumber(ARGV[3])
  local r = {0}
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved')) or 0
      redis.call('HSET', KEYS[i], 'reserved', int(math.max(reserved - amount, 0)))
      r[#r + 1] = redis.call('HINCRBY', KEYS[i], 'spent', int(cost))
    else
      r[#r + 1] = -1
    end
  end
  return r
end

if mode == 'record' then
  local r = {0}
  for i = 1, n do
    local base = 3 + 2 * (i - 1)
    local spent = tonumber(redis.call('HGET', KEYS[i], 'spent')) or 0
    spent = math.max(spent, tonumber(ARGV[base])) + amount
    redis.call('HSET', KEYS[i], 'spent', int(spent))
    if tonumber(ARGV[base + 1]) > 0 then redis.call('PEXPIREAT', KEYS[i], ARGV[base + 1]) end
    r[#r + 1] = spent
  end
  return r
end

if mode == 'read' then
  local r = {0}
  for i = 1, n do
    r[#r + 1] = tonumber(redis.call('HGET', KEYS[i], 'spent')) or -1
  end
  return r
end

local spent, reserved = {}, {}
for i = 1, n do
  local base = 3 + 3 * (i - 1)
  local limit = tonumber(ARGV[base])
  local h = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  spent[i] = tonumber(h[1]) or 0
  reserved[i] = tonumber(h[2]) or 0
  local seed = tonumber(ARGV[base + 1])
  if h[1] == false or seed > spent[i] then
    spent[i] = seed
    redis.call('HSET', KEYS[i], 'spent', int(seed))
  end
  local used = spent[i] + reserved[i]
  local expire_at = tonumber(ARGV[base + 2])
  if expire_at > 0 then redis.call('PEXPIREAT', KEYS[i], ARGV[base + 2]) end
  if used >= limit or used + amount > limit then
    return {i, spent[i], reserved[i]}
  end
end

local r = {0}
for i = 1, n do
  reserved[i] = reserved[i] + amount
  redis.call('HSET', KEYS[i], 'reserved', int(reserved[i]))
  r[#r + 1] = spent[i]
  r[#r + 1] = reserved[i]
end
return r
