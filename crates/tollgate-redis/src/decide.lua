-- tollgate: one rate-limit decision over every bucket of a request, in one call.
--
-- This mirrors tollgate-core's algorithm.rs and MemoryStore::apply_now step by step; the
-- Rust side (script.rs) documents the argument and reply layout. All numbers are integers
-- below 2^53 (microseconds since the epoch, counts), which Lua's doubles hold exactly;
-- numbers become strings only through num() (tostring or `..` alone would print
-- 1.7e+15 for a timestamp).
--
-- KEYS[i]: the bucket's key. ARGV[1]: the op (0 charge, 1 peek, 2 refund, 3 penalize,
-- 4 reset). Then five numbers per bucket: algorithm (1 segmented sliding window, 2 sliding
-- log, 3 token bucket, 4 fixed window), segments k (sliding window, else 0), capacity,
-- unit (segment length / period / emission interval, in microseconds), cost.
-- Reply: { allowed, now, then per bucket: fit (0 now, 1 after, 2 never), wait, remaining,
-- reset_after }.

local CHARGE, PEEK, REFUND, PENALIZE, RESET = 0, 1, 2, 3, 4
local SLIDING, LOG, TAT, FIXED = 1, 2, 3, 4

local floor, max, min = math.floor, math.max, math.min
local fmt = string.format

-- The largest number kept or replied: 2^53, where algorithm.rs saturates at u64::MAX. A
-- penalty can push a count or a token bucket's time past it (cost 2^53 times a day's
-- emission interval); unbounded, the double would lose integers, the reply would wrap
-- negative and the expiry would be out of Redis's range.
local LIM = 9007199254740992

local function sat(x)
  return min(x, LIM)
end

-- A number as decimal digits. Below 10^14, Lua's own conversion (%.14g) prints an integer
-- exactly, and is cheaper than a call to string.format.
local function num(x)
  if x < 1e14 then
    return x
  end
  return fmt('%.0f', x)
end

-- Integer division and remainder. For integers a and b with |a| < 2^53, the rounding of
-- a / b can never cross an integer (it is off by less than 1/b), so floor(a / b) is exact,
-- and so is Lua's a % b (a - floor(a / b) * b, non-negative for b > 0).
local function idiv(a, b)
  return floor(a / b)
end

local function cdiv(a, b)
  local q = floor(a / b)
  if q * b < a then
    q = q + 1
  end
  return q
end

local op = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local n = #KEYS
local B = {}
for i = 1, n do
  local o = 1 + (i - 1) * 5
  B[i] = {
    key = KEYS[i],
    alg = tonumber(ARGV[o + 1]),
    k = tonumber(ARGV[o + 2]),
    cap = tonumber(ARGV[o + 3]),
    unit = tonumber(ARGV[o + 4]),
    cost = tonumber(ARGV[o + 5]),
  }
end

-- Log entries live in a hash: fields h (oldest index), n (next index), t (total), u (the
-- window its expiry was set by) and one field per entry index holding "<at> <cost>". Entries are read lazily and written back
-- at the end.
local function log_get(st, i)
  local e = st.E[i]
  if e == nil then
    local v = redis.call('HGET', st.key, num(i))
    local at, c = string.match(v, '^(%d+) (%d+)$')
    e = { at = tonumber(at), c = tonumber(c) }
    st.E[i] = e
  end
  return e
end

local function log_set(st, i, e)
  st.E[i] = e
  st.M[i] = true
end

local function log_del(st, i)
  st.E[i] = false
  st.M[i] = true
end

local function fresh(b)
  if b.alg == SLIDING then
    local c = {}
    for i = 1, b.k + 1 do
      c[i] = 0
    end
    return { a = SLIDING, k = b.k, unit = b.unit, head = idiv(now, b.unit), c = c }
  elseif b.alg == LOG then
    return { a = LOG, key = b.key, h = 0, n = 0, t = 0, u = b.unit, E = {}, M = {} }
  elseif b.alg == TAT then
    return { a = TAT, tat = 0 }
  else
    return { a = FIXED, unit = b.unit, w = idiv(now, b.unit), u = 0 }
  end
end

-- A sliding window is stored as S<k>:<unit>:<head>:<counts>, the counts from the head
-- segment backwards with trailing zeros left out (usually one or two numbers).
local function decode(v)
  local tag = string.sub(v, 1, 1)
  if tag == 'S' then
    local k, unit, head, counts = string.match(v, '^S(%d+):(%d+):(%d+):(.*)$')
    if k then
      k, head = tonumber(k), tonumber(head)
      local ring = k + 1
      local c = {}
      for i = 1, ring do
        c[i] = 0
      end
      local back = 0
      for x in string.gmatch(counts, '%d+') do
        if back >= ring then
          return { a = 0 }
        end
        c[(head - back) % ring + 1] = tonumber(x)
        back = back + 1
      end
      return { a = SLIDING, k = k, unit = tonumber(unit), head = head, c = c }
    end
  elseif tag == 'T' then
    local tat = string.match(v, '^T(%d+)$')
    if tat then
      return { a = TAT, tat = sat(tonumber(tat)) }
    end
  elseif tag == 'F' then
    local unit, w, u = string.match(v, '^F(%d+):(%d+):(%d+)$')
    if w then
      return { a = FIXED, unit = tonumber(unit), w = tonumber(w), u = tonumber(u) }
    end
  end
  return { a = 0 }
end

local function encode(st)
  if st.a == SLIDING then
    local ring = #st.c
    local parts = {}
    local last = 0
    for back = 0, ring - 1 do
      local x = st.c[(st.head - back) % ring + 1]
      parts[back + 1] = num(x)
      if x ~= 0 then
        last = back + 1
      end
    end
    return 'S' .. num(st.k) .. ':' .. num(st.unit) .. ':' .. num(st.head) .. ':'
      .. table.concat(parts, ',', 1, last)
  elseif st.a == TAT then
    return 'T' .. num(st.tat)
  else
    return 'F' .. num(st.unit) .. ':' .. num(st.w) .. ':' .. num(st.u)
  end
end

-- The keys touched: S[key] = { st = state or nil (absent), dirty, replace, exp }.
local S = {}

local function load(b)
  local e = S[b.key]
  if e then
    return e
  end
  e = { dirty = false, replace = false }
  if b.alg == LOG then
    local r = redis.pcall('HMGET', b.key, 'h', 'n', 't', 'u')
    if r.err then
      e.st = { a = 0 } -- a string: another algorithm's state
    elseif r[1] then
      e.st = { a = LOG, key = b.key, h = tonumber(r[1]), n = tonumber(r[2]), t = tonumber(r[3]),
        u = tonumber(r[4]) or 0, E = {}, M = {} }
    end
  else
    local v = redis.pcall('GET', b.key)
    if type(v) == 'table' and v.err then
      e.st = { a = 0 } -- a hash: a log's state
    elseif v then
      e.st = decode(v)
    end
  end
  S[b.key] = e
  return e
end

-- Whether a stored state belongs to this bucket's limit. Unlike algorithm.rs, a sliding or
-- fixed window whose length changed also starts afresh: its window indices were counted in
-- the old unit (and Redis may already have expired the key by the old limit's clock, so
-- reinterpreting the old state could not be mirrored anyway).
local function fits_algorithm(st, b)
  if st.a ~= b.alg then
    return false
  end
  if st.a == SLIDING then
    return st.k == b.k and st.unit == b.unit
  elseif st.a == FIXED then
    return st.unit == b.unit
  end
  return true
end

-- Brings the state up to now: drops what has aged out of the window. Returns true if that
-- must be written back: a log's entries aged out by this limit's window may still count for
-- another limit of the same key with a longer window (the memory store keeps what advance
-- did even when nothing is charged). The windows' counters are the same however often they
-- are advanced.
local function advance(st, b)
  local popped = false
  if st.a == SLIDING then
    local cur = idiv(now, b.unit)
    if cur > st.head then
      local ring = #st.c
      if cur - st.head >= ring then
        for i = 1, ring do
          st.c[i] = 0
        end
      else
        for i = st.head + 1, cur do
          st.c[i % ring + 1] = 0
        end
      end
      st.head = cur
    end
  elseif st.a == LOG then
    while st.h < st.n do
      local e = log_get(st, st.h)
      if e.at + b.unit > now then
        break
      end
      log_del(st, st.h)
      st.t = st.t - e.c
      st.h = st.h + 1
      popped = true
    end
  elseif st.a == FIXED then
    local cur = idiv(now, b.unit)
    if cur > st.w then
      st.w = cur
      st.u = 0
    end
  end
  return popped
end

local function used(st, b)
  if st.a == SLIDING then
    local s = 0
    for i = 1, #st.c do
      s = s + st.c[i]
    end
    return s
  elseif st.a == LOG then
    return st.t
  elseif st.a == TAT then
    return cdiv(max(st.tat - now, 0), b.unit)
  else
    return st.u
  end
end

-- Returns fit (0 now, 1 after, 2 never) and the wait.
local function fit(st, b)
  local cost, cap = b.cost, b.cap
  if cost > cap then
    return 2, 0
  end
  local wait
  if st.a == SLIDING then
    local need = used(st, b) + cost - cap
    if need <= 0 then
      return 0, 0
    end
    local ring = #st.c
    local seg = b.unit
    local oldest = max(st.head - (ring - 1), 0)
    local freed = 0
    local leaves = (st.head + ring) * seg
    for j = oldest, st.head do
      freed = freed + st.c[j % ring + 1]
      if freed >= need then
        leaves = (j + ring) * seg
        break
      end
    end
    wait = max(leaves - now, 0)
  elseif st.a == LOG then
    local need = st.t + cost - cap
    if need <= 0 then
      return 0, 0
    end
    local freed = 0
    local leaves = now + b.unit
    for i = st.h, st.n - 1 do
      local e = log_get(st, i)
      freed = freed + e.c
      if freed >= need then
        leaves = e.at + b.unit
        break
      end
    end
    wait = max(leaves - now, 0)
  elseif st.a == TAT then
    local new_tat = sat(max(st.tat, now) + cost * b.unit)
    wait = max(new_tat - now - cap * b.unit, 0)
  else
    if st.u + cost <= cap then
      return 0, 0
    end
    wait = max((st.w + 1) * b.unit - now, 0)
  end
  if wait == 0 then
    return 0, 0
  end
  return 1, wait
end

local function add(st, b)
  local cost = b.cost
  if st.a == SLIDING then
    local i = st.head % #st.c + 1
    st.c[i] = sat(st.c[i] + cost)
  elseif st.a == LOG then
    local last = nil
    if st.n > st.h then
      last = log_get(st, st.n - 1)
    end
    if last and max(last.at, now) == last.at then
      log_set(st, st.n - 1, { at = last.at, c = sat(last.c + cost) })
    else
      local at = now
      if last then
        at = max(last.at, now)
      end
      log_set(st, st.n, { at = at, c = cost })
      st.n = st.n + 1
    end
    st.t = sat(st.t + cost)
  elseif st.a == TAT then
    st.tat = sat(max(st.tat, now) + cost * b.unit)
  else
    st.u = sat(st.u + cost)
  end
end

local function sub(st, b)
  local cost = b.cost
  if st.a == SLIDING then
    local ring = #st.c
    local left = cost
    for back = 0, ring - 1 do
      local j = st.head - back
      if j < 0 then
        break
      end
      local i = j % ring + 1
      local take = min(st.c[i], left)
      st.c[i] = st.c[i] - take
      left = left - take
      if left == 0 then
        break
      end
    end
  elseif st.a == LOG then
    local left = cost
    while left > 0 and st.n > st.h do
      local e = log_get(st, st.n - 1)
      local take = min(e.c, left)
      st.t = st.t - take
      left = left - take
      if e.c - take == 0 then
        log_del(st, st.n - 1)
        st.n = st.n - 1
      else
        log_set(st, st.n - 1, { at = e.at, c = e.c - take })
      end
    end
  elseif st.a == TAT then
    local back = cost * b.unit
    st.tat = max(max(st.tat - back, 0), min(now, st.tat))
  else
    st.u = max(st.u - cost, 0)
  end
end

-- When the state is back to fresh (0 if it is already).
local function expires_at(st, b)
  if st.a == SLIDING then
    local ring = #st.c
    for back = 0, ring - 1 do
      local j = st.head - back
      if j < 0 then
        break
      end
      if st.c[j % ring + 1] > 0 then
        return (j + ring) * b.unit
      end
    end
    return 0
  elseif st.a == LOG then
    if st.n > st.h then
      return log_get(st, st.n - 1).at + b.unit
    end
    return 0
  elseif st.a == TAT then
    return st.tat
  else
    if st.u == 0 then
      return 0
    end
    return (st.w + 1) * b.unit
  end
end

local out = { 0, now }

local function report(st, b, f, w)
  out[#out + 1] = f
  out[#out + 1] = sat(w)
  out[#out + 1] = max(b.cap - used(st, b), 0)
  out[#out + 1] = sat(max(expires_at(st, b) - now, 0))
end

-- Brings a present state up to now; a state of another limit starts afresh. A log keeps
-- its entries under another window (as algorithm.rs does), so its expiry, set by the old
-- window, is written again by this one even if nothing else changes.
local function catch_up(e, b)
  if not fits_algorithm(e.st, b) then
    e.st = fresh(b)
    e.dirty = true
    e.replace = true
  elseif e.st.a == LOG and e.st.u ~= b.unit then
    e.st.u = b.unit
    e.dirty = true
  end
  if advance(e.st, b) then
    e.dirty = true
  end
end

-- A charge of several buckets first sees whether every cost fits, and changes a bucket only
-- if all do. Any other call decides each bucket on its own.
local multi = op == CHARGE and n > 1
local F, W = {}, {}
local all = true
if multi then
  for i = 1, n do
    local b = B[i]
    local e = load(b)
    if e.st then
      catch_up(e, b)
      F[i], W[i] = fit(e.st, b)
    else
      F[i], W[i] = fit(fresh(b), b)
    end
    if F[i] ~= 0 then
      all = false
    end
  end
end

local allowed = true
for i = 1, n do
  local b = B[i]
  local e = load(b)
  local f, w = 0, 0
  if op == RESET then
    if e.st then
      e.st = nil
      e.dirty = true
      e.replace = true
    end
    report(fresh(b), b, 0, 0)
  else
    local present = e.st ~= nil
    local st
    if present then
      catch_up(e, b)
      st = e.st
    else
      st = fresh(b)
    end
    local changes = true
    if op == CHARGE then
      if multi then
        f, w, changes = F[i], W[i], all
      else
        f, w = fit(st, b)
        changes = f == 0
      end
    elseif op == PEEK then
      f, w = fit(st, b)
      changes = false
    end
    if present then
      if changes then
        if op == REFUND then
          sub(st, b)
        elseif op ~= PEEK then
          add(st, b)
        end
        e.dirty = true
      end
      report(st, b, f, w)
      e.exp = expires_at(st, b)
      if e.exp <= now then
        e.st = nil
        e.dirty = true
        e.replace = true
      end
    elseif changes and (op == CHARGE or op == PENALIZE) then
      add(st, b)
      report(st, b, f, w)
      local exp = expires_at(st, b)
      if exp > now then
        e.st = st
        e.exp = exp
        e.dirty = true
      end
    else
      -- Nothing to remember: a refusal or a peek of a fresh key, or a refund of nothing.
      report(st, b, f, w)
    end
  end
  if f ~= 0 then
    allowed = false
  end
end

-- Write back what changed; every written key expires when its state is back to fresh.
for key, e in pairs(S) do
  if e.dirty then
    local st = e.st
    if not st then
      redis.call('DEL', key)
    else
      local at = num(cdiv(sat(e.exp), 1000))
      if st.a == LOG then
        if e.replace then
          redis.call('DEL', key)
        end
        local set = { 'HSET', key, 'h', num(st.h), 'n', num(st.n), 't', num(st.t), 'u', num(st.u) }
        local del = { 'HDEL', key }
        for i, modified in pairs(st.M) do
          if modified then
            local v = st.E[i]
            if v then
              set[#set + 1] = num(i)
              set[#set + 1] = num(v.at) .. ' ' .. num(v.c)
            elseif not e.replace then
              del[#del + 1] = num(i)
              if #del >= 1002 then
                -- unpack is limited to a few thousand values
                redis.call(unpack(del))
                del = { 'HDEL', key }
              end
            end
          end
        end
        if #del > 2 then
          redis.call(unpack(del))
        end
        redis.call(unpack(set))
        redis.call('PEXPIREAT', key, at)
      else
        redis.call('SET', key, encode(st), 'PXAT', at)
      end
    end
  end
end

if allowed then
  out[1] = 1
end
return out
