"""Lua scripts of the Redis store. Each runs atomically on the server in one round trip.

Key layout (see `chatstate.stores.redis` for why): every key a script touches shares one hash
slot, so the scripts work unchanged on Redis Cluster. Keys that depend on a session id are passed
as *prefixes* in KEYS (they carry the hash tag, so they route to the right slot) and the script
appends the id.

Aggregate contributions (`ag`) are JSON arrays ``[field, amount, field, amount, ...]`` computed
by the client from the record; the commit script applies new-minus-old to the bucket's aggregate
hash so counts never need a scan.
"""

from __future__ import annotations

# Shared Lua helper: apply the difference between two contribution arrays to an aggregate hash.
_APPLY_DELTA = """
local function apply_delta(agg, old, new)
  if old == new then return end
  local delta = {}
  if old then
    local a = cjson.decode(old)
    for i = 1, #a, 2 do delta[a[i]] = (delta[a[i]] or 0) - a[i + 1] end
  end
  if new then
    local a = cjson.decode(new)
    for i = 1, #a, 2 do delta[a[i]] = (delta[a[i]] or 0) + a[i + 1] end
  end
  for field, amount in pairs(delta) do
    if amount ~= 0 then redis.call('HINCRBY', agg, field, string.format('%d', amount)) end
  end
end
"""

# KEYS: 1 current pointer, 2 row prefix
# -> blob of the current record or nil
LOAD = """
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return false end
return redis.call('HGET', KEYS[2] .. id, 'b')
"""

# KEYS: 1 lease, 2 current pointer, 3 row prefix
# ARGV: 1 owner, 2 now, 3 expires_at, 4 lease key expiry backstop (ms)
# -> {token, blob|nil} when taken, {0, expires_at of the holder} when busy
LEASE_AND_LOAD = """
local l = redis.call('HMGET', KEYS[1], 'o', 'e')
if l[1] and l[1] ~= ARGV[1] and (tonumber(l[2]) or 0) > tonumber(ARGV[2]) then
  return {0, l[2]}
end
local token = redis.call('HINCRBY', KEYS[1], 't', 1)
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'e', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local id = redis.call('HGET', KEYS[2], 'id')
local blob = false
if id then blob = redis.call('HGET', KEYS[3] .. id, 'b') end
return {token, blob}
"""

# KEYS: 1 lease; ARGV: 1 owner, 2 token, 3 now, 4 new expires_at, 5 backstop (ms)
RENEW = """
local l = redis.call('HMGET', KEYS[1], 'o', 't', 'e')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] or (tonumber(l[3]) or 0) <= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'e', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: 1 lease; ARGV: 1 owner, 2 token. The token counter stays so tokens keep growing.
RELEASE = """
local l = redis.call('HMGET', KEYS[1], 'o', 't')
if l[1] == ARGV[1] and l[2] == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'o', 'e')
  return 1
end
return 0
"""

# KEYS: 1 current pointer, 2 row, 3 lease, 4 history, 5 summaries, 6-8 due warn/expire/purge,
#       9 listing index, 10 aggregates, 11 id -> key index
# ARGV: 1 expected, 2 new version, 3 id, 4 blob, 5 ag, 6 status, 7 flow, 8 step,
#       9 last_activity, 10 index member, 11-13 due warn/expire/purge ('' = none),
#       14 lease owner ('' = no lease), 15 lease token, 16 now, 17 release ('1'),
#       18 GC backstop in ms ('0' = none), 19 drop messages through ('' = no),
#       20 drop summaries ('1'), 21 canonical key, 22 n messages, 23 n summaries,
#       24 retry ('1' when an earlier attempt of this same commit may have been applied),
#       25.. (seq, blob) per message then (end_seq, blob) per summary
# -> {1, version} committed (or, on a retry, found already applied by the earlier attempt);
#    {0, stored version} version conflict; {-1, stored token} lease lost
COMMIT = _APPLY_DELTA + """
local cur = redis.call('HMGET', KEYS[1], 'v', 'id')
local curv = tonumber(cur[1]) or 0
local id = ARGV[3]
if curv ~= tonumber(ARGV[1]) then
  if ARGV[24] == '1' and curv == tonumber(ARGV[2]) and cur[2] == id
      and redis.call('HGET', KEYS[2], 'b') == ARGV[4] then
    return {1, curv}
  end
  if ARGV[14] == '' then return {0, curv} end
end
if ARGV[14] ~= '' then
  local l = redis.call('HMGET', KEYS[3], 'o', 't', 'e')
  if l[1] ~= ARGV[14] or l[2] ~= ARGV[15] or (tonumber(l[3]) or 0) <= tonumber(ARGV[16]) then
    return {-1, tonumber(l[2]) or 0}
  end
  if curv ~= tonumber(ARGV[1]) then return {0, curv} end
end
local old = redis.call('HMGET', KEYS[2], 'ag', 'gc')
apply_delta(KEYS[10], old[1], ARGV[5])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'id', id)
redis.call('HSET', KEYS[2], 'b', ARGV[4], 'v', ARGV[2], 'ag', ARGV[5], 'st', ARGV[6],
  'fl', ARGV[7], 'sp', ARGV[8], 'gc', ARGV[18])
if cur[2] ~= id then redis.call('HSET', KEYS[11], id, ARGV[21]) end
local member = ARGV[10]
redis.call('ZADD', KEYS[9], ARGV[9], member)
for i = 0, 2 do
  local at = ARGV[11 + i]
  if at == '' then redis.call('ZREM', KEYS[6 + i], member)
  else redis.call('ZADD', KEYS[6 + i], at, member) end
end
if ARGV[19] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[19]) end
if ARGV[20] == '1' then redis.call('DEL', KEYS[5]) end
local n = 25
local nm = tonumber(ARGV[22])
if nm > 0 then
  local z = {}
  for i = 0, nm - 1 do z[#z + 1] = ARGV[n + 2 * i]; z[#z + 1] = ARGV[n + 2 * i + 1] end
  redis.call('ZADD', KEYS[4], unpack(z))
end
n = n + 2 * nm
local ns = tonumber(ARGV[23])
if ns > 0 then
  local z = {}
  for i = 0, ns - 1 do z[#z + 1] = ARGV[n + 2 * i]; z[#z + 1] = ARGV[n + 2 * i + 1] end
  redis.call('ZADD', KEYS[5], unpack(z))
end
if ARGV[18] ~= '0' then
  for i = 1, 5 do if i ~= 3 then redis.call('PEXPIRE', KEYS[i], ARGV[18]) end end
elseif old[2] and old[2] ~= '0' then
  for i = 1, 5 do if i ~= 3 then redis.call('PERSIST', KEYS[i]) end end
end
if ARGV[17] == '1' and ARGV[14] ~= '' then redis.call('HDEL', KEYS[3], 'o', 'e') end
return {1, tonumber(ARGV[2])}
"""

# KEYS: 1 current pointer, 2 row prefix, 3 history prefix, 4 summaries prefix,
#       5-7 due warn/expire/purge, 8 listing index, 9 aggregates, 10 id index,
#       11 quarantine list
# ARGV: 1 canonical key, 2 session id ('' = the current one), 3 mode ('delete'|'quarantine'),
#       4 quarantine entry, 5 how long quarantined history is kept (ms), 6 quarantine cap,
#       7 the unreadable bytes (quarantine: only a current record still holding them is moved)
# -> 1 if something was removed
REMOVE = _APPLY_DELTA + """
local cur = redis.call('HGET', KEYS[1], 'id')
local id = ARGV[2]
if id == '' then id = cur end
if not id then
  if ARGV[3] == 'quarantine' then
    redis.call('LPUSH', KEYS[11], ARGV[4])
    redis.call('LTRIM', KEYS[11], 0, tonumber(ARGV[6]) - 1)
  end
  return 0
end
local row = KEYS[2] .. id
if ARGV[3] == 'quarantine' and redis.call('HGET', row, 'b') ~= ARGV[7] then
  -- replaced meanwhile by another writer: keep that record, file only the bad bytes
  redis.call('LPUSH', KEYS[11], ARGV[4])
  redis.call('LTRIM', KEYS[11], 0, tonumber(ARGV[6]) - 1)
  return 0
end
local found = redis.call('EXISTS', row)
local ag = redis.call('HGET', row, 'ag')
if ag then apply_delta(KEYS[9], ag, false) end
local member = ARGV[1] .. ' ' .. id
for i = 5, 8 do redis.call('ZREM', KEYS[i], member) end
redis.call('HDEL', KEYS[10], id)
redis.call('DEL', row)
if ARGV[3] == 'quarantine' then
  redis.call('PEXPIRE', KEYS[3] .. id, ARGV[5])
  redis.call('PEXPIRE', KEYS[4] .. id, ARGV[5])
  redis.call('LPUSH', KEYS[11], ARGV[4])
  redis.call('LTRIM', KEYS[11], 0, tonumber(ARGV[6]) - 1)
else
  found = found + redis.call('DEL', KEYS[3] .. id, KEYS[4] .. id)
end
if cur == id then
  redis.call('DEL', KEYS[1])
  found = 1
end
if found > 0 then return 1 end
return 0
"""

# KEYS: 1 due index of one kind; ARGV: 1 now, 2 limit, 3 claimed until
# -> flat list member, score, member, score ...
CLAIM_DUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  ARGV[2])
if #items == 0 then return items end
local z = {}
for i = 1, #items, 2 do z[#z + 1] = ARGV[3]; z[#z + 1] = items[i] end
redis.call('ZADD', KEYS[1], unpack(z))
return items
"""

# Walks one listing index (newest last_activity first) from a cursor, server side, and keeps
# the entries that match the filters. Rows are read from keys built from the member (they are
# in the same slot as the index, see the layout notes).
# KEYS: 1 listing index
# ARGV: 1 max score ('+inf' or a score), 2 cursor member ('' = none; skip members >= it at
#       the max score), 3 min score ('-inf' or '(' score), 4 entries to examine at most,
#       5 matches wanted, 6 mode ('list' | 'agg'), 7 row key head, 8 row key tail,
#       9 status, 10 platform, 11 scope, 12 flow, 13 step, 14 key prefix ('' = any)
# -> {done ('1'|'0'), last score, last member, then per match:
#     list mode: member, score, blob; agg mode: nothing (aggregates follow as field, amount)}
SCAN = """
local max, after, min = ARGV[1], ARGV[2], ARGV[3]
local budget, want, mode = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local status, platform, scope = ARGV[9], ARGV[10], ARGV[11]
local flow, step, kp = ARGV[12], ARGV[13], ARGV[14]
local out, agg = {}, {}
local found, examined, offset = 0, 0, 0
local last_score, last_member = max, after
local done = '1'
while true do
  local chunk = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, min, 'WITHSCORES',
    'LIMIT', offset, 200)
  if #chunk == 0 then break end
  offset = offset + #chunk / 2
  for i = 1, #chunk, 2 do
    local member, score = chunk[i], chunk[i + 1]
    if after == '' or tonumber(score) < tonumber(max) or member < after then
      examined = examined + 1
      last_score, last_member = score, member
      local sp = string.find(member, ' ', 1, true)
      local key, id = string.sub(member, 1, sp - 1), string.sub(member, sp + 1)
      local ok = kp == '' or string.sub(key, 1, #kp) == kp
      if ok and (platform ~= '' or scope ~= '') then
        local c1 = string.find(key, ':', 1, true)
        local c2 = string.find(key, ':', c1 + 1, true)
        if platform ~= '' and string.sub(key, 1, c1 - 1) ~= platform then ok = false end
        if scope ~= '' and string.sub(key, c1 + 1, c2 - 1) ~= scope then ok = false end
      end
      if ok then
        local row = ARGV[7] .. key .. ARGV[8] .. id
        local f = redis.call('HMGET', row, 'st', 'fl', 'sp', mode == 'list' and 'b' or 'ag')
        if not f[4] then ok = false
        elseif status ~= '' and f[1] ~= status then ok = false
        elseif flow ~= '' and f[2] ~= flow then ok = false
        elseif step ~= '' and f[3] ~= step then ok = false end
        if ok then
          found = found + 1
          if mode == 'list' then
            out[#out + 1] = member; out[#out + 1] = score; out[#out + 1] = f[4]
          else
            local a = cjson.decode(f[4])
            for j = 1, #a, 2 do agg[a[j]] = (agg[a[j]] or 0) + a[j + 1] end
          end
        end
      end
      if found >= want or examined >= budget then done = '0'; break end
    end
  end
  if done == '0' then break end
end
local res = {done, last_score, last_member}
for _, v in ipairs(out) do res[#res + 1] = v end
for k, v in pairs(agg) do res[#res + 1] = k; res[#res + 1] = string.format('%d', v) end
return res
"""
