-- tollgate: one fixed window charged, INCRBY-shaped (decide.lua does everything else).
--
-- KEYS[1]: the window's key, the bucket's key and ':<window index>' (the instance placed
-- the window by its clock). ARGV: cost (at least 1), capacity, and how long the key lives
-- from now (ms, to a second after the window ends on the instance's clock: relative, so an
-- instance whose clock runs behind the server's does not set an expiry already past, which
-- would drop the count at every charge). A fourth argument, if any, says that the bucket's
-- key in the format before this script is on another Redis Cluster slot and must not be
-- read.
--
-- Stored: the window's count, a plain integer. A refused charge is not counted: it is taken
-- back at once, as the memory store never counts it.
--
-- Reply: one integer: the count after the charge (admitted), or minus one minus the count
-- before it (refused).

local c = tonumber(ARGV[1])
local k = KEYS[1]
local n = redis.pcall('INCRBY', k, c)
if type(n) == 'table' then
  -- The key holds what this script never writes (a list, text: another program's, at a
  -- name of ours): dropped, and the window counted from here. Any other error (out of
  -- memory, a permission) is the reply, the count kept.
  local e = n.err or ''
  if not (string.find(e, 'WRONGTYPE', 1, true) or string.find(e, 'not an integer', 1, true)) then
    return n
  end
  redis.call('DEL', k)
  n = redis.call('INCRBY', k, c)
end
if n == c then
  -- The window's first charge. The format before this script kept the count, negated, in
  -- the bucket's own key, expiring when the window ended (or, before 0.2, as
  -- F<period>:<window>:<used>): a count of this window carries over, once.
  if not ARGV[4] then
    local old, w = string.match(k, '^(.*):(%d+)$')
    local v = redis.pcall('GET', old) -- (a log's hash is an error)
    if type(v) == 'string' then
      local u = tonumber(v)
      if u then
        if u < 0 then
          local pe = redis.call('PTTL', old)
          if pe > 0 and pe <= tonumber(ARGV[3]) then
            u = -u
          else
            u = false
          end
        else
          u = false
        end
      else
        local ww, uu = string.match(v, '^F%d+:(%d+):(%d+)$')
        u = ww == w and tonumber(uu)
      end
      if u then
        redis.call('DEL', old)
        if u > 0 then
          n = redis.call('INCRBY', k, u)
        end
      end
    end
  end
  redis.call('PEXPIRE', k, ARGV[3])
end
if n > tonumber(ARGV[2]) then
  -- The count before, as Redis computes it (exact: Lua's numbers are not above 2^53).
  return -1 - redis.call('DECRBY', k, c)
end
return n
