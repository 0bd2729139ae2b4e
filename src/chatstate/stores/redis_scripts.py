"""Lua scripts of the Redis store. Each runs atomically on the server in one round trip.

Key layout (see `chatstate.stores.redis` for why): every key a script touches shares one hash
slot, so the scripts work unchanged on Redis Cluster. Keys that depend on a session id are passed
as *prefixes* in KEYS (they carry the hash tag, so they route to the right slot) and the script
appends the id.

Aggregate contributions (`ag`) are JSON arrays ``[field, amount, field, amount, ...]`` computed
by the client from the record (status, platform, close reason, flow step, labels); the numeric
sums (messages, tokens, duration) are plain row fields. The commit script applies new-minus-old
to the bucket's aggregate hash, so counts never need a scan.
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

# Numeric sums (messages, tokens, duration ms) live in row fields nm, nk, nd; `ag` holds only the
# categorical contribution, which rarely changes, so most commits skip decoding it.
_APPLY_SUMS = """
local function apply_sums(agg, old_m, old_k, old_d, m, k, d)
  local names = {'m', 'k', 'd'}
  local before = {tonumber(old_m) or 0, tonumber(old_k) or 0, tonumber(old_d) or 0}
  local after = {tonumber(m) or 0, tonumber(k) or 0, tonumber(d) or 0}
  for i = 1, 3 do
    local delta = after[i] - before[i]
    if delta ~= 0 then redis.call('HINCRBY', agg, names[i], string.format('%d', delta)) end
  end
end
"""

# The layout version this module writes (see `chatstate.stores.redis`). Stores of an older
# layout are refused at open() with a message saying what to do, never misread. Layouts 5 and
# 6 are marked 7 in place: layout 5 data is layout 7 data whose sums are all folded (no row has
# 'cm'), and a pointer of either keeps its lease in fields o, t, e until its next lease moves it
# into 'l' (see LEASE_AND_LOAD). From then on, a process of an older version refuses the prefix
# instead of misreading it.
LAYOUT_VERSION = "7"
LAYOUT_UPGRADED_IN_PLACE = ("5", "6")

# KEYS: 1 layout marker, 2 aggregates, 3 listing index (of one bucket); ARGV: 1 layout version,
# 2.. the older versions that are marked as ARGV[1] in place
# -> the bucket's layout version: the marker, or '1' for data written before markers existed,
#    or ARGV[1] for an empty bucket (the marker is set then)
LAYOUT = """
local v = redis.call('GET', KEYS[1])
for i = 2, #ARGV do
  if v == ARGV[i] then
    redis.call('SET', KEYS[1], ARGV[1])
    return ARGV[1]
  end
end
if v then return v end
if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then return '1' end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# The pointer hash B:r holds the lease (o owner, '' when free; t fencing token; e expiry) and
# the current session's row (id, v and the ROW_FIELDS), so that a lease-and-load is one read
# and one write of one key, and a commit reads and writes that one key (plus the indexes whose
# value changed). A replaced session's row moves to B:s:<id>.
ROW_FIELDS = (
    "b", "v", "ag", "st", "fl", "sp", "gc", "nm", "nk", "nd", "c", "w", "x", "p", "la", "mt",
    "wi", "xi", "pi", "lg", "cm", "cd",
)
_ROW_FIELDS_LUA = ", ".join(f"'{name}'" for name in ROW_FIELDS)

# The lease is one field of the pointer, 'l' = "<expiry><token>:<owner>": the expiry a
# fixed-width microsecond string (see `chatstate.stores.redis._us`; all zeros once released),
# compared with `now` as a string without parsing numbers; the token, which only grows (a
# release keeps it, and the owner); the owner. One field where three cost the server a field
# read and write each on every lease and commit. Pointers written by layout 6 or older keep
# the lease in fields o, t, e: the next lease_and_load moves it into 'l'.
RELEASED = "0" * 17

# A pointer hash that holds only a lease and its token counter (no session) expires this long
# (ms) after the lease it holds.
POINTER_BACKSTOP_MS = 86_400_000

# KEYS: 1 pointer
# ARGV: 1 owner, 2 now, 3 expires_at
# -> taken: the token; busy: {0, expires_at of the holder}. (A table reply costs the server a
#    few thousand instructions more than a string: Redis probes it for error and status fields.)
# The record is not read here: the client sends `HGET <pointer> b` right behind this script, in
# the same write (see RedisStore.lease_and_load). In a script the record would become a Lua
# string (Redis's Lua hashes every byte of a new string: a profile of redis-server 7.0 shows
# that loop as its hottest code) and be copied again into the reply, twice what a plain HGET
# costs (replaying a benchmark run: about 3 of 13 µs of server time per update).
# Reading after the lease is as good as reading inside it: once the lease is taken, a commit
# that holds another lease is refused, so the record read is the one this lease's commit
# compares its version with (a commit without a lease is still fenced by that version).
# Written for the server's per-element costs (see COMMIT): the token stays a string (a number
# concatenated to a string is formatted with "%.14g", thousands of instructions), the holder is
# read only while its lease runs, and the expiry backstop of a pointer that holds no session is
# derived from the lease times instead of travelling as an argument.
LEASE_AND_LOAD = """
local h = redis.call('HMGET', KEYS[1], 'l', 'v')
local l, token, legacy = h[1], '0', nil
if l then
  token = string.match(l, '^%d+', 18)
  local e = string.sub(l, 1, 17)
  if e > ARGV[2] and string.sub(l, 19 + #token) ~= ARGV[1] then return {0, e} end
else  -- a key new to leases, or a lease of layout 6 or older
  legacy = redis.call('HMGET', KEYS[1], 'o', 'e', 't')
  local o, e = legacy[1], legacy[2] or ''
  if o and o ~= '' and o ~= ARGV[1] and e > ARGV[2] then return {0, e} end
  token = legacy[3] or '0'
end
token = string.format('%d', token + 1)
redis.call('HSET', KEYS[1], 'l', ARGV[3] .. token .. ':' .. ARGV[1])
if legacy and legacy[3] then redis.call('HDEL', KEYS[1], 'o', 'e', 't') end
if not h[2] then  -- no session at the key: the pointer holds only the lease
  local backstop = """ + str(POINTER_BACKSTOP_MS) + """ + math.ceil((ARGV[3] - ARGV[2]) / 1000)
  redis.call('PEXPIRE', KEYS[1], string.format('%d', backstop))
end
return token
"""

# The corruption-injection hook (tests, maintenance): overwrite the current record's bytes.
# KEYS: 1 pointer; ARGV: 1 bytes -> 1, or 0 when the key has no current record
PUT_RAW = """
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'b', ARGV[1])
return 1
"""

# KEYS: 1 pointer; ARGV: 1 "<token>:<owner>", 2 now, 3 new expires_at (microsecond strings)
RENEW = """
local l = redis.call('HGET', KEYS[1], 'l')
if not l or string.sub(l, 18) ~= ARGV[1] or string.sub(l, 1, 17) <= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'l', ARGV[3] .. ARGV[1])
return 1
"""

# KEYS: 1 pointer; ARGV: 1 "<token>:<owner>". The token and owner stay (tokens keep growing):
# the expiry becomes all zeros.
RELEASE = """
local l = redis.call('HGET', KEYS[1], 'l')
if l and string.sub(l, 18) == ARGV[1] then
  redis.call('HSET', KEYS[1], 'l', '""" + RELEASED + """' .. ARGV[1])
  return 1
end
return 0
"""

# History is a list per session (B:h:<id>), oldest first, of "<seq: 4 bytes big-endian><message
# in Codec.pack_message's form>": a list costs a few bytes per entry where a sorted set costs
# about a hundred, and the seq prefix lets a script find a position without decoding messages.
# Seqs grow along the list. A position is found in one LINDEX when the seqs are contiguous
# (as the engine writes them), else by binary search (O(log n) LINDEX calls).
_HISTORY_LUA = """
local function seq_at(key, i)
  return struct.unpack('>I4', redis.call('LINDEX', key, i))
end
-- the first position whose seq is >= seq (LLEN when there is none)
local function lower_bound(key, seq)
  local n = redis.call('LLEN', key)
  if n == 0 then return 0 end
  local first = seq_at(key, 0)
  if seq <= first then return 0 end
  local guess = seq - first
  if guess < n and seq_at(key, guess) == seq and seq_at(key, guess - 1) < seq then
    return guess
  end
  local lo, hi = 0, n  -- seq_at(lo - 1) < seq <= seq_at(hi)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if seq_at(key, mid) < seq then lo = mid + 1 else hi = mid end
  end
  return lo
end
"""

# KEYS: 1 history; ARGV: 1 limit, 2 before seq ('' = none) -> the entries, oldest first
HISTORY_TAIL = _HISTORY_LUA + """
local limit = tonumber(ARGV[1])
if ARGV[2] == '' then return redis.call('LRANGE', KEYS[1], -limit, -1) end
local p = lower_bound(KEYS[1], tonumber(ARGV[2]))
if p == 0 then return {} end
return redis.call('LRANGE', KEYS[1], math.max(0, p - limit), p - 1)
"""

# KEYS: 1 history; ARGV: 1 first seq, 2 last seq -> the entries with first <= seq <= last
HISTORY_RANGE = _HISTORY_LUA + """
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
if last < first then return {} end
local p = lower_bound(KEYS[1], first)
local items = redis.call('LRANGE', KEYS[1], p, p + (last - first))
local out = {}
for _, item in ipairs(items) do
  if struct.unpack('>I4', item) > last then break end
  out[#out + 1] = item
end
return out
"""

# The hot path of every update, so it is written for the common case: one HMGET and one HSET of
# the pointer, and an index is written only when it must be (the previous values are the row's
# own fields: 'lg' the listing group (and whether the sums wait for a fold), 'wi'/'xi'/'pi'
# where the session's due entries sit, 'mt' the rarely changing part). The listing index holds
# a session at its minute ('lg'), so only the first commit of a minute moves its entry; 'la'
# holds the exact time. A field is written only when its value changes ('lg', 'wi', 'xi' and
# the rare ones are not part of the common HSET).
#
# Server time goes mostly to fixed costs per element: each script argument, each field an HMGET
# returns and each field an HSET writes becomes a Lua string and a table slot, and every
# redis.call costs thousands of instructions before its command runs. So the script takes at
# most 16 arguments (the ARGV table then grows no further), the steady path reads 7 fields,
# writes 8 or 9 and makes two calls, and rare work is named from the pointer and the index
# prefix (B is the pointer without ':r', the listing index is I .. 'recent') instead of
# travelling as arguments.
#
# The due index is lazy, as in the MemoryStore: a session's entry of one kind sits at or before
# its real due time ('w', 'x', 'p'), at the position its 'wi'/'xi'/'pi' field names. A commit
# adds an entry only when the new due time is earlier than the entry's position (or there is
# none); otherwise the early entry moves itself to the real time when CLAIM_DUE reaches it. So
# a sliding idle deadline, which moves later with every message, costs no index write. An entry
# whose due time was removed is dropped by the claim that reaches it. A claim moves a claimed
# entry to the end of the claim (and records that position), so a commit that sets a due time
# before it puts the entry back at that time: the claim's hold ends with the commit.
#
# The message and duration sums (aggregate fields 'm', 'd') change with every message, so they
# are folded into the aggregates lazily (see FOLD): the aggregates hold each row's sums as of
# its last fold. A row whose sums moved since then keeps the folded values in 'cm'/'cd', its
# member "K id" in the bucket's set I:dirty and a '*' after its listing group in 'lg' (which
# the commit reads anyway); the first commit after a fold files it (one extra read and write),
# later ones only see the '*'. A row without 'cm' is folded ('nm'/'nd' are in the
# aggregates). A session new at the key adds its sums at once. The commit mark 'c' is read
# only when the lease or version check fails (to recognise an applied earlier attempt).
#
# What rarely changes (status, flow, step, whether a GC backstop is set, purge time, tokens, the
# categorical contribution) travels packed in one JSON argument, `meta`, stored as it came in
# 'mt': when it equals the stored one, none of those indexes is looked at and nothing is
# decoded; otherwise (and for a session new at the key) the script decodes it, applies the
# differences and writes the individual fields that listings, counts and deletions read.
#
# The canonical key, from the pointer's name p and the index prefix I (standalone P:{K}:r with
# I = P:, Cluster P:{b<n>}:K:r with I = P:{b<n>}:; a prefix has no braces): only the commit's
# rare paths need it, so it does not travel as an argument. An expression, not a Lua function:
# a closure would be built on every call of the script.
_SESSION_KEY = (
    "string.byte(I, -2) == 125 and string.sub(p, #I + 1, -3) or string.sub(p, #I + 2, -4)"
)

# The hot path avoids what costs the server most per element besides the calls themselves:
# arguments it does not need (the canonical key is derived from the pointer's name on the rare
# paths that need it; extras and history travel only when there are some), numbers formatted
# as strings ("%.14g" costs thousands of instructions: the new version is formatted with '%d')
# or parsed from long decimals (the due positions are compared as strings when both have ten
# integer digits, as every time from 2001 to 2286 has), and substrings and concatenations (the
# lease is compared whole: the client sends the lease field it expects, and the released
# field; the listing group arrives with its '*').
#
# KEYS: 1 pointer, 2 index prefix I (ends with ':')
# ARGV: 1 expected version (the stored one, '0' = none; the new one is this + 1), 2 id, 3 blob,
#       4 commit mark (random, the same for every attempt of one commit() call),
#       5 lease: the lease field as the client expects it, "<expires_at><token>:<owner>" (its
#       expiry replaced by 17 'x' when it ran out by the client's clock), '' = no lease,
#       6 now (microseconds, as lease times), 7 -last_activity (exact, 'la'), 8 listing group
#       (the listing index's score, see SCAN) followed by '*', 9 warn due, 10 expire due
#       ('' = none), 11 messages handled, 12 duration (ms),
#       13 meta: JSON [status, flow, step, GC backstop set ('1'|'0'), purge due ('' = none),
#          tokens, [field, amount, ...] (the categorical contribution)],
#       14 the lease field once released ('' = keep the lease; see RELEASED),
#       15 (absent when there are none) extras: "<GC backstop in ms, '0' = none>;<history>"
#          where history is '' (no change) or "<n messages> <n summaries> <drop messages
#          through ('-' = no)> <drop summaries ('1'|'0')>", 16.. one history entry per message
#          (see _HISTORY_LUA), then (end_seq, blob) per summary
# -> 1 committed (or found applied by an earlier attempt of this same call, whose answer was
#    lost: recognised by its mark, never by content, since another writer may have committed
#    identical bytes); "c<stored version>" version conflict; "l<stored token>" lease lost.
#    (Scalars: a table reply costs the server a few thousand instructions more.)
COMMIT = """
local A = ARGV  -- a local: every global lookup costs
local p = KEYS[1]
local f = redis.call('HMGET', p, 'v', 'id', 'l', 'mt', 'lg', 'wi', 'xi')
local id, version = A[2], string.format('%d', A[1] + 1)
local lease, l = A[5], f[3] or ''
-- The lease field as the client expects it: valid (its expiry, later than `now`, was checked
-- by the client: both times are the client's). Else a renewal whose answer was lost may have
-- moved the expiry: the stored lease decides, as it is.
local lost = lease ~= '' and l ~= lease and (
  string.sub(l, 18) ~= string.sub(lease, 18) or string.sub(l, 1, 17) <= A[6])
if lost or (f[1] or '0') ~= A[1] then
  -- An earlier attempt of this same call was applied and its answer lost (its lease may be
  -- released since): recognised by the mark, never by content.
  if f[1] == version and f[2] == id and redis.call('HGET', p, 'c') == A[4] then return 1 end
  if lost then return 'l' .. (string.match(l, '^%d+', 18) or '0') end
  return 'c' .. (f[1] or '0')
end
local I, meta = KEYS[2], A[13]
local key = nil  -- the canonical key, built when needed (see _SESSION_KEY)
-- The row's previous meta, listing group (with '*' while a fold is due), due positions; and
-- rare: the previous ag, gc, pi, nk (read only when meta changed)
local mt, lg, wi, xi, rare = f[4], f[5], f[6], f[7], nil
local fresh = f[2] ~= id
local member
if fresh then
  local B = string.sub(p, 1, -3)
  if f[2] then  -- the replaced session keeps its row (and its expiry) under its own id
    local names = {""" + _ROW_FIELDS_LUA + """}
    local values = redis.call('HMGET', p, unpack(names))
    local row = {}
    for i = 1, #names do
      if values[i] then row[#row + 1] = names[i]; row[#row + 1] = values[i] end
    end
    local name = B .. ':s:' .. f[2]
    redis.call('HSET', name, unpack(row))
    local ttl = redis.call('PTTL', p)
    if ttl > 0 then redis.call('PEXPIRE', name, ttl) end
    redis.call('HDEL', p, 'cm', 'cd')
  end
  key = (""" + _SESSION_KEY + """)
  -- A row already stored under this id (a replaced session committed again) moves into the
  -- pointer: its contribution and due entries are the ones this commit replaces. Its sums are
  -- settled here (the aggregates hold 'cm'/'cd' when set, else 'nm'/'nd'), so it is folded.
  local name = B .. ':s:' .. id
  local old = redis.call('HMGET', name, 'v', 'mt', 'lg', 'wi', 'xi', 'cm', 'cd', 'nm', 'nd',
    'ag', 'gc', 'pi', 'nk')
  mt, lg, wi, xi = old[2], old[3], old[4], old[5]
  rare = {old[10], old[11], old[12], old[13]}
  if old[1] then redis.call('DEL', name) end
  redis.call('HSET', I .. 'ids', id, key)
  member = key .. ' ' .. id
  local agg = I .. 'agg'
  local d = A[11] - (old[6] or old[8] or 0)
  if d ~= 0 then redis.call('HINCRBY', agg, 'm', string.format('%d', d)) end
  d = A[12] - (old[7] or old[9] or 0)
  if d ~= 0 then redis.call('HINCRBY', agg, 'd', string.format('%d', d)) end
  redis.call('HSET', p, 'wi', wi or '', 'xi', xi or '')
end
-- Warn (A[9], position 'wi') and expire (A[10], 'xi'): an entry moves only to an earlier time.
-- Times compare as strings when both have ten integer digits (Python float reprs of every time
-- from 2001 to 2286; parsing such a number costs the server about half a microsecond).
for i = 9, 10 do
  local at, pos, field, index = A[i], wi, 'wi', 'due:warn'
  if i == 10 then pos, field, index = xi, 'xi', 'due:expire' end
  if at ~= '' then
    local move = not pos or pos == ''
    if not move then
      if string.byte(at, 11) == 46 and string.byte(pos, 11) == 46 and string.byte(at) ~= 45
          and string.byte(pos) ~= 45 then
        move = at < pos
      else
        move = tonumber(at) < tonumber(pos)
      end
    end
    if move then
      if not member then
        key = key or (""" + _SESSION_KEY + """)
        member = key .. ' ' .. id
      end
      redis.call('ZADD', I .. index, at, member)
      redis.call('HSET', p, field, at)
    end
  end
end
-- The steady state: same minute, row already filed for a fold ('lg' ends with '*', as A[8]).
if lg ~= A[8] then
  local group = string.sub(A[8], 1, -2)
  local due = lg and string.byte(lg, -1) == 42  -- '*': the row waits for a fold
  if due then lg = string.sub(lg, 1, -2) end
  if fresh then due = false end  -- its sums were settled above
  key = key or (""" + _SESSION_KEY + """)
  if lg ~= group then redis.call('ZADD', I .. 'recent', group, id .. ' ' .. key) end
  if not due and not fresh then  -- the sums were folded: keep those values until the next fold
    local s = redis.call('HMGET', p, 'nm', 'nd')
    if s[1] ~= A[11] or s[2] ~= A[12] then
      redis.call('HSET', p, 'cm', s[1] or '0', 'cd', s[2] or '0')
      member = member or (key .. ' ' .. id)
      redis.call('SADD', I .. 'dirty', member)
      due = true
    end
  end
  if due then redis.call('HSET', p, 'lg', A[8]) else redis.call('HSET', p, 'lg', group) end
end
if A[14] ~= '' then  -- release the lease
  redis.call('HSET', p, 'v', version, 'b', A[3], 'c', A[4], 'la', A[7], 'w', A[9],
    'x', A[10], 'nm', A[11], 'nd', A[12], 'l', A[14])
else
  redis.call('HSET', p, 'v', version, 'b', A[3], 'c', A[4], 'la', A[7], 'w', A[9],
    'x', A[10], 'nm', A[11], 'nd', A[12])
end
if fresh or mt ~= meta then
  if not rare then rare = redis.call('HMGET', p, 'ag', 'gc', 'pi', 'nk') end
  local agg = I .. 'agg'
  local m = cjson.decode(meta)
  local ag = cjson.encode(m[7])
  if rare[1] ~= ag then
    local delta = {}
    if rare[1] then
      local a = cjson.decode(rare[1])
      for i = 1, #a, 2 do delta[a[i]] = (delta[a[i]] or 0) - a[i + 1] end
    end
    local a = m[7]
    for i = 1, #a, 2 do delta[a[i]] = (delta[a[i]] or 0) + a[i + 1] end
    for field, amount in pairs(delta) do
      if amount ~= 0 then redis.call('HINCRBY', agg, field, string.format('%d', amount)) end
    end
  end
  local d = m[6] - (tonumber(rare[4]) or 0)
  if d ~= 0 then redis.call('HINCRBY', agg, 'k', string.format('%d', d)) end
  local pi = rare[3] or ''
  if m[5] ~= '' and (pi == '' or tonumber(pi) > tonumber(m[5])) then
    key = key or (""" + _SESSION_KEY + """)
    redis.call('ZADD', I .. 'due:purge', m[5], member or (key .. ' ' .. id))
    pi = m[5]
  end
  redis.call('HSET', p, 'id', id, 'mt', meta, 'ag', ag, 'st', m[1], 'fl', m[2], 'sp', m[3],
    'gc', m[4], 'p', m[5], 'pi', pi, 'nk', string.format('%d', m[6]))
  if m[4] == '0' and rare[2] and rare[2] ~= '0' then  -- the backstop is lifted
    local B = string.sub(p, 1, -3)
    redis.call('PERSIST', p)
    redis.call('PERSIST', B .. ':h:' .. id)
    redis.call('PERSIST', B .. ':m:' .. id)
  elseif m[4] == '0' and fresh then
    redis.call('PERSIST', p)  -- a pointer created by a lease had a backstop expiry
  end
end
if not A[15] then return 1 end
local gc, spec = string.match(A[15], '^(%d*);(.*)$')
local B = string.sub(p, 1, -3)
if gc ~= '0' then
  redis.call('PEXPIRE', p, gc)
  redis.call('PEXPIRE', B .. ':h:' .. id, gc)
  redis.call('PEXPIRE', B .. ':m:' .. id, gc)
end
if spec ~= '' then
""" + _HISTORY_LUA + """
  local history, summaries = B .. ':h:' .. id, B .. ':m:' .. id
  local nm, ns, drop, dropsum = string.match(spec, '^(%d+) (%d+) (%S+) (%d)$')
  nm, ns = tonumber(nm), tonumber(ns)
  if drop ~= '-' then
    local keep = lower_bound(history, tonumber(drop) + 1)
    if keep > 0 then redis.call('LTRIM', history, keep, -1) end
  end
  if dropsum == '1' then redis.call('DEL', summaries) end
  -- At most 500 values per call: unpack() of a large table overflows Lua's C stack, and the
  -- script stays one atomic step however many calls it makes.
  if nm > 0 then
    local last = redis.call('LINDEX', history, -1)
    local sorted = not last or struct.unpack('>I4', last) < struct.unpack('>I4', A[16])
    for i = 1, nm - 1 do
      if struct.unpack('>I4', A[15 + i]) >= struct.unpack('>I4', A[16 + i]) then
        sorted = false
      end
    end
    local items = {}
    if not sorted then  -- out of order (the engine never writes so): merge and rewrite
      items = redis.call('LRANGE', history, 0, -1)
      redis.call('DEL', history)
    end
    for i = 0, nm - 1 do items[#items + 1] = A[16 + i] end
    if not sorted then
      for i = 1, #items do items[i] = {struct.unpack('>I4', items[i]), i, items[i]} end
      table.sort(items, function(x, y)
        if x[1] ~= y[1] then return x[1] < y[1] end
        return x[2] < y[2]
      end)
      for i = 1, #items do items[i] = items[i][3] end
    end
    for first = 1, #items, 500 do
      redis.call('RPUSH', history, unpack(items, first, math.min(#items, first + 499)))
    end
  end
  for first = 0, ns - 1, 250 do
    local z = {}
    for i = first, math.min(ns, first + 250) - 1 do
      z[#z + 1] = A[16 + nm + 2 * i]; z[#z + 1] = A[16 + nm + 2 * i + 1]
    end
    redis.call('ZADD', summaries, unpack(z))
  end
end
return 1
"""

# KEYS: 1 pointer, 2 row prefix, 3 history prefix, 4 summaries prefix,
#       5-7 due warn/expire/purge, 8 listing index, 9 aggregates, 10 id index,
#       11 quarantine list
# ARGV: 1 canonical key, 2 session id ('' = the current one), 3 mode ('delete'|'quarantine'),
#       4 quarantine entry, 5 how long quarantined history is kept (ms), 6 quarantine cap,
#       7 the unreadable bytes (quarantine: only a current record still holding them is moved),
#       8 expiry backstop (ms) of the pointer once it holds no session (keeps the token counter)
# -> 1 if something was removed
REMOVE = _APPLY_DELTA + _APPLY_SUMS + """
local cur = redis.call('HGET', KEYS[1], 'id')
local id = ARGV[2]
if id == '' then id = cur end
local function file_entry()
  redis.call('LPUSH', KEYS[11], ARGV[4])
  redis.call('LTRIM', KEYS[11], 0, tonumber(ARGV[6]) - 1)
end
if not id then
  if ARGV[3] == 'quarantine' then file_entry() end
  return 0
end
local current = cur == id
local row = KEYS[2] .. id
if current then row = KEYS[1] end
local f = redis.call('HMGET', row, 'b', 'ag', 'nm', 'nk', 'nd', 'cm', 'cd')
if ARGV[3] == 'quarantine' and f[1] ~= ARGV[7] then
  file_entry()  -- replaced meanwhile by another writer: keep that record
  return 0
end
local found = 0
if f[1] then found = 1 end
if f[2] then apply_delta(KEYS[9], f[2], false) end
apply_sums(KEYS[9], f[6] or f[3], f[4], f[7] or f[5], 0, 0, 0)  -- what the aggregates hold
local member = ARGV[1] .. ' ' .. id
for i = 5, 7 do redis.call('ZREM', KEYS[i], member) end
redis.call('ZREM', KEYS[8], id .. ' ' .. ARGV[1])
redis.call('HDEL', KEYS[10], id)
if ARGV[3] == 'quarantine' then
  redis.call('PEXPIRE', KEYS[3] .. id, ARGV[5])
  redis.call('PEXPIRE', KEYS[4] .. id, ARGV[5])
  file_entry()
else
  found = found + redis.call('DEL', KEYS[3] .. id, KEYS[4] .. id)
end
if current then
  redis.call('HDEL', KEYS[1], 'id', """ + _ROW_FIELDS_LUA + """)
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  found = 1
else
  redis.call('DEL', row)
end
if found > 0 then return 1 end
return 0
"""

# Claims due entries of one kind, lazily corrected (see COMMIT): for each entry at or before
# `now`, the session's real due time decides. Gone session or no due time any more: the entry
# is dropped. Due later: the entry moves to that time (nothing is handed out). Due: the entry
# moves to the end of the claim, and the session is handed out with its due time. Rows are read
# from keys built from the member "K id" (in the same slot as the index): the pointer, or the
# row of a replaced session. At most `limit` + 1000 entries are examined per call (bounds the
# call's server time when many early entries must move).
# KEYS: 1 due index of one kind
# ARGV: 1 now, 2 limit, 3 claimed until, 4 row key head, 5 row key tail, 6 pointer key tail,
#       7 due time field ('w'|'x'|'p'), 8 position field ('wi'|'xi'|'pi')
# -> flat list member, due time, member, due time ...
CLAIM_DUE = """
local now, want, claimed = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local field, pos = ARGV[7], ARGV[8]
local budget = want + 1000
local out, n = {}, 0
repeat
  local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
    math.min(want - n, budget))
  for _, member in ipairs(items) do
    budget = budget - 1
    local id = string.match(member, '([^ ]+)$')
    local key = string.sub(member, 1, #member - #id - 1)
    local row = ARGV[4] .. key .. ARGV[6]
    local r = redis.call('HMGET', row, 'id', field)
    if r[1] ~= id then
      row = ARGV[4] .. key .. ARGV[5] .. id
      r = redis.call('HMGET', row, 'v', field)
    end
    local due = r[2] or ''
    if not r[1] then
      redis.call('ZREM', KEYS[1], member)  -- the session is gone
    elseif due == '' then
      redis.call('ZREM', KEYS[1], member)
      redis.call('HSET', row, pos, '')
    elseif tonumber(due) > now then
      redis.call('ZADD', KEYS[1], due, member)
      redis.call('HSET', row, pos, due)
    else
      redis.call('ZADD', KEYS[1], ARGV[3], member)
      redis.call('HSET', row, pos, ARGV[3])
      out[#out + 1] = member; out[#out + 1] = due
      n = n + 1
    end
  end
until #items == 0 or n >= want or budget <= 0 or claimed <= now
return out
"""

# Walks one listing index from a position, server side, and keeps the entries that match the
# filters. The index scores are listing groups, -floor(last_activity / 60): the index gives the
# minutes newest first, and within a minute the exact order (-last_activity, then the member
# "id K") is made by the client, which therefore always asks for whole groups: once `want`
# matches are found, the walk goes on to the end of the current group and stops before the
# next one. The exact time ('la', -last_activity) filters updated_since / updated_before and
# the listing cursor. Rows are read from keys built from the member (they are in the same slot
# as the index, see the layout notes): the pointer first (it holds the current session's row),
# then the row of a replaced session. At most `budget` entries are examined per call.
# KEYS: 1 listing index
# ARGV: 1 min score ('-inf' or a group), 2 continue after this member at the min score ('' =
#       the whole min group), 3 max score ('+inf' or a group), 4 budget, 5 matches wanted,
#       6 mode ('list' | 'agg'), 7 row key head, 8 row key tail,
#       9 status, 10 platform, 11 scope, 12 flow, 13 step, 14 key prefix ('' = any),
#       15 pointer key tail (pointer key = head .. key .. tail),
#       16 exclusive lower bound of -last_activity ('' = none; updated_before),
#       17 inclusive upper bound of -last_activity ('' = none; updated_since),
#       18 cursor -last_activity and 19 cursor member ('' = none): only entries after it in
#       listing order
# -> {state, last score, last member, then per match:
#     list mode: member, -last_activity; agg mode: nothing (aggregates follow as field, amount)}
#    state '1': the end of the range; '0': stopped before a new group with `want` matches;
#    '2': the budget ran out (continue after the last member).
SCAN = """
local min, after, max = ARGV[1], ARGV[2], ARGV[3]
local budget, want, mode = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local status, platform, scope = ARGV[9], ARGV[10], ARGV[11]
local flow, step, kp = ARGV[12], ARGV[13], ARGV[14]
local low, high = tonumber(ARGV[16]), tonumber(ARGV[17])
local cs, cm = tonumber(ARGV[18]), ARGV[19]
local out, agg = {}, {}
local fields = {'st', 'fl', 'sp', 'la'}
if mode ~= 'list' then fields = {'st', 'fl', 'sp', 'la', 'ag', 'nm', 'nk', 'nd'} end
local found, examined, offset = 0, 0, 0
local last_score, last_member = min, after
local group = nil
if after ~= '' then group = tonumber(min) end
local state = '1'
while state == '1' do
  local chunk = redis.call('ZRANGEBYSCORE', KEYS[1], min, max, 'WITHSCORES',
    'LIMIT', offset, 200)
  if #chunk == 0 then break end
  offset = offset + #chunk / 2
  for i = 1, #chunk, 2 do
    local member, score = chunk[i], chunk[i + 1]
    local g = tonumber(score)
    if after == '' or g > tonumber(min) or member > after then
      if found >= want and group and g ~= group then state = '0'; break end
      group = g
      examined = examined + 1
      last_score, last_member = score, member
      local sp = string.find(member, ' ', 1, true)
      local id, key = string.sub(member, 1, sp - 1), string.sub(member, sp + 1)
      local ok = kp == '' or string.sub(key, 1, #kp) == kp
      if ok and (platform ~= '' or scope ~= '') then
        local c1 = string.find(key, ':', 1, true)
        local c2 = string.find(key, ':', c1 + 1, true)
        if platform ~= '' and string.sub(key, 1, c1 - 1) ~= platform then ok = false end
        if scope ~= '' and string.sub(key, c1 + 1, c2 - 1) ~= scope then ok = false end
      end
      if ok then
        local f = redis.call('HMGET', ARGV[7] .. key .. ARGV[15], 'id', unpack(fields))
        if f[1] ~= id then
          f = redis.call('HMGET', ARGV[7] .. key .. ARGV[8] .. id, 'id', unpack(fields))
        end
        local la = tonumber(f[5])
        if not la then ok = false
        elseif status ~= '' and f[2] ~= status then ok = false
        elseif flow ~= '' and f[3] ~= flow then ok = false
        elseif step ~= '' and f[4] ~= step then ok = false
        elseif low and la <= low then ok = false
        elseif high and la > high then ok = false
        elseif cs and (la < cs or (la == cs and member <= cm)) then ok = false end
        if ok then
          found = found + 1
          if mode == 'list' then
            out[#out + 1] = member; out[#out + 1] = f[5]
          else
            local a = cjson.decode(f[6])
            for j = 1, #a, 2 do agg[a[j]] = (agg[a[j]] or 0) + a[j + 1] end
            agg['m'] = (agg['m'] or 0) + (tonumber(f[7]) or 0)
            agg['k'] = (agg['k'] or 0) + (tonumber(f[8]) or 0)
            agg['d'] = (agg['d'] or 0) + (tonumber(f[9]) or 0)
          end
        end
      end
      if examined >= budget then state = '2'; break end
    end
  end
end
local res = {state, last_score, last_member}
for _, v in ipairs(out) do res[#res + 1] = v end
for k, v in pairs(agg) do res[#res + 1] = k; res[#res + 1] = string.format('%d', v) end
return res
"""

# The records of listed sessions, by listing member "id K" (rows found as SCAN finds them).
# KEYS: 1 listing index (names the slot); ARGV: 1 row key head, 2 row key tail, 3 pointer key
# tail, 4.. members -> one blob (or nil, when the session is gone) per member
FETCH = """
local out = {}
for i = 4, #ARGV do
  local member = ARGV[i]
  local sp = string.find(member, ' ', 1, true)
  local id, key = string.sub(member, 1, sp - 1), string.sub(member, sp + 1)
  local f = redis.call('HMGET', ARGV[1] .. key .. ARGV[3], 'id', 'b')
  if f[1] ~= id then f = {id, redis.call('HGET', ARGV[1] .. key .. ARGV[2] .. id, 'b')} end
  out[#out + 1] = f[2]
end
return out
"""

# Folds the sums of rows changed since the last fold into the aggregates (see COMMIT): takes up
# to `limit` members "K id" from the bucket's dirty set, adds each row's sums minus the folded
# values it kept ('cm'/'cd') and drops those. Members whose row is gone or already folded are
# just dropped (a deletion subtracts the folded values itself).
# KEYS: 1 dirty set, 2 aggregates; ARGV: 1 row key head, 2 row key tail, 3 pointer key tail,
# 4 limit -> members left in the dirty set
FOLD = """
local dm, dd = 0, 0
for _, member in ipairs(redis.call('SPOP', KEYS[1], ARGV[4])) do
  local id = string.match(member, '([^ ]+)$')
  local key = string.sub(member, 1, #member - #id - 1)
  local row = ARGV[1] .. key .. ARGV[3]
  local r = redis.call('HMGET', row, 'id', 'cm', 'cd', 'nm', 'nd', 'lg')
  if r[1] ~= id then
    row = ARGV[1] .. key .. ARGV[2] .. id
    r = redis.call('HMGET', row, 'v', 'cm', 'cd', 'nm', 'nd', 'lg')
  end
  if r[1] and r[2] then
    dm = dm + (tonumber(r[4]) or 0) - (tonumber(r[2]) or 0)
    dd = dd + (tonumber(r[5]) or 0) - (tonumber(r[3]) or 0)
    redis.call('HDEL', row, 'cm', 'cd')
    if r[6] and string.byte(r[6], -1) == 42 then  -- '*': filed; the next change files it again
      redis.call('HSET', row, 'lg', string.sub(r[6], 1, -2))
    end
  end
end
if dm ~= 0 then redis.call('HINCRBY', KEYS[2], 'm', string.format('%d', dm)) end
if dd ~= 0 then redis.call('HINCRBY', KEYS[2], 'd', string.format('%d', dd)) end
return redis.call('SCARD', KEYS[1])
"""
