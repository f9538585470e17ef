-- tollgate: one rate-limit decision over every bucket of a request, in one call.
--
-- This mirrors tollgate-limits' algorithm.rs and MemoryStore::apply_now; script.rs documents
-- the arguments and the reply. It is written for the server's time per call: no function is
-- defined (each would be a closure created on every call), and a charge dispatches first on
-- bucket count and algorithm to a straight path of its own: one token bucket (TIME, GET,
-- SET), one or several sliding windows (TIME, then GET each key, SET each if all fit). A
-- charge of one fixed window is not sent here but to fixed.lua (INCRBY-shaped). Everything
-- else (other operations, exact logs, several buckets of other algorithms, fixed windows
-- among others, keys in an older format) runs the general path, which reads each key once.
--
-- Numbers are integers below 2^53 (microseconds since the epoch, counts), which Lua's doubles
-- hold exactly; a / b floored or ceiled is exact for such integers. Lua prints a number
-- exactly only below 10^14 (`..` uses %.14g), so the log's entries go through string.format;
-- numbers passed to redis.call are printed exactly by Redis itself.
--
-- KEYS[i]: the bucket's key (a fixed window's: the bucket's key and ':<window index>').
-- ARGV[1]: the operation ('0' charge, '1' peek, '2' refund, newest counts first, or
-- '2:<microseconds>' refund of the charge answered then, '3' penalize, '4' reset, '5'
-- restore: raise each key to at least its cost counted, see below; '6' give-back: add
-- each cost, placed as a restore places what it adds). Then
-- six per bucket: algorithm ('1' sliding window, '2' sliding log, '3' token bucket, '4' fixed
-- window), capacity, cost, unit (segment length, window or emission interval in
-- microseconds; for a fixed window, when its key expires, in Unix ms), window
-- (microseconds), and the sliding window's shape tag "<k>:<segment length>|" (for a fixed
-- window, '-' if the bucket's key in the format before window keys must not be read: it is
-- on another Redis Cluster slot; anything for the others). Then, if a bucket is a fixed
-- window, the instance's clock (microseconds), which placed its window: the call is
-- decided by it instead of TIME. A restore or a give-back sends, before that clock, one
-- more number per bucket: in how many microseconds the count it places is fresh again.
--
-- Restore (after a Redis that restarted empty; one call, so instances restoring at once
-- raise a key to the larger of their counts, never to their sum): a key that counts less
-- than the bucket's cost is raised to it, the difference placed as late as its freshness
-- allows, as MemoryStore::mirror places a count: a sliding window's or a log's at the
-- admission that leaves the window when it is fresh again (a log's no earlier than its
-- newest entry), a token bucket's TAT that far ahead (at most the count's worth), a fixed
-- window's count in the current window (`raise`).
--
-- Another shape's state (instances of a fleet that disagree on a limit, during a rolling
-- deploy or after a reload on one of them: a token bucket against a sliding window, two
-- sliding windows' shapes, a window against an exact log) is not dropped: what it still
-- counts under its own limit, and when it is fresh again (`carried`: a sliding window's
-- segments that still count under its tag's k and segment length, its window taken as k
-- segments; a token bucket's '<tat>:<T>' as ceil((tat - now) / T) tokens fresh at tat; a
-- log's total, fresh when its newest entry leaves its window, or for a log that did not
-- record its window, when its key expires less the slack), carries over: it is placed in
-- this bucket's state as a restore places its count, fresh no sooner than this bucket's
-- window from now (as if admitted now: placed to leave when the other state is fresh, a
-- count of a shorter window would leave this one early, and alternating calls could then
-- admit more than either limit in this one's window), and the call is decided on that. If
-- the other state's window is shorter than this one's (a token bucket's: until it is fresh)
-- and this shape so placed counts at least as much as it until it is fresh (a token
-- bucket's TAT far enough ahead), any call but a look writes the key in this shape, refused
-- or not (left as it was, the count would leave with the other state, and the client have
-- this window's quota again). Otherwise the key is written in this bucket's shape only by a
-- call that changes it (a refusal or a peek leaves the other state as it is, but for what
-- the key's own shape rewrites on a look: a log read under another window, a token bucket's
-- TAT read in another interval), so alternating calls of two shapes admit at most what the
-- looser limit does in its window; a call refused on it is told to wait until enough of it
-- leaves for the cost to fit, and that the bucket is full again when all of it has: until
-- then each call places it anew. A token bucket's TAT without its interval ('<tat>',
-- 'T<tat>') and a fixed window's count in the bucket's own key ('-<used>', 'F...') do not
-- say what they count in another shape and are not carried. Fixed windows count in keys of
-- their own: a fixed window and another algorithm are two counters. Only the general path
-- does any of this: the fast paths take a key holding another shape's state there,
-- unchanged.
--
-- Reply: { now, then per bucket: wait (0 fits, -1 never fits, else microseconds), remaining,
-- reset_after (microseconds) }.
--
-- Stored values (strings; a log is a hash):
--   sliding window  <k>:<s>| then 19 bytes per segment that still counts, newest first:
--                   struct '>I6I7I6', its index (now / s when it counted), its count, and
--                   the time of its last admission minus the segment's start. Binary,
--                   because Lua prints a number with sprintf (about 0.5 us) and parses one
--                   in about as long, where struct packs or unpacks three at once in 0.2 us.
--                   The text tag tells another shape's state (a limit whose window or
--                   segments changed): what that counts carries over (see above).
--   token bucket    <tat>:<T>            the theoretical arrival time, and the emission
--                                        interval (microseconds) it was worked out with: a
--                                        TAT read in another interval (the sustained rate
--                                        changed) is converted, what it counts in tokens
--                                        carrying over, and written back at once
--   fixed window    <used>               the count, in the window's own key (its name tells
--                                        the window), written by fixed.lua too
--   sliding log     hash: h (oldest index), n (next index), t (total), u (the window its
--                   expiry was set by), and one field per entry index holding "<at> <cost>".
--                   The total and each entry saturate at 2^53: a saturated total is
--                   recounted from the entries left when entries go (a refund, or entries
--                   leaving the window), as the memory store recounts one.
-- Every key expires a second after its state is fresh again (see `slack`).
-- The format written before 0.2 ('S<k>:<s>:<head>:<counts>', 'T<tat>', 'F<p>:<w>:<used>')
-- is still read, on the general path, and so is a token bucket's '<tat>' alone (before its
-- interval was stored), read in the call's interval as it always was; a sliding window's old counts are taken as admitted at
-- the end of their segment (or now, if that is later), so they never count for less long
-- than they used to. A fixed window's count in the bucket's own key ('-<used>', expiring
-- when its window ends, written before window keys; or 'F...') is carried into the window's
-- key when that is first written, by either script.

local op = ARGV[1]
-- A refund of the charge answered at a time ('2:<microseconds>'): given back from what that
-- charge counted, and only from there (see the refunds below); '2' alone gives back the
-- newest counts first.
local AT
if string.sub(op, 1, 2) == '2:' then
  AT = tonumber(string.sub(op, 3))
  op = '2'
end
-- A restore ('5') raises counts placed by their freshness; a give-back ('6': what a
-- fallback admitted while Redis failed) adds them, placed as a restore places them. Both
-- send one more number per bucket.
local restore, adds = op == '5' or op == '6', op == '6'
local now
-- Keys outlive their state by a second (ms): a request with a fixed window is decided on
-- the instance's clock, and an instance whose clock runs behind the server's by less must
-- not find a key gone that still counts. (A key that outlives its state reads as fresh.)
local slack = 1000
-- What turns a time on `now`'s clock into one on the server's (ms): 0 unless `now` is the
-- instance's. Every expiry is worked out on `now`'s clock and written as a time on the
-- server's: an instance whose clock runs behind would otherwise set expiries already past,
-- and Redis would drop every key it writes at once (no limit at all).
local shift = 0
local t = redis.call('TIME')
now = t[1] * 1000000 + t[2]
if #ARGV > #KEYS * (restore and 7 or 6) + 1 then
  local server = now
  now = tonumber(ARGV[#ARGV]) -- a request with a fixed window: the instance's clock
  shift = math.floor((server - now) / 1000)
  slack = slack + shift
end
local LIM = 9007199254740992 -- 2^53: counts and times saturate here (u64::MAX in memory)

-- A token bucket's value '<tat>:<T>': the TAT (a number) and the interval it was worked out
-- with (as text); nil for any other value. (A plain find: cheaper than a pattern. Another
-- state's text never has digits alone after its first ':'.)
local function read_tat(v)
  if type(v) ~= 'string' then
    return nil
  end
  local c = string.find(v, ':', 1, true)
  if not c then
    return nil
  end
  local t, u = tonumber(string.sub(v, 1, c - 1)), string.sub(v, c + 1)
  if t and tonumber(u) then
    return t, u
  end
end

-- The value of a token bucket whose TAT is `tat`, worked out with interval `T` (text).
local function tat_value(tat, T)
  return string.format('%.0f:', tat) .. T
end

if op == '0' then
  local n, alg = #KEYS, ARGV[2]
  if n == 1 and alg == '3' then
    -- One token bucket, charged: GCRA, if its key is absent or holds a TAT worked out with
    -- this interval. Anything else (another interval, an older format, another algorithm's
    -- state) takes the general path.
    local key = KEYS[1]
    local v = redis.pcall('GET', key)
    local tat = 0
    if v then
      local t, u = read_tat(v)
      tat = u == ARGV[5] and t
    end
    if tat then
      local cap, cost, T = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
      local ahead = tat > now and tat - now or 0
      if cost > cap then
        if v and ahead == 0 then
          redis.call('DEL', key)
        end
        return { now, -1, math.max(cap - math.ceil(ahead / T), 0), ahead }
      end
      local new = (tat > now and tat or now) + cost * T
      if new > LIM then
        new = LIM
      end
      local wait = new - now - cap * T
      if wait > 0 then
        return { now, wait, math.max(cap - math.ceil(ahead / T), 0), ahead }
      end
      redis.call('SET', key, tat_value(new, ARGV[5]), 'PXAT', math.ceil(new / 1000) + slack)
      return { now, 0, math.max(cap - math.ceil((new - now) / T), 0), new - now }
    end
  else
    -- Sliding windows charged, one or several (IP + user): each key read once, and written
    -- once if every bucket fits. Any other algorithm, or a key in another format, takes the
    -- general path (nothing has been written then).
    local fast = true
    for i = 1, n do
      if ARGV[i * 6 - 4] ~= '1' then
        fast = false
        break
      end
    end
    if fast then
      local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
      local find, sub, pack, read = string.find, string.sub, struct.pack, struct.unpack
      local out = n == 1 and { now, 0, 0, 0 } or n == 2 and { now, 0, 0, 0, 0, 0, 0 } or { now }
      -- What the buckets before the last write and answer if all fit: value, expiry (ms),
      -- remaining, reset.
      local put = n == 2 and { false, false, false, false } or n > 2 and {}
      local fits, gone = true, false
      for i = 1, n do
        local o = i * 6 - 5
        local key, tag = KEYS[i], ARGV[o + 6]
        local v = redis.pcall('GET', key)
        local p = #tag + 1
        if v and (v.err or find(v, tag, 1, true) ~= 1 or (#v - p + 1) % 19 ~= 0) then
          fast = false
          break
        end
        local cap, cost, s, W = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
        local cur = floor(now / s)
        -- One pass over the stored segments, newest first, ended by the first that no longer
        -- counts (older ones count even less): the newest that counts (j0, c0, l0), what
        -- counts, when enough of it leaves for the cost to fit (cross), and the older
        -- segments that count, v[q, e).
        local j0, c0, l0 = false, 0, 0
        local used, cross = 0, 0
        local q, e = p, p
        local R = cap - cost
        if v and #v > p then
          local j, c, so, nx = read('>I6I7I6', v, p)
          local low = (j > cur and j or cur) - ceil(W / s) -- older segments left the ring
          local last = j * s + so
          if j >= low and last + W > now then
            j0, c0, l0 = j, c, last
            used = c
            if used > R then
              cross = last
            end
            q, e = nx, nx
            local len = #v
            while e <= len do
              j, c, so, nx = read('>I6I7I6', v, e)
              last = j * s + so
              if j < low or last + W <= now then
                break
              end
              local y = used + c
              if y > R and used <= R then
                cross = last
              end
              used = y
              e = nx
            end
          end
        end
        local wait = 0
        if cost > cap then
          wait, fits = -1, false
        elseif used > R then
          wait, fits = min(cross + W - now, LIM), false
        end
        local x = i * 3 - 1
        if fits then
          -- What this bucket stores if all fit.
          local H = cur
          if j0 and j0 > H then
            H = j0
          end
          local start = H * s
          local last, value
          if j0 == H then
            last = l0 > now and l0 or now
            if e > q then
              value = tag .. pack('>I6I7I6', H, min(c0 + cost, LIM), last - start) .. sub(v, q, e - 1)
            else
              value = tag .. pack('>I6I7I6', H, min(c0 + cost, LIM), last - start)
            end
          else
            last = now > start and now or start
            if j0 then
              value = tag .. pack('>I6I7I6', H, cost, last - start) .. sub(v, p, e - 1)
            else
              value = tag .. pack('>I6I7I6', H, cost, last - start)
            end
          end
          if i == n then
            -- Every bucket fits: all are written.
            for b = 1, n - 1 do
              local y, z = b * 4 - 3, b * 3
              redis.call('SET', KEYS[b], put[y], 'PXAT', put[y + 1])
              out[z - 1], out[z], out[z + 1] = 0, put[y + 2], put[y + 3]
            end
            redis.call('SET', key, value, 'PXAT', ceil((last + W) / 1000) + slack)
            out[x], out[x + 1], out[x + 2] = 0, max(cap - min(used + cost, LIM), 0), last + W - now
            return out
          end
          local y = i * 4 - 3
          put[y], put[y + 1] = value, ceil((last + W) / 1000) + slack
          put[y + 2], put[y + 3] = max(cap - min(used + cost, LIM), 0), last + W - now
        end
        -- This bucket's answer if some bucket does not fit.
        out[x], out[x + 1], out[x + 2] = wait, max(cap - used, 0), j0 and l0 + W - now or 0
        if v and not j0 then
          -- Nothing counts any more: a refusal drops the key, as the memory store does.
          gone = gone or {}
          gone[#gone + 1] = key
        end
      end
      if fast then
        if gone then
          redis.call('DEL', unpack(gone))
        end
        return out
      end
    end
  end
end

-- The general path: any operation, any number of buckets, any algorithm, any stored format.

local n = #KEYS
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
local find, sub, match, gmatch, fmt = string.find, string.sub, string.match, string.gmatch, string.format
local out = { now }

-- When the fixed window of `W` µs that holds `now` ends.
local function window_close(W)
  return (floor(now / W) + 1) * W
end

if op == '4' then
  -- Reset: every key goes; each bucket is reported fresh.
  redis.call('DEL', unpack(KEYS))
  for i = 1, n do
    if ARGV[i * 6 - 4] == '4' and ARGV[i * 6 + 1] ~= '-' then
      -- A fixed window's count in the format before goes too.
      local old = match(KEYS[i], '^(.*):%d+$')
      local ov = redis.pcall('GET', old)
      if type(ov) == 'string' and (find(ov, '-', 1, true) == 1 or find(ov, 'F', 1, true) == 1) then
        redis.call('DEL', old)
      end
    end
    out[#out + 1] = 0
    out[#out + 1] = tonumber(ARGV[i * 6 - 3])
    if ARGV[i * 6 - 4] == '4' then
      -- A fixed window resets at its end, whether or not it counts anything.
      out[#out + 1] = window_close(tonumber(ARGV[i * 6])) - now
    else
      out[#out + 1] = 0
    end
  end
  return out
end

-- Per bucket: whether the key held anything (PR), whether that was another limit's state
-- (RP), the state (X, Y: see each algorithm), the fit (FT), whether a restore raised it (PL).
local PR, RP, X, Y, FT, PL, CF, CW, PS = {}, {}, {}, {}, {}, {}, {}, {}, {}
-- Fixed windows: the bucket's key in the format before, whose count this window took.
local OLD = {}
-- Sliding windows: the segments that still count, newest first, all buckets in a row
-- (index, count, last admission); bucket i's are SB[i] .. SB[i] + SN[i] - 1, from head HD[i].
local SJ, SC, SL, SB, SN, HD = {}, {}, {}, {}, {}, {}
-- Logs: per bucket { h, n, t, dirty, at = {}, c = {}, mod = {} } (entries read lazily).
local LG = {}
local top = 0
-- Per bucket: the key's value (a string; a log's fields, HMGET h n t u; for a key holding
-- another shape's state, its GET: a string, or an error for a hash).
local V = {}

-- A key holding what no algorithm writes (a list, a set: written by another program at
-- a name of ours) is dropped and read as absent: left, its error failed every call that
-- reads it, and a fallback store's give-back to Redis with it, which kept every client's
-- decisions off Redis (a review). So is a hash whose fields (`r`: HMGET h n t) are not a
-- log's: its head and next index, whole numbers with h <= n and no more entries between
-- them than the hash has fields (a log holds one per index), and its total (a review: `h`
-- set to text failed the call, as a list did; and `n` set past the entries there are
-- would have the log walk every index up to it, holding Redis for as long); a log's
-- fields are kept (returned).
local function foreign(key, r)
  if r then
    local h, nx, t = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
    if h and nx and t and h >= 0 and h <= nx and t >= 0 and h % 1 == 0 and nx % 1 == 0
      and nx - h <= redis.call('HLEN', key) then
      return r
    end
  end
  redis.call('DEL', key)
  return false
end

-- What the keys hold: read and told apart, each key once, before the helpers below are
-- made (a closure costs time on every call that makes one: only the helpers a call needs
-- are made, and those for another shape's state only when a key holds one, or for a
-- restore). Token buckets and fixed windows are read in full here.
local logs, slides, others = false, false, false
for i = 1, n do
  local o = i * 6 - 5
  local key, alg = KEYS[i], ARGV[o + 1]
  local present, other = false, false
  local v
  if alg == '2' then
    logs = true
    local r = redis.pcall('HMGET', key, 'h', 'n', 't', 'u')
    if r.err then
      v = redis.pcall('GET', key)
      if type(v) == 'string' then
        present, other = true, true -- a string: another algorithm's state
      else
        v = foreign(key)
      end
    elseif r[1] or r[2] or r[3] then
      v = foreign(key, r)
      present = v and true
    end
  else
    v = redis.pcall('GET', key)
    local b1 = 0
    if v then
      if type(v) == 'string' then
        present, b1 = true, string.byte(v)
      elseif redis.call('TYPE', key).ok ~= 'hash' then
        v = foreign(key)
      elseif foreign(key, redis.call('HMGET', key, 'h', 'n', 't')) then
        present, other = true, true -- a hash: a log's state
      else
        v = false -- a hash that is not (dropped)
      end
    end
    if alg == '1' then
      -- Y: the format of a state of this shape ('b' binary, 'S' before 0.2).
      if present and not other then
        local tag = ARGV[o + 6]
        if find(v, tag, 1, true) == 1 and (#v - #tag) % 19 == 0 then
          Y[i], slides = 'b', true
        elseif b1 == 83 and find(v, 'S' .. sub(tag, 1, -2) .. ':', 1, true) == 1 then
          -- The format before 0.2, of this shape.
          Y[i], slides = 'S', true
        else
          other = true
        end
      end
    elseif alg == '3' then
      -- X: the TAT in this limit's interval; Y: whether it was converted to it.
      local tat, unit = 0, tonumber(ARGV[o + 4])
      if present and not other then
        local t, u = read_tat(v)
        if t then
          tat, u = t, tonumber(u)
          if u ~= unit then
            -- Worked out with another emission interval (the sustained rate changed): what
            -- it counts in tokens carries over (rounded up), as in algorithm.rs; exact while
            -- (tat - now) * unit stays below 2^53. Written back even if nothing else changes,
            -- so that it refills at the new rate from now on.
            if tat > now then
              tat = min(now + ceil((tat - now) * unit / max(u, 1)), LIM)
            end
            Y[i] = true
          end
        else
          -- The formats before: '<tat>', or before 0.2 'T<tat>', read in this interval.
          tat = tonumber(v)
          if not tat and b1 == 84 then
            tat = tonumber(sub(v, 2))
          end
          if not tat or tat < 0 then
            tat, other = 0, true -- (a negative number is a fixed window's count)
          end
        end
      end
      X[i] = tat
    else
      -- The window's key (the bucket's key and ':<window index>', placed by the instance's
      -- clock, as `now` is) holds its count; `unit` is when the key expires (ms).
      local used, unit = 0, tonumber(ARGV[o + 4])
      if present and not other then
        local x = tonumber(v)
        if x and x >= 0 then
          used = x
        else
          other = true
        end
      elseif not present and ARGV[o + 6] ~= '-' then
        -- A count of this window in the format before: carried over on the next change.
        local old, w = match(key, '^(.*):(%d+)$')
        local ov = redis.pcall('GET', old) -- (a log's hash is an error)
        if type(ov) == 'string' then
          local x = tonumber(ov)
          if x then
            if x < 0 then
              local pe = redis.call('PEXPIRETIME', old)
              if pe > 0 and pe <= unit + shift then
                used = -x
                OLD[i], present = old, true
              end
            end
          else
            local ww, uu = match(ov, '^F%d+:(%d+):(%d+)$')
            if ww == w then
              used = tonumber(uu)
              OLD[i], present = old, true
            end
          end
        end
      end
      X[i], Y[i] = used, window_close(tonumber(ARGV[o + 5]))
    end
  end
  -- (A fixed window's keys are its own: another state there is not a count.)
  others = others or other and alg ~= '4'
  V[i], PR[i], RP[i] = v, present, other
end

-- The helpers: logs'.
local entry, log_sum, load_log, log_add
if logs or others then
  -- A log's entry `idx`: when it was admitted (its cost: lg.c[idx]), read once. One that
  -- is not there, or not an entry (written by another program), counts nothing and has
  -- left the window (the newest so: the whole log has, and it is counted afresh).
  entry = function(lg, key, idx)
    local at = lg.at[idx]
    if at == nil then
      local a, c = match(redis.call('HGET', key, idx) or '', '^(%d+) (%d+)$')
      at = tonumber(a) or 0
      lg.at[idx], lg.c[idx] = at, tonumber(c) or 0
    end
    return at
  end

  -- What a log's entries add up to, saturating at LIM: its total once that saturated (huge
  -- penalties), when it no longer says what is left after entries go (log_total in
  -- algorithm.rs).
  log_sum = function(lg, key)
    local t = 0
    for idx = lg.h, lg.n - 1 do
      entry(lg, key, idx)
      t = t + lg.c[idx]
    end
    return min(t, LIM)
  end

  -- A log from its fields (HMGET h n t u), advanced to `now` in a window of `W`: what has
  -- aged out is dropped. Written back even if nothing else changes: another limit of the
  -- same key with a longer window would still count it in memory. Entries kept under
  -- another window: the expiry is written again by this one.
  load_log = function(key, r, W)
    local lg = { h = tonumber(r[1]), n = tonumber(r[2]), t = tonumber(r[3]), at = {}, c = {}, mod = {} }
    lg.dirty = tonumber(r[4]) ~= W
    local full, gone = lg.t >= LIM, false
    while lg.h < lg.n do
      local idx = lg.h
      if entry(lg, key, idx) + W > now then
        break
      end
      lg.t = lg.t - lg.c[idx]
      lg.at[idx] = false
      lg.mod[idx] = true
      lg.h = idx + 1
      lg.dirty, gone = true, true
    end
    if lg.h == lg.n then
      -- No entry left counts anything (a total out of step with its entries, as one
      -- another program wrote, is not kept).
      lg.t = 0
    elseif full and gone then
      lg.t = log_sum(lg, key)
    end
    return lg
  end

  -- Counts `add` in a log at `when` (with its newest entry, if that is no earlier).
  log_add = function(lg, key, when, add)
    local last = lg.n - 1
    local at = lg.n > lg.h and entry(lg, key, last)
    if at and at >= when then
      lg.c[last] = min(lg.c[last] + add, LIM)
      lg.mod[last] = true
    else
      lg.at[lg.n], lg.c[lg.n], lg.mod[lg.n] = when, add, true
      lg.n = lg.n + 1
    end
    lg.t = min(lg.t + add, LIM)
  end
end

-- Sliding windows': pushes (SJ, SC, SL, from top + 1) the segments of a sliding window's
-- value `v` that still count in a window of `W` µs of `k` segments of `s` µs, newest
-- first: from byte `p` on (the binary format) or, with `head`, from the counts of segments
-- head, head-1, ... (the format before 0.2, whose counts are taken as admitted at the end
-- of their segment, or now if that is later). Gives what they count and the head (the
-- newest segment's index, or now's if later).
local segments
if slides or others then
  segments = function(v, p, s, W, k, head, counts)
    local H = floor(now / s)
    local used = 0
    if head then
      local j = tonumber(head)
      if j > H then
        H = j
      end
      for x in gmatch(counts, '%d+') do
        local cnt = tonumber(x)
        if cnt > 0 then
          local last = max(min((j + 1) * s - 1, now), j * s)
          if last + W <= now or j < H - k then
            break
          end
          top = top + 1
          SJ[top], SC[top], SL[top] = j, cnt, last
          used = used + cnt
        end
        j = j - 1
      end
    else
      local len, first = #v, true
      while p <= len do
        local j, cnt, so, nx = struct.unpack('>I6I7I6', v, p)
        if first and j > H then
          H = j
        end
        first = false
        local last = j * s + so
        if last + W <= now or j < H - k then
          break
        end
        top = top + 1
        SJ[top], SC[top], SL[top] = j, cnt, last
        used = used + cnt
        p = nx
      end
    end
    return used, H
  end
end

-- Another shape's state, and a restore.
local carried, raise
if others or restore then
  -- What the state of another shape in `key` (its value `v`: a string, or else the key
  -- holds a log's hash) still counts, read under its own limit, in how many µs it is fresh
  -- again, in how many it counts no more than `R` (as enough of it leaves), and its window
  -- (µs; a token bucket's until it is fresh; 0 for a log that does not say); 0 if nothing,
  -- or a state that does not say what it counts (a fixed window's count in the format
  -- before window keys: fixed windows count apart; a token bucket's TAT without its
  -- interval).
  carried = function(key, v, R)
    if type(v) ~= 'string' then
      local r = redis.call('HMGET', key, 'h', 'n', 't', 'u')
      if not r[1] then
        return 0, 0, 0
      end
      local u = tonumber(r[4])
      if not u then
        -- Written before a log recorded its window: its total, until the key expires.
        local pe = redis.call('PEXPIRETIME', key)
        local fresh = pe > 0 and (pe - slack) * 1000 - now or 0
        return tonumber(r[3]), fresh, fresh, 0
      end
      local lg = load_log(key, r, u)
      if lg.n > lg.h then
        -- Its entries leave oldest first, each a window after its time.
        local left, fits = lg.t, 0
        for idx = lg.h, lg.n - 1 do
          if left <= R then
            break
          end
          fits = entry(lg, key, idx) + u - now
          left = left - lg.c[idx]
        end
        return lg.t, entry(lg, key, lg.n - 1) + u - now, max(fits, 0), u
      end
      return 0, 0, 0
    end
    local tat, T = read_tat(v)
    if tat then
      -- A token bucket: ceil((tat - now) / T) tokens, fresh at tat, R of them at tat - R T;
      -- its window, as far as its state says, until it is fresh (no longer than a burst's).
      if tat > now then
        T = max(tonumber(T), 1)
        return ceil((tat - now) / T), tat - now, max(tat - max(R, 0) * T - now, 0), tat - now
      end
      return 0, 0, 0
    end
    local k, s, p = match(v, '^(%d+):(%d+)|()')
    local head, counts
    if k then
      if (#v - p + 1) % 19 ~= 0 then
        return 0, 0, 0
      end
    else
      k, s, head, counts = match(v, '^S(%d+):(%d+):(%d+):(.*)$')
      if not k then
        return 0, 0, 0
      end
    end
    -- A sliding window of k segments of s µs: its window is at most k * s (s is W / k
    -- rounded up), a few µs more at the most. Only what it counts is wanted: its segments
    -- are dropped again.
    k, s = tonumber(k), tonumber(s)
    local b = top + 1
    local used = segments(v, p, s, k * s, k, head, counts)
    local fresh = top >= b and SL[b] + k * s - now or 0
    -- Its segments leave oldest (last pushed) first, each a window after its last admission.
    local left, fits = used, 0
    for x = top, b, -1 do
      if left <= R then
        break
      end
      left = left - SC[x]
      fits = SL[x] + k * s - now
    end
    top = b - 1
    return min(used, LIM), fresh, max(fits, 0), k * s
  end

  -- Raises bucket i's state to at least `want` counted (with `add`, by `want`), what it
  -- lacks placed as late as its freshness allows (fresh again in `fresh` µs), as
  -- MemoryStore::mirror places a count: a sliding window's or a log's at the admission
  -- that leaves the window when it is fresh again (a log's no earlier than its newest
  -- entry), a token bucket's TAT that far ahead (at most the count's worth), a fixed
  -- window's count in the current window. Whether it changed anything.
  raise = function(i, key, alg, unit, W, want, fresh, add)
    local place = min(max(now + fresh - W, now - W + 1), now)
    if alg == '1' then
      local s, b, m, used = unit, SB[i], SN[i], X[i]
      local delta = add and want or want - used
      if delta <= 0 then
        return false
      end
      -- The segments again, newest first, with the difference in `place`'s segment.
      local jn, nb, placed = floor(place / s), top + 1, false
      for x = b, b + m - 1 do
        if not placed and SJ[x] <= jn then
          placed = true
          top = top + 1
          if SJ[x] == jn then
            SJ[top], SC[top], SL[top] = jn, min(SC[x] + delta, LIM), max(SL[x], place)
          else
            SJ[top], SC[top], SL[top] = jn, delta, place
            top = top + 1
            SJ[top], SC[top], SL[top] = SJ[x], SC[x], SL[x]
          end
        else
          top = top + 1
          SJ[top], SC[top], SL[top] = SJ[x], SC[x], SL[x]
        end
      end
      if not placed then
        top = top + 1
        SJ[top], SC[top], SL[top] = jn, delta, place
      end
      SB[i], SN[i], X[i] = nb, top - nb + 1, min(used + delta, LIM)
    elseif alg == '3' then
      local tat = min((add and max(X[i], now) or now) + min(fresh, want * unit), LIM)
      if tat <= X[i] then
        return false
      end
      X[i] = tat
    elseif alg == '4' then
      local used = min(add and X[i] + want or want, LIM)
      if used <= X[i] then
        return false
      end
      X[i] = used
    else
      local lg = LG[i]
      local delta = add and want or want - lg.t
      if delta <= 0 then
        return false
      end
      log_add(lg, key, place, delta)
    end
    return true
  end
end

for i = 1, n do
  local o = i * 6 - 5
  local key, alg = KEYS[i], ARGV[o + 1]
  local cap, cost, unit, W = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  local v = V[i]
  -- The state of a sliding window or a log (token buckets and fixed windows were read in
  -- full above).
  if alg == '1' then
    local s = unit
    local used, H = 0, floor(now / s)
    SB[i] = top + 1
    if Y[i] == 'b' then
      used, H = segments(v, #ARGV[o + 6] + 1, s, W, ceil(W / s))
    elseif Y[i] == 'S' then
      local head, counts = match(v, '^S%d+:%d+:(%d+):(.*)$')
      used, H = segments(v, 0, s, W, ceil(W / s), head, counts)
    end
    SN[i], HD[i], X[i] = top - SB[i] + 1, H, used
  elseif alg == '2' then
    if PR[i] and not RP[i] then
      LG[i] = load_log(key, v, W)
    else
      LG[i] = { h = 0, n = 0, t = 0, dirty = false, at = {}, c = {}, mod = {} }
    end
  end
  -- The state of another shape (instances that disagree on the limit, mid-rollout or after
  -- a reload): what it still counts carries over, placed as a restore places a count, but
  -- fresh no sooner than this bucket's window from now (as if admitted now), so that it
  -- counts in every window of this limit that the other limit's admissions fall in. If the
  -- other state's window is shorter than this one's (a window lengthened; a token bucket's,
  -- until it is fresh: its burst is not stored) and this shape so placed counts at least as
  -- much as it at every time until it is fresh (a token bucket's TAT far enough ahead that
  -- its tokens still number the count then), any call but a look writes it in this shape
  -- (`PS`), whatever the call decides: left as it was, the count would leave with the
  -- shorter window's state, and the client have this window's whole quota again (a review:
  -- 50 admitted, then 50 more 61 s after a reload from 50/min to 50/h). Otherwise the other
  -- state stays, and each call places it anew: written over, what it counts would leave
  -- this shape sooner than it leaves its own, and alternating calls of the two shapes admit
  -- more than the looser limit in its window; or, written over by a refusal, a count of a
  -- window as long or longer would be dated anew by each refusal, on either side, and a
  -- client alternating between them never admitted (a review: 0 admitted in 62 s against
  -- 5/2s beside 5/20s).
  if RP[i] and alg ~= '4' then
    local used, fresh, fits, span = carried(key, v, cap - cost)
    if used > 0 and fresh > 0 then
      raise(i, key, alg, unit, W, used, max(fresh, W))
      CF[i], CW[i] = fresh, fits
      if op ~= '1' and span > 0 and span < W then
        if alg == '3' then
          PS[i] = X[i] - now - fresh > (used - 1) * unit
        else
          PS[i] = true
        end
      end
    end
  end
  if restore then
    PL[i] = raise(i, key, alg, unit, W, cost, tonumber(ARGV[n * 6 + 1 + i]), adds)
  end
  -- Whether the cost fits now, and if not, when: 0 fits, -1 never, else in how many µs.
  local fit = 0
  if cost > cap then
    fit = -1
  elseif alg == '1' then
    local R = cap - cost
    if X[i] > R then
      -- Fits when the segment that takes the count (newest first) over R leaves.
      local used = 0
      for x = SB[i], SB[i] + SN[i] - 1 do
        used = used + SC[x]
        if used > R then
          fit = min(SL[x] + W - now, LIM)
          break
        end
      end
    end
  elseif alg == '2' then
    local lg = LG[i]
    local need = lg.t + cost - cap
    if need > 0 and (op == '0' or op == '1') then
      local freed, leaves = 0, now + W
      for idx = lg.h, lg.n - 1 do
        local at = entry(lg, key, idx)
        freed = freed + lg.c[idx]
        if freed >= need then
          leaves = at + W
          break
        end
      end
      fit = max(leaves - now, 0)
    end
  elseif alg == '3' then
    local new = min(max(X[i], now) + cost * unit, LIM)
    fit = max(new - now - cap * unit, 0)
  elseif X[i] + cost > cap then
    fit = Y[i] - now
  end
  -- Refused on what another shape's state counts, left in that shape: each call places it
  -- anew, as if admitted then, so the wait is until enough of that state leaves for the
  -- cost to fit, not what this shape's placement says (a token bucket told a minute-long
  -- window's client to come back every second, and refused each time; told when all of
  -- the other state leaves, a client of a token bucket of 1/h, burst 50, was sent away for
  -- 50 hours where one sufficed).
  if fit > 0 and CF[i] and not PS[i] then
    fit = CW[i]
  end
  FT[i] = fit
end

-- A charge of several buckets changes a bucket only if every one fits; any other call
-- decides each bucket on its own.
local all = true
if op == '0' then
  for i = 1, n do
    if FT[i] ~= 0 then
      all = false
    end
  end
end

for i = 1, n do
  local o = i * 6 - 5
  local key, alg = KEYS[i], ARGV[o + 1]
  local cap, cost, unit, W = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  local fit = FT[i]
  local change = false
  if op == '0' then
    change = all
  elseif op ~= '1' then
    fit = 0
    change = true
  end
  local present = PR[i]
  -- What is stored for an absent key changes only by a charge or a penalty.
  if not present and op == '2' then
    change = false
  end
  -- (A restore raised the state already, above.)
  local add = change and op ~= '2'
  local remaining, reset = cap, 0
  if alg == '1' then
    local s = unit
    local b, m, H = SB[i], SN[i], HD[i]
    local used = X[i]
    local write = PS[i] or false
    if restore then
      write = PL[i] or write
    elseif add then
      used = min(used + cost, LIM)
      if m > 0 and SJ[b] == H then
        -- (A penalty of 0 still moves the head's last admission.)
        write = true
        SC[b] = min(SC[b] + cost, LIM)
        if now > SL[b] then
          SL[b] = now
        end
      elseif cost > 0 then
        -- A new head segment, in front of the others.
        write = true
        b = b - 1
        m = m + 1
        SJ[b], SC[b], SL[b] = H, cost, max(now, H * s)
      end
    elseif change and cost > 0 and AT then
      -- The charge's own segment (the head's, if its index is ahead of the head): gone
      -- from the window, it gives nothing back.
      local j = min(floor(AT / s), H)
      for x = b, b + m - 1 do
        if SJ[x] == j then
          write = true
          local take = min(SC[x], cost)
          SC[x] = SC[x] - take
          used = used - take
          if SC[x] == 0 then
            -- Out of the list: the newer segments move down one.
            for y = x, b + 1, -1 do
              SJ[y], SC[y], SL[y] = SJ[y - 1], SC[y - 1], SL[y - 1]
            end
            b = b + 1
            m = m - 1
          end
          break
        end
      end
    elseif change and cost > 0 then
      write = true
      local left = cost
      while left > 0 and m > 0 do
        local take = min(SC[b], left)
        SC[b] = SC[b] - take
        used = used - take
        left = left - take
        if SC[b] == 0 then
          b = b + 1
          m = m - 1
        end
      end
    end
    remaining = max(cap - used, 0)
    if m > 0 then
      reset = SL[b] + W - now
      if write then
        local parts = { ARGV[o + 6] }
        for x = b, b + m - 1 do
          parts[#parts + 1] = struct.pack('>I6I7I6', SJ[x], SC[x], SL[x] - SJ[x] * s)
        end
        redis.call('SET', key, table.concat(parts), 'PXAT', ceil((SL[b] + W) / 1000) + slack)
      end
    elseif present then
      redis.call('DEL', key)
    end
  elseif alg == '3' then
    local T = unit
    local tat = X[i]
    if change and not restore then
      if add then
        tat = min(max(tat, now) + cost * T, LIM)
      else
        -- A charge's time that refilled since it was made (at AT) is not given back: it
        -- may have refilled into newer charges.
        local back = cost * T
        if AT then
          back = min(back, max(AT + back - now, 0))
        end
        tat = max(max(tat - back, 0), min(now, tat))
      end
    end
    if tat > now then
      remaining = max(cap - ceil((tat - now) / T), 0)
      reset = tat - now
      if change or Y[i] or PS[i] then
        redis.call('SET', key, tat_value(tat, ARGV[o + 4]), 'PXAT', ceil(tat / 1000) + slack)
      end
    elseif present then
      redis.call('DEL', key)
    end
  elseif alg == '4' then
    local used, close = X[i], Y[i]
    if change and not restore then
      if add then
        used = min(used + cost, LIM)
      elseif not AT or floor(AT / W) == floor(now / W) then
        -- (A charge of another window than this one counts in none that matters now.)
        used = max(used - cost, 0)
      end
    end
    remaining = max(cap - used, 0)
    if change and OLD[i] then
      redis.call('DEL', OLD[i])
    end
    -- The window resets at its end, whether or not it counts anything.
    reset = close - now
    if used > 0 then
      if change then
        redis.call('SET', key, used, 'PXAT', unit + shift)
      end
    elseif present then
      redis.call('DEL', key)
    end
  else
    local lg = LG[i]
    if PS[i] then
      lg.dirty = true
    end
    if change then
      lg.dirty = true
      if restore then
        -- (Raised above.)
      elseif add then
        log_add(lg, key, now, cost)
      else
        -- A refund: from the newest entry on to older ones; or, of the charge at AT, from
        -- the entry it was added to and no other (the first at or after AT: entries are in
        -- time order, found by halves), unless it left the window. Given back whole, the
        -- newest entry goes, and with it those counting 0 it leaves newest; one before an
        -- entry that counts stays, counting 0, until it leaves the window (the indices
        -- between h and n stay whole), as in memory. A saturated total is recounted after.
        local full, left, at = lg.t >= LIM, cost, lg.n - 1
        if AT then
          local lo, hi = lg.h, lg.n
          if AT + W <= now then
            lo = hi
          end
          while lo < hi do
            local mid = floor((lo + hi) / 2)
            if entry(lg, key, mid) < AT then
              lo = mid + 1
            else
              hi = mid
            end
          end
          at = lo
        end
        while left > 0 and at >= lg.h and at < lg.n do
          entry(lg, key, at)
          local take = min(lg.c[at], left)
          lg.t = lg.t - take
          left = left - take
          lg.c[at] = lg.c[at] - take
          lg.mod[at] = true
          if AT then
            break
          end
          at = at - 1
        end
        while left < cost and lg.n > lg.h do
          local last = lg.n - 1
          entry(lg, key, last)
          if lg.c[last] ~= 0 then
            break
          end
          lg.at[last], lg.mod[last] = false, true
          lg.n = last
        end
        if full then
          lg.t = log_sum(lg, key)
        end
      end
    end
    remaining = max(cap - lg.t, 0)
    local exp = 0
    if lg.n > lg.h then
      exp = entry(lg, key, lg.n - 1) + W
    end
    if exp > now then
      reset = exp - now
      if lg.dirty then
        if RP[i] then
          -- Another shape's state (its count carried over): replaced.
          redis.call('DEL', key)
        end
        local set = { 'HSET', key, 'h', lg.h, 'n', lg.n, 't', lg.t, 'u', W }
        local del = { 'HDEL', key }
        for idx in pairs(lg.mod) do
          local at = lg.at[idx]
          if at then
            set[#set + 1] = idx
            set[#set + 1] = fmt('%.0f %.0f', at, lg.c[idx])
          elseif not RP[i] then
            del[#del + 1] = idx
            if #del >= 1002 then
              -- unpack is limited to a few thousand values
              redis.call(unpack(del))
              del = { 'HDEL', key }
            end
          end
        end
        if #del > 2 then
          redis.call(unpack(del))
        end
        redis.call(unpack(set))
        redis.call('PEXPIREAT', key, ceil(exp / 1000) + slack)
      end
    elseif present then
      redis.call('DEL', key)
    end
  end
  -- A key left holding another shape's state is full again when that state is fresh.
  if CF[i] and not change and not PS[i] then
    reset = CF[i]
  end
  out[#out + 1] = fit
  out[#out + 1] = remaining
  out[#out + 1] = min(reset, LIM)
end
return out
