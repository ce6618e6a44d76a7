"""Where a view's snapshots live in Redis: the key names, and the Lua scripts that read and move the pointer.

Key layout (``P`` = project, ``V`` = view, ``N`` = publication version)::

    P:V:_live              hash: version, step, previous, watermark, storage_fingerprint, features,
                           published_at, ``confirmed_at`` (windowed views: the tick the snapshot is current at),
                           and ``held`` while a rollback holds the view (publications are refused)
    P:V:_history           hash: rollback point -> the pointer fields it was committed with (JSON), for each kept
                           point: ``N`` for the whole snapshot N, ``N.s`` for the s-th run updated in place in it
    P:V:_undo:N.s          hash: entity key -> its row before the in-place run N.s wrote it ("" for none): how
                           a rollback undoes that run; kept while its point is
    P:V:_version           string: the live version again, readable by MGET next to the rows; "N@C" when the
                           pointer has ``confirmed_at`` C (a reader serves event time max(row's, C))
    P:V:_counter           INCR counter handing out publication versions
    P:V:_staged            hash: version -> "watermark storage_fingerprint" of publications started but not
                           committed
    P:V:_versions          set: every version that may have rows (``unknown``: rows from before this set)
    P:V:vN:<entity key>    one row (see online.encoding) of snapshot N
    P:V:_pushed            hash: entity key -> the newest row pushed since the snapshots caught up with it

On Redis Cluster every name starts with the hash tag ``{P:V}:`` instead of ``P:V:`` (``tagged``): all of a view's
keys share one slot, so the scripts, which build row names from the pointer, run on the one node that holds the view
(a cluster refuses a script's key in another slot). A single server keeps the untagged names.

Rollback points: every commit is one, the whole snapshot ``N`` and each run updated in place in it (``N.s``, the
pointer's ``step``). An in-place run keeps each row it overwrites in its undo log, in the same script as the write; a
rollback to ``N.s`` undoes the runs after it, newest first, in one script (so its cost grows with the entities
those runs changed). The history keeps the newest ``online.keep_snapshots`` points; a point dropped takes its undo
log with it (it could only lead back to older points, already dropped).
"""

from __future__ import annotations

import functools
import re

UNKNOWN_VERSIONS = "unknown"  # a member of P:V:_versions: rows of versions it does not list may exist
_MGET_CHUNK = 500  # Lua's unpack() has a stack limit of ~8000 values

# KEYS: one pointer per view. ARGV[1]: entity count n; ARGV[2..V+1]: "P:V:v" per view;
# then n encoded entity keys per view, view after view.
READ_LUA = """
local n = tonumber(ARGV[1])
local nviews = #KEYS
local out = {}
for i = 1, nviews do
  local ptr = redis.call('HMGET', KEYS[i], 'version', 'features', 'confirmed_at')
  local values = {}
  if ptr[1] then
    local prefix = ARGV[1 + i] .. ptr[1] .. ':'
    local base = 1 + nviews + (i - 1) * n
    local chunk = {}
    for j = 1, n do
      chunk[#chunk + 1] = prefix .. ARGV[base + j]
      if #chunk == MGET_CHUNK or j == n then
        local got = redis.call('MGET', unpack(chunk))
        for k = 1, #chunk do values[#values + 1] = got[k] end
        chunk = {}
      end
    end
  end
  out[i] = {ptr[1] and ptr[3] and (ptr[1] .. '@' .. ptr[3]) or ptr[1], ptr[2], values}
end
return out
""".replace("MGET_CHUNK", str(_MGET_CHUNK))

# Lua: how two encoded rows (online.encoding: "[event_us,created_us|null,...") order by event time, then created
# time (null first): -1, 0 or 1. The times are compared as decimal text, so every int64 is exact (Lua's numbers are
# doubles, exact only up to 2^53 microseconds, the year 2255).
ROW_ORDER_LUA = """
local function int_order(x, y)
  if x == y then return 0 end
  local nx, ny = x:sub(1, 1) == '-', y:sub(1, 1) == '-'
  if nx ~= ny then return nx and -1 or 1 end
  local c
  if #x ~= #y then c = (#x < #y) and -1 or 1 else c = (x < y) and -1 or 1 end
  if nx then return -c end
  return c
end
local function row_order(a, b)
  local ea, ca = string.match(a, '^%[(%-?%d+),([^,%]]+)')
  local eb, cb = string.match(b, '^%[(%-?%d+),([^,%]]+)')
  local c = int_order(ea, eb)
  if c ~= 0 then return c end
  if ca == cb then return 0 end
  if ca == 'null' then return -1 end
  if cb == 'null' then return 1 end
  return int_order(ca, cb)
end
"""

# Lua: rollback points. A point is "N" (the whole snapshot N) or "N.s" (its s-th run updated in place); points
# order by version, then step. prune_history keeps the newest `keep` points of the history (never `spare1`/`spare2`)
# and deletes each dropped point's undo log. set_confirmed records the tick a windowed view's snapshot is current
# at ('' for none) in the pointer and in the version key ("N@C"), so a reader's MGET sees it move.
POINTS_LUA = """
local function point_of(version, step)
  if not step or step == '' or step == '0' then return version end
  return version .. '.' .. step
end
local function split_point(p)
  local v, s = string.match(p, '^(%d+)%.(%d+)$')
  if v then return tonumber(v), tonumber(s) end
  return tonumber(p), 0
end
local function point_newer(a, b)
  local va, sa = split_point(a)
  local vb, sb = split_point(b)
  if va ~= vb then return va > vb end
  return sa > sb
end
local function set_confirmed(pointer, version_key, version, confirmed)
  if confirmed and confirmed ~= '' then
    redis.call('HSET', pointer, 'confirmed_at', confirmed)
    redis.call('SET', version_key, version .. '@' .. confirmed)
  else
    redis.call('HDEL', pointer, 'confirmed_at')
    redis.call('SET', version_key, version)
  end
end
local function prune_history(history, undo_prefix, keep, spare1, spare2)
  local kept = redis.call('HKEYS', history)
  if #kept <= keep then return end
  table.sort(kept, point_newer)
  for i = keep + 1, #kept do
    if kept[i] ~= spare1 and kept[i] ~= spare2 then
      redis.call('HDEL', history, kept[i])
      redis.call('DEL', undo_prefix .. kept[i])
    end
  end
end
"""

# KEYS[1]: pointer, KEYS[2]: staged hash, KEYS[3]: version key, KEYS[4]: pushed hash, KEYS[5]: history hash.
# ARGV: version, watermark, storage fingerprint, features, published_at, the rows' prefix ("P:V:v"), snapshots
# kept. Returns {status, previous version or the hold}: 1 committed, 0 refused (an older watermark of the same
# table, or, across definitions, a publication started before the live one: watermarks are versions of one
# table and mean nothing across two), -1 no longer
# staged, -2 refused because a rollback holds the view (the second item says which). The rows pushed since the
# snapshots caught up with them go into the new snapshot where they are newer than its row: a run computed
# before a push landed never hides it. A pushed row the new snapshot holds (or holds something newer than)
# leaves the hash; one of another definition (other features) is dropped, as its encoding means nothing to the
# new snapshot. The committed snapshot's pointer fields go into the history, which keeps the newest ARGV[7]
# points (see POINTS_LUA; ARGV[8]: the undo logs' prefix "P:V:_undo:"). ARGV[9]: the tick the snapshot is current at
# (windowed views; '' for none), in microseconds.
COMMIT_LUA = (
    ROW_ORDER_LUA
    + POINTS_LUA
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {-1, false} end
redis.call('HDEL', KEYS[2], ARGV[1])
local live = redis.call('HMGET', KEYS[1], 'version', 'watermark', 'features', 'held', 'storage_fingerprint', 'step')
if live[4] then return {-2, live[4]} end
if live[5] == ARGV[3] then
  if live[2] and tonumber(live[2]) > tonumber(ARGV[2]) then return {0, live[1]} end
elseif live[1] and tonumber(live[1]) > tonumber(ARGV[1]) then
  return {0, live[1]}
end
if live[3] ~= ARGV[4] then
  redis.call('DEL', KEYS[4])
else
  local prefix = ARGV[6] .. ARGV[1] .. ':'
  local pushed = redis.call('HGETALL', KEYS[4])
  for i = 1, #pushed, 2 do
    local current = redis.call('GET', prefix .. pushed[i])
    if current and row_order(pushed[i + 1], current) <= 0 then
      redis.call('HDEL', KEYS[4], pushed[i])
    else
      redis.call('SET', prefix .. pushed[i], pushed[i + 1])
    end
  end
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'step', '0', 'previous', live[1] or '', 'watermark', ARGV[2],
           'storage_fingerprint', ARGV[3], 'features', ARGV[4], 'published_at', ARGV[5])
set_confirmed(KEYS[1], KEYS[3], ARGV[1], ARGV[9])
redis.call('HSET', KEYS[5], ARGV[1], cjson.encode({watermark = ARGV[2], storage_fingerprint = ARGV[3],
                                                    features = ARGV[4], published_at = ARGV[5],
                                                    confirmed_at = ARGV[9]}))
prune_history(KEYS[5], ARGV[8], tonumber(ARGV[7]), ARGV[1], live[1] and point_of(live[1], live[6]))
return {1, live[1]}
"""
)

# KEYS[1]: pointer, KEYS[2]: version key, KEYS[3]: pushed hash, KEYS[4]: counter, KEYS[5]: versions set. ARGV:
# storage fingerprint, features, published_at, the rows' prefix ("P:V:v"), then (entity key, row) pairs, one
# per entity. Each row replaces the live snapshot's row of its entity unless that one is newer (event time, then
# created time; the same times: the push is a correction and wins, as a restated row does offline), and is kept
# in the pushed hash for the next commit (COMMIT_LUA). A view never published gets an empty snapshot of
# watermark -1, which any materialization replaces. Returns {1, rows applied}, or {-1, live features} when
# the live snapshot is of another definition (nothing written).
PUSH_LUA = (
    ROW_ORDER_LUA
    + """
local ptr = redis.call('HMGET', KEYS[1], 'version', 'features')
local version = ptr[1]
if not version then
  version = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[1], 'version', version, 'previous', '', 'watermark', -1,
             'storage_fingerprint', ARGV[1], 'features', ARGV[2], 'published_at', ARGV[3])
  redis.call('SET', KEYS[2], version)
  redis.call('SADD', KEYS[5], version)
elseif ptr[2] ~= ARGV[2] then
  return {-1, ptr[2] or ''}
end
local prefix = ARGV[4] .. version .. ':'
local applied = 0
for i = 5, #ARGV, 2 do
  local current = redis.call('GET', prefix .. ARGV[i])
  if not current or row_order(ARGV[i + 1], current) >= 0 then
    redis.call('SET', prefix .. ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    applied = applied + 1
  end
end
return {1, applied}
"""
)

# KEYS[1]: pointer, KEYS[2]: history hash, KEYS[3]: the undo log of the run (P:V:_undo:N.s). ARGV: the live
# version N the run updates, the live step s-1 it started from, the features it was computed with, the rows'
# prefix ("P:V:v"), then (entity key, row) pairs. An incremental publication (online.redis_publication.RedisUpdate):
# each row replaces the live snapshot's row of its entity unless that one is newer (a push since), like a push
# but kept nowhere else: the table already holds it. A row equal to the one served is not written (an engine
# hands over every entity of the data files a commit rewrote). The row replaced (or '' for none) goes into the
# run's undo log first, unless the log holds the entity already (a run that failed halfway and is done again keeps
# the rows from before the first try). Returns {1, rows written}, or {-1, reason} when the live snapshot is no
# longer that point of that definition, a rollback went back to an older snapshot than the newest kept one (the
# next run publishes a whole snapshot, so rollback points keep their order), or a rollback holds it (nothing
# written).
UPDATE_LUA = (
    ROW_ORDER_LUA
    + POINTS_LUA
    + """
local ptr = redis.call('HMGET', KEYS[1], 'version', 'features', 'held', 'step')
if ptr[3] then return {-1, 'held'} end
if ptr[1] ~= ARGV[1] or ptr[2] ~= ARGV[3] or (ptr[4] or '0') ~= ARGV[2] then return {-1, 'moved'} end
for _, p in ipairs(redis.call('HKEYS', KEYS[2])) do
  local v = split_point(p)
  if v > tonumber(ARGV[1]) then return {-1, 'moved'} end
end
local prefix = ARGV[4] .. ARGV[1] .. ':'
local applied = 0
for i = 5, #ARGV, 2 do
  local current = redis.call('GET', prefix .. ARGV[i])
  if current ~= ARGV[i + 1] and (not current or row_order(ARGV[i + 1], current) >= 0) then
    redis.call('HSETNX', KEYS[3], ARGV[i], current or '')
    redis.call('SET', prefix .. ARGV[i], ARGV[i + 1])
    applied = applied + 1
  end
end
return {1, applied}
"""
)

# KEYS[1]: pointer, KEYS[2]: history hash, KEYS[3]: version key. ARGV: the live version N updated, the step s-1 the
# run started from, the new watermark, published_at, the undo logs' prefix ("P:V:_undo:"), the points kept, the
# tick the snapshot is now current at (windowed views; '' for none). Records that the live
# snapshot now holds the table at that watermark, as rollback point N.s: {1, point} done, {0, reason} when another
# publication became live meanwhile or a newer watermark is live, {-2, hold} while a rollback holds the view.
UPDATE_COMMIT_LUA = (
    POINTS_LUA
    + """
local live = redis.call('HMGET', KEYS[1], 'version', 'watermark', 'held', 'storage_fingerprint', 'features', 'step')
if live[3] then return {-2, live[3]} end
if live[1] ~= ARGV[1] or (live[6] or '0') ~= ARGV[2] then return {0, 'moved'} end
if tonumber(live[2]) > tonumber(ARGV[3]) then return {0, 'newer'} end
local step = tostring(tonumber(ARGV[2]) + 1)
local point = point_of(ARGV[1], step)
redis.call('HSET', KEYS[1], 'watermark', ARGV[3], 'published_at', ARGV[4], 'step', step)
set_confirmed(KEYS[1], KEYS[3], ARGV[1], ARGV[7])
redis.call('HSET', KEYS[2], point, cjson.encode({watermark = ARGV[3], storage_fingerprint = live[4],
                                                 features = live[5], published_at = ARGV[4],
                                                 confirmed_at = ARGV[7]}))
prune_history(KEYS[2], ARGV[5], tonumber(ARGV[6]), point, nil)
return {1, point}
"""
)

# KEYS[1]: counter, KEYS[2]: staged hash, KEYS[3]: versions set. ARGV[1]: watermark, ARGV[2]: storage
# fingerprint. Returns the new version,
# staged and listed as a candidate for deletion before any of its rows exist. A view published before the
# versions set existed gets the 'unknown' member: its first cleanup scans for every version once.
START_LUA = """
local version = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], version, ARGV[1] .. ' ' .. ARGV[2])
if version > 1 and redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SADD', KEYS[3], 'UNKNOWN') end
redis.call('SADD', KEYS[3], version)
return version
""".replace("UNKNOWN", UNKNOWN_VERSIONS)

# KEYS[1]: pointer, KEYS[2]: staged hash, KEYS[3]: history hash; ARGV: versions. Returns those that are garbage
# and drops them from the staged hash, so none of them can commit afterwards and their keys may be unlinked
# without a second look. Kept: the live and previous versions, the snapshots the history keeps, and staged
# publications that may still commit (of the live definition: a higher watermark than the live one, or the same
# watermark and a later version; of another definition: started after the live one).
GARBAGE_LUA = """
local ptr = redis.call('HMGET', KEYS[1], 'version', 'previous', 'watermark', 'storage_fingerprint')
local live = tonumber(ptr[1] or '0')
local livewm = tonumber(ptr[3] or '-1')
local historic = {}  -- the versions the history keeps a point of
for _, p in ipairs(redis.call('HKEYS', KEYS[3])) do historic[string.match(p, '^%d+')] = true end
local garbage = {}
for i = 1, #ARGV do
  local v = ARGV[i]
  if v ~= ptr[1] and v ~= ptr[2] and not historic[v] then
    local pending = false
    local staged = redis.call('HGET', KEYS[2], v)
    if staged then
      local wm, fp = string.match(staged, '^(%S+) ?(.*)$')
      wm = tonumber(wm)
      local newer
      if fp == '' or fp == ptr[4] then  -- '': staged before fingerprints were recorded
        newer = wm > livewm or (wm == livewm and tonumber(v) > live)
      else
        newer = tonumber(v) > live
      end
      if newer then
        pending = true
      else
        redis.call('HDEL', KEYS[2], v)
      end
    end
    if not pending then garbage[#garbage + 1] = v end
  end
end
return garbage
"""


# KEYS[1]: pointer, KEYS[2]: version key, KEYS[3]: history hash. ARGV[1]: the point to make live ('' for the
# newest kept one older than the live one), ARGV[2]: the hold (who and when, as text), ARGV[3]: the undo logs'
# prefix ("P:V:_undo:"), ARGV[4]: the rows' prefix ("P:V:v"). Makes that point live at once with the pointer fields
# it was committed with, and holds the view: commits are refused until a release. A point N.s (or N) is reached by
# making snapshot N live and undoing, newest first, the runs updated in place in N after s (and one cut short by a
# failure, whose undo log exists without a point): their rows go back to what they were, and their points and undo
# logs are dropped (the Delta table still holds those runs; the next run after the release publishes them again).
# Returns {1, from, to} or {0, reason}.
ROLLBACK_LUA = (
    POINTS_LUA
    + """
local live = redis.call('HMGET', KEYS[1], 'version', 'step')
if not live[1] then return {0, 'never published'} end
local current = point_of(live[1], live[2])
local target = ARGV[1]
if target == '' then
  local best = nil
  for _, p in ipairs(redis.call('HKEYS', KEYS[3])) do
    if point_newer(current, p) and (best == nil or point_newer(p, best)) then best = p end
  end
  if best == nil then return {0, 'no snapshot older than the live one is kept'} end
  target = best
end
local meta = redis.call('HGET', KEYS[3], target)
if not meta then return {0, 'snapshot ' .. target .. ' is not kept'} end
local version, step = split_point(target)
version = tostring(version)
local undone = {}
local s = step + 1
while true do
  local p = point_of(version, tostring(s))
  if redis.call('HEXISTS', KEYS[3], p) == 0 and redis.call('EXISTS', ARGV[3] .. p) == 0 then break end
  undone[#undone + 1] = p
  s = s + 1
end
if target == current and #undone == 0 then return {0, 'snapshot ' .. target .. ' is already live'} end
local rows = ARGV[4] .. version .. ':'
for i = #undone, 1, -1 do
  local log = redis.call('HGETALL', ARGV[3] .. undone[i])
  for j = 1, #log, 2 do
    if log[j + 1] == '' then
      redis.call('DEL', rows .. log[j])
    else
      redis.call('SET', rows .. log[j], log[j + 1])
    end
  end
  redis.call('DEL', ARGV[3] .. undone[i])
  redis.call('HDEL', KEYS[3], undone[i])
end
local m = cjson.decode(meta)
redis.call('HSET', KEYS[1], 'version', version, 'step', tostring(step), 'previous', live[1],
           'watermark', m.watermark, 'storage_fingerprint', m.storage_fingerprint, 'features', m.features,
           'published_at', m.published_at, 'held', ARGV[2])
set_confirmed(KEYS[1], KEYS[2], version, m.confirmed_at)
return {1, current, target}
"""
)


def glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class ViewKeys:
    """The key names of one view."""

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def of(project: str, view: str, tagged: bool = False) -> ViewKeys:
        """The (cached) key names of ``view`` in ``project``: a read asks for them on every request."""
        return ViewKeys(project, view, tagged)

    def __init__(self, project: str, view: str, tagged: bool = False) -> None:
        # On a cluster every key of the view carries the hash tag {P:V}: one slot, so the scripts run on one node.
        base = f"{{{project}:{view}}}:" if tagged else f"{project}:{view}:"
        self.prefix = base
        self.pointer = base + "_live"
        self.version = base + "_version"
        self.counter = base + "_counter"
        self.staged = base + "_staged"
        self.versions = base + "_versions"
        self.pushed = base + "_pushed"
        self.history = base + "_history"
        self.undo_prefix = base + "_undo:"
        self.data_prefix = base + "v"
        self.data_pattern = glob_escape(base) + "v[0-9]*"

    def version_prefix(self, version: int) -> bytes:
        """The prefix of every row key of snapshot ``version``."""
        return f"{self.data_prefix}{version}:".encode()

    def undo(self, point: str) -> str:
        """The undo log of rollback point ``point`` (``N.s``: the rows the s-th in-place run of snapshot N replaced)."""
        return self.undo_prefix + point

    def version_of(self, key: bytes) -> str | None:
        """The version a row key belongs to; None for a key that is no row of this view."""
        rest = key[len(self.data_prefix) :]
        version, sep, _ = rest.partition(b":")
        return version.decode() if sep and version.isdigit() else None
