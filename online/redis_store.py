"""The Redis online store: atomic per-view snapshots and one-round-trip reads.

Key layout (``P`` = project, ``V`` = view, ``N`` = publication version)::

    P:V:_live              hash: version, previous, watermark, storage_fingerprint, features, published_at
    P:V:_version           string: the live version again, readable by MGET next to the rows
    P:V:_counter           INCR counter handing out publication versions
    P:V:_staged            hash: version -> watermark of publications started but not committed
    P:V:_versions          set: every version that may have rows (``unknown``: rows from before this set)
    P:V:vN:<entity key>    one row (see online.encoding) of snapshot N

Publish: :meth:`RedisOnlineStore.start_publication` takes a new version ``N``; :meth:`RedisPublication.write`
(from any process) writes ``P:V:vN:*`` with ``MSET`` in batches of 1000; :meth:`RedisPublication.commit`
flips ``P:V:_live`` to ``N`` in one Lua script, only if its watermark is >= the live one. Then versions
other than the live and the previous one are deleted: ``P:V:_versions`` names the candidates, so a commit with
nothing to delete (the first two publications of a view) scans no keys; one Lua script declares which of them
are garbage (never live again: not live, not previous, not a staged publication that may still commit), and
only those versions' keys are scanned for and unlinked, then the versions leave the set.

Read: one ``MGET`` per :meth:`RedisOnlineStore.read` call fetches every view's ``_version`` key and the entity
keys of the version this store last saw live. ``MGET`` is atomic: when the versions it returns are the ones
assumed, the rows are those of the live snapshots at that instant. Otherwise (the first read, or the first one
after a commit) one Lua script reads every pointer and the rows of the versions it names, atomically too, and
the store remembers them. Either way a read sees one snapshot per view and is never stale: the first read
after a commit returns the new values. (The fast path has no Lua: a script's cost inside Redis grows with the
rows it returns, each one copied into and out of a Lua string.)

The Lua scripts build key names from the pointer, which Redis Cluster does not allow: standalone Redis (or
Valkey, or a primary with replicas) only, for now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from features.dtypes import DType, from_micros
from features.errors import ConfigError, OnlineStoreError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, ViewPlan
from features.protocols import LiveSnapshot, OnlineValues, iter_batches
from online.encoding import encode_batch, encode_entity_keys, rows_decoder

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

    from features.config import RepoConfig
    from online.pipelined import PipelinedRedis

logger = logging.getLogger(__name__)

WRITE_BATCH = 1000
SCAN_BATCH = 1000
UNKNOWN_VERSIONS = "unknown"  # a member of P:V:_versions: rows of versions it does not list may exist
# Every this many versions a commit scans all of the view's keys anyway. The set misses only rows a refused
# publication wrote after its version was deleted and before it crashed (a finished one deletes them itself).
FULL_SCAN_EVERY = 100
_MGET_CHUNK = 500  # Lua's unpack() has a stack limit of ~8000 values
_DECODER_CACHE = 256  # decoders kept per store; a server asks for a handful of feature selections
# What a snapshot lacks of the requested features, and the decoder of its rows (see RedisOnlineStore._decoder).
_Decoder = tuple[frozenset[str], Callable[[Sequence[bytes | None]], tuple[list[list[Any]], list[int | None]]]]

# KEYS: one pointer per view. ARGV[1]: entity count n; ARGV[2..V+1]: "P:V:v" per view;
# then n encoded entity keys per view, view after view.
_READ_LUA = """
local n = tonumber(ARGV[1])
local nviews = #KEYS
local out = {}
for i = 1, nviews do
  local ptr = redis.call('HMGET', KEYS[i], 'version', 'features')
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
  out[i] = {ptr[1], ptr[2], values}
end
return out
""".replace("MGET_CHUNK", str(_MGET_CHUNK))

# KEYS[1]: pointer, KEYS[2]: staged hash, KEYS[3]: version key. ARGV: version, watermark, storage fingerprint,
# features, published_at. Returns {status, previous version}: 1 committed, 0 refused (older watermark), -1 no
# longer staged.
_COMMIT_LUA = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {-1, false} end
redis.call('HDEL', KEYS[2], ARGV[1])
local live = redis.call('HMGET', KEYS[1], 'version', 'watermark')
if live[2] and tonumber(live[2]) > tonumber(ARGV[2]) then return {0, live[1]} end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'previous', live[1] or '', 'watermark', ARGV[2],
           'storage_fingerprint', ARGV[3], 'features', ARGV[4], 'published_at', ARGV[5])
redis.call('SET', KEYS[3], ARGV[1])
return {1, live[1]}
"""

# KEYS[1]: counter, KEYS[2]: staged hash, KEYS[3]: versions set. ARGV[1]: watermark. Returns the new version,
# staged and listed as a candidate for deletion before any of its rows exist. A view published before the
# versions set existed gets the 'unknown' member: its first cleanup scans for every version once.
_START_LUA = """
local version = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], version, ARGV[1])
if version > 1 and redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SADD', KEYS[3], 'UNKNOWN') end
redis.call('SADD', KEYS[3], version)
return version
""".replace("UNKNOWN", UNKNOWN_VERSIONS)

# KEYS[1]: pointer, KEYS[2]: staged hash; ARGV: versions. Returns those that are garbage and drops them from the
# staged hash, so none of them can commit afterwards and their keys may be unlinked without a second look. Kept:
# the live and previous versions, and staged publications that may still commit (a higher watermark than the
# live one, or the same watermark and a later version).
_GARBAGE_LUA = """
local ptr = redis.call('HMGET', KEYS[1], 'version', 'previous', 'watermark')
local live = tonumber(ptr[1] or '0')
local livewm = tonumber(ptr[3] or '-1')
local garbage = {}
for i = 1, #ARGV do
  local v = ARGV[i]
  if v ~= ptr[1] and v ~= ptr[2] then
    local pending = false
    local wm = redis.call('HGET', KEYS[2], v)
    if wm then
      wm = tonumber(wm)
      if wm > livewm or (wm == livewm and tonumber(v) > live) then
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


def connect(url: str, *, connect_timeout: float, timeout: float) -> redis.Redis:
    """A client with bounded waits: connect and socket timeouts, one immediate retry on a dropped connection
    (a pooled connection may have been closed by a server restart), never on a timeout."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            retry_on_timeout=False,
            health_check_interval=0,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid online store URL {redact(url)!r}: {exc}") from exc


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


@contextlib.contextmanager
def translate_errors(url: str, action: str) -> Iterator[None]:
    """Turn redis and socket errors into :class:`OnlineStoreError` naming the server and what was tried."""
    import redis

    try:
        yield
    except redis.RedisError as exc:
        kind = "did not answer in time" if isinstance(exc, redis.TimeoutError) else "failed"
        raise OnlineStoreError(f"online store at {redact(url)} {kind} while {action}: {exc}") from exc
    except OSError as exc:
        raise OnlineStoreError(f"online store at {redact(url)} failed while {action}: {exc}") from exc


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class _Keys:
    """The key names of one view."""

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def of(project: str, view: str) -> _Keys:
        return _Keys(project, view)

    def __init__(self, project: str, view: str) -> None:
        base = f"{project}:{view}:"
        self.pointer = base + "_live"
        self.version = base + "_version"
        self.counter = base + "_counter"
        self.staged = base + "_staged"
        self.versions = base + "_versions"
        self.data_prefix = base + "v"
        self.data_pattern = _glob_escape(base) + "v[0-9]*"

    def version_prefix(self, version: int) -> bytes:
        return f"{self.data_prefix}{version}:".encode()

    def version_of(self, key: bytes) -> str | None:
        rest = key[len(self.data_prefix) :]
        version, sep, _ = rest.partition(b":")
        return version.decode() if sep and version.isdigit() else None


# Not pickled (see __getstate__): connections, lock and caches belong to one process.
_PER_PROCESS = ("_client", "_read_script", "_lock", "_decoders", "_seen_live", "_free", "_free_pid", "_pipelined")


class RedisOnlineStore:
    """The online store on one Redis (or Valkey) server.

    ``url`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL, or ``"embedded"``: a server for this
    repository started on first use (see :mod:`online.embedded`), which needs ``state_dir``.

    >>> store = RedisOnlineStore("redis://localhost:6379/0", project="fraud")  # doctest: +SKIP
    >>> store.read([(view, ["amount_sum_7d"])], {"card_id": [42]})            # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        project: str = "skewless",
        state_dir: Path | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        if url == "embedded" and state_dir is None:
            raise ConfigError("the embedded online store needs a state directory (state_dir=)")
        if not project or any(c in project for c in ":{}"):
            raise ConfigError(f"project name {project!r} may not be empty or contain ':', '{{' or '}}'")
        self.url = url
        self.project = project
        self.state_dir = state_dir
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._client: redis.Redis | None = None
        self._resolved: str | None = None
        self._read_script: Any = None
        self._lock = threading.Lock()  # the serving API shares one store between threads
        # (view name, requested names, snapshot features) -> (the view plan, its decoder); see _decoder
        self._decoders: dict[tuple[str, tuple[str, ...], bytes], tuple[ViewPlan, _Decoder]] = {}
        # view -> (version, features) last seen live; (None, None): seen without a live version (not published)
        self._seen_live: dict[str, tuple[bytes | None, bytes | None]] = {}
        self._free: list[Any] = []  # idle connections of this process, kept out of the pool (see _roundtrip)
        self._free_pid = os.getpid()
        self._pipelined: PipelinedRedis | None = None  # read_async's connection, for one event loop

    @classmethod
    def from_config(cls, config: RepoConfig) -> RedisOnlineStore:
        """The store ``skewless.yaml`` describes (``online: url:``)."""
        return cls(config.resolved_online_url(), project=config.project, state_dir=config.state_dir())

    # -- connection -------------------------------------------------------------------------------------------
    @property
    def resolved_url(self) -> str:
        """The server's URL; for ``"embedded"``, starts (or finds) the repository's server."""
        with self._lock:
            if self._resolved is None:
                if self.url == "embedded":
                    from online.embedded import ensure_embedded_server

                    assert self.state_dir is not None  # checked in __init__
                    self._resolved = ensure_embedded_server(self.state_dir)
                else:
                    self._resolved = self.url
            return self._resolved

    @property
    def _where(self) -> str:
        return self._resolved or self.url

    def client(self) -> redis.Redis:
        """The (thread-safe, pooled) redis client, connected on first use."""
        if self._client is None:
            url = self.resolved_url
            with self._lock:
                if self._client is None:
                    client = connect(url, connect_timeout=self.connect_timeout, timeout=self.timeout)
                    self._read_script = client.register_script(_READ_LUA)
                    self._client = client
        return self._client

    def _idle_connections(self) -> list[Any]:
        """This process's idle connections (a forked child starts with none: its parent's sockets are not its)."""
        if self._free_pid != os.getpid():
            self._free, self._free_pid = [], os.getpid()
        return self._free

    def ping(self) -> None:
        """Raise :class:`OnlineStoreError` unless the server answers."""
        with translate_errors(self._where, "pinging"):
            self.client().ping()

    def close(self) -> None:
        self._free = []
        if self._pipelined is not None:
            self._pipelined.close()
            self._pipelined = None
        if self._client is not None:
            self._client.close()  # disconnects every connection of its pool, the idle ones kept here too
            self._client = None

    def __enter__(self) -> RedisOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (Spark may ship it to executors): the connection and lock are per process.
        return {k: v for k, v in self.__dict__.items() if k not in _PER_PROCESS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.update(
            _client=None,
            _read_script=None,
            _lock=threading.Lock(),
            _decoders={},
            _seen_live={},
            _free=[],
            _pipelined=None,
        )
        self._free_pid = os.getpid()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({redact(self.url)!r}, project={self.project!r})"

    # -- publish ----------------------------------------------------------------------------------------------
    def start_publication(self, view: ViewPlan, *, watermark: int) -> RedisPublication:
        """Reserve a new version of ``view``; rows written to it stay invisible until ``commit()``."""
        keys = _Keys(self.project, view.name)
        with translate_errors(self._where, f"starting a publication of view '{view.name}'"):
            version = int(self.client().eval(_START_LUA, 3, keys.counter, keys.staged, keys.versions, int(watermark)))
        return RedisPublication(
            url=self.resolved_url,
            project=self.project,
            view=view.name,
            key_names=view.key_names,
            key_dtypes=tuple(k.dtype for k in view.join_keys),
            features=tuple((f.name, f.dtype, f.fingerprint) for f in view.features),
            storage_fingerprint=view.storage_fingerprint,
            watermark=int(watermark),
            version=version,
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
        )

    def live_snapshot(self, view: ViewPlan) -> LiveSnapshot | None:
        """What the live snapshot of ``view`` was published from (its pointer); None before any commit."""
        pointer = self.live_version(view.name)
        if pointer is None or "watermark" not in pointer:
            return None
        return LiveSnapshot(
            watermark=int(pointer["watermark"]),
            storage_fingerprint=pointer.get("storage_fingerprint", ""),
            feature_fingerprints=tuple((str(n), str(f)) for n, f in orjson.loads(pointer.get("features", "[]"))),
            published_at=from_micros(int(pointer.get("published_at", "0"))),
        )

    def live_version(self, view: str) -> dict[str, str] | None:
        """The pointer of ``view`` (version, watermark, storage_fingerprint, ...) or None before any commit."""
        with translate_errors(self._where, f"reading the pointer of view '{view}'"):
            raw = self.client().hgetall(_Keys(self.project, view).pointer)
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None

    # -- read -------------------------------------------------------------------------------------------------
    def read(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        """Read features of many entities across many views in one round trip: one ``MGET`` of the versions seen
        live before, or, when one of them moved (the first read after a commit), one more: the Lua read.

        ``entities`` maps each join key of the requested views to its values (one per entity), already checked
        against the key types (see :func:`features.lookup.lookup`).
        """
        if not requests:
            return []
        read = _Read(self, requests, entities)
        with translate_errors(self._where, "reading features"):
            client = self.client()
            snapshots = None
            if read.names is not None:
                snapshots = read.snapshots(self._blocking_mget(client, read.names))
            if snapshots is None:
                snapshots = self._read_pointers(requests, read.layouts, read.encoded, read.count)
        return read.decoded(snapshots)

    async def read_async(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        """:meth:`read` for a server's event loop: the ``MGET`` goes over one connection per event loop that
        every concurrent read shares (see :mod:`online.pipelined`), and the loop serves other requests while
        Redis answers. The Lua read (the first read after a commit) and TLS connections stay blocking."""
        if not requests:
            return []
        read = _Read(self, requests, entities)
        with translate_errors(self._where, "reading features"):
            self.client()  # connects and loads the Lua read, for the first read and after a commit
            snapshots = None
            if read.names is not None:
                pipelined = self._pipelined_for_this_loop()
                if pipelined is None:  # TLS
                    got = self._blocking_mget(self.client(), read.names)
                else:
                    got = await pipelined.call("MGET", *read.names)
                snapshots = read.snapshots(got)
            if snapshots is None:
                snapshots = self._read_pointers(requests, read.layouts, read.encoded, read.count)
        return read.decoded(snapshots)

    def _blocking_mget(self, client: redis.Redis, names: Sequence[bytes | str]) -> list[bytes | None]:
        (got,) = _roundtrip(client, ["MGET", *names], free=self._idle_connections())
        return got

    def _pipelined_for_this_loop(self) -> PipelinedRedis | None:
        """The pipelined connection of the running event loop (None over TLS: the blocking client reads then)."""
        pipelined = self._pipelined
        if pipelined is not None and pipelined.loop is asyncio.get_running_loop():
            return pipelined
        from online.pipelined import PipelinedRedis

        pool = self.client().connection_pool
        if not PipelinedRedis.supports(pool):
            return None
        if pipelined is not None:
            pipelined.close()  # another loop's (a test client's, long gone)
        self._pipelined = PipelinedRedis(
            dict(pool.connection_kwargs), connect_timeout=self.connect_timeout, timeout=self.timeout
        )
        return self._pipelined

    def _read_pointers(
        self,
        requests: Sequence[tuple[ViewPlan, Sequence[str]]],
        layouts: Sequence[_Keys],
        encoded: Mapping[tuple[str, ...], list[bytes]],
        count: int,
    ) -> list[tuple[bytes | None, bytes | None, list[bytes | None]]]:
        """The Lua read: every pointer and the rows of the version it names, atomically; remembers the versions."""
        args: list[Any] = [count, *(layout.data_prefix for layout in layouts)]
        for view, _ in requests:
            args.extend(encoded[view.key_names])
        answer = self._read_script(keys=[layout.pointer for layout in layouts], args=args)
        for (view, _), (version, features, _values) in zip(requests, answer, strict=True):
            self._seen_live[view.name] = (None, None) if version is None else (version, features or b"[]")
        return [(version, features, values) for version, features, values in answer]

    def _decode(
        self,
        view: ViewPlan,
        names: tuple[str, ...],
        version: bytes | None,
        features: bytes | None,
        values: list[bytes | None],
        count: int,
    ) -> OnlineValues:
        if version is None:
            return OnlineValues(view.name, names, [[None] * count for _ in names], [None] * count, frozenset(names))
        unavailable, decode = self._decoder(view, names, features or b"[]")
        columns, events = decode(values)
        return OnlineValues(view.name, names, columns, events, unavailable)

    def _decoder(self, view: ViewPlan, names: tuple[str, ...], features: bytes) -> _Decoder:
        """How to decode the rows of a snapshot holding ``features`` (the pointer's list of (name, fingerprint)),
        worked out once per view, requested names and snapshot layout: a server sees the same few."""
        key = (view.name, names, features)
        found = self._decoders.get(key)
        if found is not None and found[0] is view:
            return found[1]
        plans = [view.feature(n) for n in names]
        stored = {(name, fingerprint): i for i, (name, fingerprint) in enumerate(orjson.loads(features))}
        positions = [stored.get((f.name, f.fingerprint)) for f in plans]
        unavailable = frozenset(n for n, p in zip(names, positions, strict=True) if p is None)
        decoder = (unavailable, rows_decoder([f.dtype for f in plans], positions))
        if len(self._decoders) >= _DECODER_CACHE:
            self._decoders.clear()
        self._decoders[key] = (view, decoder)
        return decoder


class _Read:
    """One read's keys and how to turn the ``MGET`` of them into snapshots and decoded columns (shared by
    :meth:`RedisOnlineStore.read` and :meth:`RedisOnlineStore.read_async`)."""

    def __init__(
        self,
        store: RedisOnlineStore,
        requests: Sequence[tuple[ViewPlan, Sequence[str]]],
        entities: Mapping[str, Sequence[Any]],
    ) -> None:
        self.store = store
        self.requests = requests
        self.count = len(next(iter(entities.values()))) if entities else 0
        self.layouts = [_Keys.of(store.project, view.name) for view, _ in requests]
        self.encoded: dict[tuple[str, ...], list[bytes]] = {}  # views keyed alike share their encoded keys
        for view, _ in requests:
            if view.key_names not in self.encoded:
                columns = [entities[k] for k in view.key_names]
                self.encoded[view.key_names] = encode_entity_keys(columns, [k.dtype for k in view.join_keys])
        # The versions last seen live, and the names to MGET: each view's version key, then its rows in the
        # version seen (none for a view seen unpublished). None when a view has not been seen yet (the Lua read
        # finds its pointer).
        self.seen: list[tuple[bytes | None, bytes | None]] | None = []
        for view, _ in requests:
            found = store._seen_live.get(view.name)
            if found is None:
                self.seen = None
                break
            self.seen.append(found)
        self.names: list[bytes | str] | None = None
        self.rows_at: list[int] = []  # where each view's rows start in the MGET's answer
        if self.seen is not None:
            names: list[bytes | str] = [layout.version for layout in self.layouts]
            for (view, _), layout, (version, _features) in zip(requests, self.layouts, self.seen, strict=True):
                self.rows_at.append(len(names))
                if version is not None:
                    prefix = layout.data_prefix.encode() + version + b":"
                    names.extend([prefix + key for key in self.encoded[view.key_names]])
            self.names = names

    def snapshots(self, got: list[bytes | None]) -> list[tuple[bytes | None, bytes | None, list[bytes | None]]] | None:
        """(version, features, rows) per view from the ``MGET``; None when a version moved since it was seen."""
        assert self.seen is not None
        if got[: len(self.requests)] != [version for version, _ in self.seen]:
            return None
        return [
            (version, features, got[start : start + self.count] if version is not None else [])
            for start, (version, features) in zip(self.rows_at, self.seen, strict=True)
        ]

    def decoded(self, snapshots: list[tuple[bytes | None, bytes | None, list[bytes | None]]]) -> list[OnlineValues]:
        return [
            self.store._decode(view, tuple(names), version, features, values, self.count)
            for (view, names), (version, features, values) in zip(self.requests, snapshots, strict=True)
        ]


class RedisPublication:
    """One atomic publish of one view (see :class:`features.protocols.Publication`).

    Picklable: it holds only the URL and the view's layout, and opens its own connection on first use in
    whichever process calls :meth:`write` (Spark executors).
    """

    def __init__(
        self,
        *,
        url: str,
        project: str,
        view: str,
        key_names: tuple[str, ...],
        key_dtypes: tuple[DType, ...],
        features: tuple[tuple[str, DType, str], ...],
        storage_fingerprint: str,
        watermark: int,
        version: int,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.project = project
        self.view = view
        self.key_names = key_names
        self.key_dtypes = key_dtypes
        self.features = features
        self.storage_fingerprint = storage_fingerprint
        self.watermark = watermark
        self.version = version
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._client: redis.Redis | None = None
        self._done = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"RedisPublication(view={self.view!r}, version={self.version}, watermark={self.watermark})"

    @property
    def _keys(self) -> _Keys:
        return _Keys(self.project, self.view)

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.url, connect_timeout=self.connect_timeout, timeout=self.timeout)
        return self._client

    def write(self, batches: Iterable[pa.RecordBatch]) -> int:
        """Stage the rows of ``batches`` (one row per entity); returns how many were written."""
        if self._done:
            raise OnlineStoreError(f"publication {self.version} of view '{self.view}' is already finished")
        prefix = self._keys.version_prefix(self.version)
        names = [f[0] for f in self.features]
        dtypes = [f[1] for f in self.features]
        written = 0
        with translate_errors(self.url, f"writing view '{self.view}'"):
            client = self._redis()
            for batch in iter_batches(batches):
                keys, rows = encode_batch(
                    batch, self.key_names, self.key_dtypes, names, dtypes, EVENT_TIMESTAMP, CREATED_TIMESTAMP
                )
                commands: list[list[Any]] = []
                for start in range(0, len(keys), WRITE_BATCH):
                    chunk = rows[start : start + WRITE_BATCH]
                    command: list[Any] = [b"MSET", *([None] * (2 * len(chunk)))]
                    command[1::2] = [prefix + key for key in keys[start : start + WRITE_BATCH]]
                    command[2::2] = chunk
                    commands.append(command)
                _roundtrip(client, *commands)  # a batch's MSETs pipelined: one round trip, not one each
                written += len(keys)
        return written

    def commit(self) -> bool:
        """Make the staged snapshot live at once; False (and the staged rows dropped) when a publication with
        a newer watermark is already live, or a newer one of the same watermark committed meanwhile."""
        if self._done:
            raise OnlineStoreError(f"publication {self.version} of view '{self.view}' is already finished")
        keys = self._keys
        features = orjson.dumps([[name, fingerprint] for name, _, fingerprint in self.features])
        with translate_errors(self.url, f"committing view '{self.view}'"):
            status, _previous = self._redis().eval(
                _COMMIT_LUA,
                3,
                keys.pointer,
                keys.staged,
                keys.version,
                str(self.version),
                str(self.watermark),
                self.storage_fingerprint,
                features,
                str(to_micros_now()),
            )
        self._done = True
        committed = int(status) == 1
        # The decision is made; failing to tidy up must not report it otherwise (a later publish cleans up).
        try:
            if committed:
                self._clean()
            else:
                self._delete_version()
        except OnlineStoreError:
            logger.warning(
                "publication %s of view '%s': could not delete old rows", self.version, self.view, exc_info=True
            )
        return committed

    def abort(self) -> None:
        """Drop the staged rows; readers keep the values they had."""
        if self._done:
            return
        self._done = True
        with translate_errors(self.url, f"aborting a publication of view '{self.view}'"):
            self._redis().hdel(self._keys.staged, str(self.version))
        self._delete_version()

    def _delete_version(self) -> None:
        """Unlink this publication's rows (it is no longer staged, so it can never commit)."""
        with translate_errors(self.url, f"deleting staged rows of view '{self.view}'"):
            _unlink_versions(self._redis(), self._keys, [str(self.version)])

    def _clean(self) -> None:
        """Delete every version but the live and previous ones (and publications that may still commit)."""
        keys = self._keys
        with translate_errors(self.url, f"deleting old versions of view '{self.view}'"):
            client = self._redis()
            listed = {_text(v) for v in client.smembers(keys.versions)}
            candidates = listed - {UNKNOWN_VERSIONS}
            full_scan = UNKNOWN_VERSIONS in listed or self.version % FULL_SCAN_EVERY == 0
            if full_scan:  # rows written before the set existed, or a periodic check: find every version's rows
                found = {keys.version_of(key) for key in client.scan_iter(match=keys.data_pattern, count=SCAN_BATCH)}
                candidates |= {v for v in found if v is not None}
                if candidates:
                    client.sadd(keys.versions, *candidates)
            garbage = [_text(v) for v in client.eval(_GARBAGE_LUA, 2, keys.pointer, keys.staged, *sorted(candidates))]
            _unlink_versions(client, keys, garbage)
            if UNKNOWN_VERSIONS in listed:
                client.srem(keys.versions, UNKNOWN_VERSIONS)


def _unlink_versions(client: redis.Redis, keys: _Keys, versions: Sequence[str]) -> None:
    """Unlink every row of ``versions`` (garbage: none of them can commit), then drop them from the versions set.

    The set loses a version only after its rows are gone, so a cleanup that fails midway is finished by the next.
    """
    for version in versions:
        pattern = _glob_escape(keys.version_prefix(int(version)).decode()) + "*"
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
        client.srem(keys.versions, version)


def _roundtrip(client: redis.Redis, *commands: Sequence[Any], free: list[Any] | None = None) -> list[Any]:
    """Send ``commands`` in one write on a pooled connection and read one reply each (an error reply raises).

    With ``free``, a connection is taken from that list (from the pool when it is empty) and put back there after
    a clean round trip: redis-py's pool takes a lock, checks the connection and records metrics on every take and
    give-back (~20 µs, measured, of a ~300 µs HTTP lookup). A connection that failed goes back to the pool,
    disconnected (it reconnects when next used).

    Below redis-py's ``execute_command`` on purpose: hiredis packs each command in C, where redis-py looks at every
    argument in Python first (~25 µs of a ~100 µs lookup; most of an MSET of 1000 keys), and several commands
    share one round trip. Same rule as :func:`connect`: one retry on a dropped connection, none on a timeout
    (every command sent here may be repeated: reads, and MSETs of the same keys and values).
    """
    import hiredis
    import redis

    packed = [hiredis.pack_command(tuple(command)) for command in commands]
    pool = client.connection_pool
    for attempt in (1, 2):
        try:
            connection = free.pop() if free is not None else pool.get_connection()
        except IndexError:  # none idle (list.pop is atomic: threads never share one)
            connection = pool.get_connection()
        try:
            connection.send_packed_command(packed)
            replies = [connection.read_response() for _ in packed]
        except redis.ConnectionError:
            connection.disconnect()
            pool.release(connection)
            if attempt == 2:
                raise
            continue
        except BaseException:  # a timeout, an error reply: the connection may hold unread replies
            connection.disconnect()
            pool.release(connection)
            raise
        if free is not None:
            free.append(connection)
        else:
            pool.release(connection)
        return replies
    raise AssertionError("unreachable")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def to_micros_now() -> int:
    return int(time.time() * 1_000_000)
