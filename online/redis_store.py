"""The Redis online store: atomic per-view snapshots and one-round-trip reads.

:class:`RedisOnlineStore` is the store ``skewless.yaml`` names (the ``skewless.online_stores`` entry point
``redis`` loads it from here). Its parts:

- :mod:`online.redis_layout`: the key names of a view's snapshots and the Lua scripts that read and move its
  pointer;
- :mod:`online.redis_client`: connections with bounded waits, errors translated, raw pipelined round trips;
- :mod:`online.redis_publication`: :class:`RedisPublication`, one atomic (and picklable) publish of one view;
- :mod:`online.redis_read`: one read across views, the ``MGET`` fast path and the Lua read, decoded.

On Redis Cluster (``redis+cluster://``, see :mod:`online.redis_cluster`) a view's keys share one slot, so each
operation on a view runs on the node that holds it, and a read across views fans out one round trip per node.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from features.dtypes import from_micros, to_micros
from features.errors import ConfigError, OnlineStoreError
from features.plan import ViewPlan
from features.protocols import LiveSnapshot, OnlineValues, StoredView, snapshot_order
from online import redis_cleanup
from online.redis_client import as_text, check_url, connect, redact, roundtrip, translate_error
from online.redis_cluster import ClusterRouter, is_cluster_url, mget_per_node, parse_cluster_url
from online.redis_layout import READ_LUA, ROLLBACK_LUA, START_LUA, ViewKeys, glob_escape
from online.redis_publication import RedisPublication, RedisUpdate
from online.redis_read import SeenLive, SnapshotDecoders, SnapshotRead

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

    from features.config import RepoConfig
    from online.pipelined import PipelinedRedis


# Not pickled (see __getstate__): connections, lock and caches belong to one process.
_PER_PROCESS = (
    "_client",
    "_read_script",
    "_lock",
    "_decoders",
    "_seen_live",
    "_free",
    "_free_pid",
    "_pipelined",
    "_router",
    "_node_free",
    "_node_pipelined",
)
# After a failed command, how often at most the embedded server's state file is read again to find where it runs.
FOLLOW_SECONDS = 1.0


class RedisOnlineStore:
    """The online store on one Redis (or Valkey) server, or on a Redis Cluster.

    ``url`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL, a ``redis+cluster://host:port,host:port`` URL
    (see :mod:`online.redis_cluster`), or ``"embedded"``: a server for this
    repository started on first use (see :mod:`online.embedded`), which needs ``state_dir``. A store on the
    embedded server follows it: when a command fails, the server's state file is read again (at most once per
    :data:`FOLLOW_SECONDS`), and if the server was restarted elsewhere (``skewless stop``, then any command), the
    store's next command goes there.

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
        keep_snapshots: int = 2,
        update_in_place: bool = True,
    ) -> None:
        if url == "embedded" and state_dir is None:
            raise ConfigError("the embedded online store needs a state directory (state_dir=)")
        if not project or any(c in project for c in ":{}"):
            raise ConfigError(f"project name {project!r} may not be empty or contain ':', '{{' or '}}'")
        self.cluster = is_cluster_url(url)
        if self.cluster:
            parse_cluster_url(url)  # a malformed URL fails here, once
        elif url != "embedded":
            check_url(url)  # a URL no connection can use fails here, once, not on every request
        self.url = url
        self.project = project
        self.state_dir = state_dir
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.keep_snapshots = max(2, keep_snapshots)  # the live and the previous snapshot, at least
        self.update_in_place = update_in_place  # online.update_in_place: runs update the live snapshot, undo-logged
        self._client: redis.Redis | None = None
        self._resolved: str | None = None
        self._read_script: Any = None
        self._lock = threading.Lock()  # the serving API shares one store between threads
        self._decoders = SnapshotDecoders()
        self._seen_live: SeenLive = {}  # the versions last seen live, per view (see SnapshotRead)
        self._free: list[Any] = []  # idle connections of this process, kept out of the pool (see _roundtrip)
        self._free_pid = os.getpid()
        self._pipelined: PipelinedRedis | None = None  # read_async's connection, for one event loop
        self._next_follow = 0.0  # monotonic time before which a failure does not re-read the embedded state file
        self._router: ClusterRouter | None = None  # on a cluster: which node holds a view
        self._node_free: dict[str, list[Any]] = {}  # on a cluster: idle connections per node (see _free)
        # On a cluster: read_async's connections per node, for one event loop and one slot map (its generation).
        self._node_pipelined: tuple[Any, int, dict[str, PipelinedRedis] | None] | None = None

    @classmethod
    def from_config(cls, config: RepoConfig) -> RedisOnlineStore:
        """The store ``skewless.yaml`` describes (``online: url:``)."""
        return cls(
            config.resolved_online_url(),
            project=config.project,
            state_dir=config.state_dir(),
            keep_snapshots=config.keep_snapshots,
            update_in_place=config.update_in_place,
        )

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

    def _translated(self, action: str) -> _Translated:
        """Errors translated (see :func:`online.redis_client.translate_errors`); on the embedded server, a failure
        also looks where the server runs now (see :meth:`_follow_embedded`)."""
        return _Translated(self, action)

    def _failed(self) -> None:
        """After an :class:`OnlineStoreError`: forget what a failure may have made stale."""
        if self._router is not None:
            self._router.failed()  # a failover may have moved a slot: ask for the slot map again
            self._node_free = {}
        self._follow_embedded()

    def _follow_embedded(self) -> None:
        """When the embedded server now runs at another address (restarted on a new port), drop the connections
        to the old one: the next command connects to the new one. Never starts a server (``skewless stop`` means
        stopped: the store answers errors until a command starts it again). Only the state file is read (no
        connection: this may run on a serving event loop), at most once per :data:`FOLLOW_SECONDS`."""
        if self.url != "embedded" or self.state_dir is None or self._resolved is None:
            return  # another server, or none found yet (the next command looks for it, or starts it)
        if time.monotonic() < self._next_follow:
            return
        self._next_follow = time.monotonic() + FOLLOW_SECONDS
        from online.embedded import recorded_url

        url = recorded_url(self.state_dir)
        if url is None or url == self._resolved:
            return
        with self._lock:
            self._resolved = url
            client, self._client = self._client, None
        self._free = []
        if self._pipelined is not None:
            self._pipelined.close()
            self._pipelined = None
        if client is not None:
            client.close()

    def client(self) -> redis.Redis:
        """The (thread-safe, pooled) redis client, connected on first use; on a cluster, the client of the node
        that holds the project's first slot (use :meth:`view_client` for a view's keys)."""
        if self.cluster:
            return self._cluster_router().node(f"{{{self.project}}}")
        if self._client is None:
            url = self.resolved_url
            with self._lock:
                if self._client is None:
                    client = connect(url, connect_timeout=self.connect_timeout, timeout=self.timeout)
                    self._read_script = client.register_script(READ_LUA)
                    self._client = client
        return self._client

    def _cluster_router(self) -> ClusterRouter:
        if self._router is None:
            with self._lock:
                if self._router is None:
                    self._router = ClusterRouter(self.url, connect_timeout=self.connect_timeout, timeout=self.timeout)
        return self._router

    def keys_of(self, view: str) -> ViewKeys:
        """The key names of ``view`` (tagged with ``{project:view}`` on a cluster)."""
        return ViewKeys.of(self.project, view, self.cluster)

    def view_client(self, view: str) -> redis.Redis:
        """The client of the server that holds ``view``'s keys: the one server, or on a cluster the primary of the
        view's slot."""
        if self.cluster:
            return self._cluster_router().node(self.keys_of(view).pointer)
        return self.client()

    def _idle_connections(self) -> list[Any]:
        """This process's idle connections (a forked child starts with none: its parent's sockets are not its)."""
        if self._free_pid != os.getpid():
            self._free, self._node_free, self._free_pid = [], {}, os.getpid()
        return self._free

    def _idle_node_connections(self) -> dict[str, list[Any]]:
        """On a cluster: this process's idle connections per node (as :meth:`_idle_connections`)."""
        self._idle_connections()
        return self._node_free

    def ping(self) -> None:
        """Raise :class:`OnlineStoreError` unless the server answers."""
        with self._translated("pinging"):
            if self.cluster:
                for node in self._cluster_router().primaries():  # connecting checked every primary; this asks again
                    node.ping()
            else:
                self.client().ping()

    def close(self) -> None:
        self._free = []
        self._node_free = {}
        if self._pipelined is not None:
            self._pipelined.close()
            self._pipelined = None
        self._close_node_pipelined()
        if self._router is not None:
            self._router.close()
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
            _decoders=SnapshotDecoders(),
            _seen_live={},
            _free=[],
            _pipelined=None,
            _router=None,
            _node_free={},
            _node_pipelined=None,
        )
        self._free_pid = os.getpid()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({redact(self.url)!r}, project={self.project!r})"

    # -- publish ----------------------------------------------------------------------------------------------
    def start_publication(
        self, view: ViewPlan, *, watermark: int, confirmed_at: datetime | None = None
    ) -> RedisPublication:
        """Reserve a new version of ``view``; rows written to it stay invisible until ``commit()``.
        ``confirmed_at``: see :class:`features.protocols.OnlineStore`."""
        keys = self.keys_of(view.online_name)
        with self._translated(f"starting a publication of view '{view.name}'"):
            version = int(
                self.view_client(view.online_name).eval(
                    START_LUA, 3, keys.counter, keys.staged, keys.versions, int(watermark), view.storage_fingerprint
                )
            )
        return RedisPublication(**self._publication_args(view, confirmed_at), watermark=int(watermark), version=version)

    def start_update(
        self, view: ViewPlan, *, watermark: int, live_version: str, confirmed_at: datetime | None = None
    ) -> RedisUpdate:
        """An incremental publication of ``view`` into its live snapshot at rollback point ``live_version`` (``N``
        or ``N.s``, see :mod:`online.redis_layout`; :class:`~online.redis_publication.RedisUpdate`)."""
        version, step = snapshot_order(live_version)
        args = self._publication_args(view, confirmed_at)
        return RedisUpdate(**args, watermark=int(watermark), version=version, step=step)

    def _publication_args(self, view: ViewPlan, confirmed_at: datetime | None) -> dict[str, Any]:
        """What every publication of ``view`` is built with, whatever its version and watermark."""
        return {
            "url": self.resolved_url,
            "tagged": self.cluster,
            "project": self.project,
            "view": view.online_name,
            "key_names": view.key_names,
            "key_dtypes": tuple(k.dtype for k in view.join_keys),
            "features": tuple((f.name, f.dtype, f.fingerprint) for f in view.features),
            "storage_fingerprint": view.storage_fingerprint,
            "keep_snapshots": self.keep_snapshots,
            "confirmed_at": None if confirmed_at is None else to_micros(confirmed_at),
            "connect_timeout": self.connect_timeout,
            "timeout": self.timeout,
        }

    def live_snapshot(self, view: ViewPlan) -> LiveSnapshot | None:
        """What the live snapshot of ``view`` was published from (its pointer); None before any commit."""
        pointer = self.live_version(view.online_name)
        if pointer is None or "watermark" not in pointer:
            return None
        return _snapshot(pointer)

    def live_version(self, view: str) -> dict[str, str] | None:
        """The pointer of ``view`` (version, watermark, storage_fingerprint, ...) or None before any commit."""
        with self._translated(f"reading the pointer of view '{view}'"):
            raw = self.view_client(view).hgetall(self.keys_of(view).pointer)
        return {as_text(k): as_text(v) for k, v in raw.items()} if raw else None

    # -- rollback (skewless rollback) ---------------------------------------------------------------------------
    def kept_snapshots(self, view: str) -> list[LiveSnapshot]:
        """The snapshots of ``view`` kept for a rollback (``online.keep_snapshots``), the live one included,
        newest version first; each with the pointer fields it was committed with."""
        keys = self.keys_of(view)
        with self._translated(f"reading the kept snapshots of view '{view}'"):
            history = self.view_client(view).hgetall(keys.history)
        kept = [_snapshot({**orjson.loads(meta), "version": as_text(v)}) for v, meta in history.items()]
        return sorted(kept, key=lambda s: snapshot_order(s.version or "0"), reverse=True)

    def rollback(self, view: str, *, to: str | None, held: str) -> tuple[str, str]:
        """Make a kept snapshot live again (see :class:`features.protocols.RollbackStore`); OnlineStoreError
        naming the kept versions when ``to`` is not one of them."""
        keys = self.keys_of(view)
        with self._translated(f"rolling back view '{view}'"):
            answer = self.view_client(view).eval(
                ROLLBACK_LUA,
                3,
                keys.pointer,
                keys.version,
                keys.history,
                to or "",
                held,
                keys.undo_prefix,
                keys.data_prefix,
            )
        if int(answer[0]) != 1:
            kept = ", ".join(s.version or "?" for s in self.kept_snapshots(view)) or "none"
            raise OnlineStoreError(f"cannot roll back view '{view}': {as_text(answer[1])} (kept snapshots: {kept})")
        self._seen_live.pop(view, None)
        return as_text(answer[1]), as_text(answer[2])

    def release(self, view: str) -> str | None:
        """End the hold a rollback put on ``view``; the hold ended (None: there was none)."""
        keys = self.keys_of(view)
        with self._translated(f"releasing view '{view}'"):
            client = self.view_client(view)
            held = client.hget(keys.pointer, "held")
            client.hdel(keys.pointer, "held")
        return None if held is None else as_text(held)

    def sample_entities(self, view: ViewPlan, count: int) -> dict[str, list[Any]]:
        """Up to ``count`` entities of the live snapshot of ``view``, as join-key columns (``skewless audit
        --sample``): SCAN over the snapshot's row keys, the first ones found (Redis's hash order: no bias to
        any key range). Timestamp keys come back as microseconds since the epoch."""
        from online.encoding import decode_entity_key

        pointer = self.live_version(view.online_name)
        columns: dict[str, list[Any]] = {name: [] for name in view.key_names}
        if pointer is None or "version" not in pointer or count <= 0:
            return columns
        prefix = self.keys_of(view.online_name).version_prefix(int(pointer["version"]))
        found = 0
        with self._translated(f"sampling the keys of view '{view.name}'"):
            for key in self.view_client(view.online_name).scan_iter(
                match=glob_escape(prefix.decode()) + "*", count=1000
            ):
                values = decode_entity_key(bytes(key)[len(prefix) :])
                for name, value in zip(view.key_names, values, strict=True):
                    columns[name].append(value)
                found += 1
                if found >= count:
                    break
        return columns

    # -- clean up (skewless prune and teardown) ------------------------------------------------------------------
    def stored_views(self) -> list[StoredView]:
        """Every view this project has keys of, with how many keys and snapshots (see :mod:`online.redis_cleanup`)."""
        with self._translated("listing the project's keys"):
            clients = self._cluster_router().primaries() if self.cluster else [self.client()]
            return redis_cleanup.stored_views(clients, self.project, tagged=self.cluster)

    def delete_view(self, view: str) -> int:
        """Delete every key of ``view`` (SCAN and UNLINK in batches); returns how many were deleted."""
        with self._translated(f"deleting the keys of view '{view}'"):
            deleted = redis_cleanup.delete_view(self.view_client(view), self.keys_of(view))
        self._seen_live.pop(view, None)
        return deleted

    # -- push -------------------------------------------------------------------------------------------------
    def push(self, view: ViewPlan, rows: pa.Table) -> int:
        """Serve ``rows`` (one per entity: keys, features, event and created time) at once, per entity only where
        newer than the live row (see :mod:`online.redis_push`); returns how many entities took the pushed row."""
        from online.redis_push import push_rows

        with self._translated(f"pushing rows of view '{view.name}'"):
            return push_rows(self.view_client(view.online_name), self.keys_of(view.online_name), view, rows)

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
        read = SnapshotRead(self.project, self._seen_live, requests, entities, tagged=self.cluster)
        if self.cluster:
            return self._read_cluster(read)
        with self._translated("reading features"):
            client = self.client()
            snapshots = None
            if read.names is not None:
                snapshots = read.snapshots(self._blocking_mget(client, read.names))
            if snapshots is None:
                snapshots = read.lua_snapshots(self._read_script)
        return read.decoded(self._decoders, snapshots)

    async def read_async(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        """:meth:`read` for a server's event loop: the ``MGET`` goes over one connection per event loop that
        every concurrent read shares (see :mod:`online.pipelined`), and the loop serves other requests while
        Redis answers. The Lua read (the first read after a commit) and TLS connections stay blocking."""
        if not requests:
            return []
        read = SnapshotRead(self.project, self._seen_live, requests, entities, tagged=self.cluster)
        if self.cluster:
            return await self._read_cluster_async(read)
        with self._translated("reading features"):
            self.client()  # connects and loads the Lua read, for the first read and after a commit
            snapshots = None
            if read.seen is not None:  # every view seen before: the MGET
                pipelined = self._pipelined_for_this_loop()
                if pipelined is None:  # TLS
                    got = self._blocking_mget(self.client(), read.names or [])
                else:
                    got = await pipelined.call_packed(read.mget_command())
                snapshots = read.snapshots(got)
            if snapshots is None:
                snapshots = read.lua_snapshots(self._read_script)
        return read.decoded(self._decoders, snapshots)

    def _blocking_mget(self, client: redis.Redis, names: Sequence[bytes | str]) -> list[bytes | None]:
        (got,) = roundtrip(client, ["MGET", *names], free=self._idle_connections())
        return got

    def _pipelined_for_this_loop(self) -> PipelinedRedis | None:
        """The pipelined connection of the running event loop (None over TLS: the blocking client reads then)."""
        pipelined = self._pipelined
        if pipelined is not None and pipelined.serves_running_loop():
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

    # -- read on a cluster ------------------------------------------------------------------------------------
    # Each view's keys are one slot, so each view is one MGET (atomic: its version and rows of one snapshot), and
    # the MGETs of the views on one node share a round trip; the nodes answer at once. Views on different nodes are
    # read at slightly different instants: each is one snapshot, as on a single server, but a commit of one view
    # and of another are not seen together (they are not committed together either).

    def _read_cluster(self, read: SnapshotRead) -> list[OnlineValues]:
        router = self._cluster_router()
        with self._translated("reading features"):
            snapshots = None
            if read.names is not None:
                groups = _per_view_mgets(read)
                snapshots = read.snapshots(_joined(mget_per_node(router, groups, self._idle_node_connections())))
            if snapshots is None:
                snapshots = read.lua_snapshots(self._cluster_lua_read)
        return read.decoded(self._decoders, snapshots)

    async def _read_cluster_async(self, read: SnapshotRead) -> list[OnlineValues]:
        router = self._cluster_router()
        with self._translated("reading features"):
            snapshots = None
            if read.names is not None:
                groups = _per_view_mgets(read)
                pipelined = self._node_pipelined_for_this_loop(router)
                if pipelined is None:  # TLS: the blocking fan-out
                    got = mget_per_node(router, groups, self._idle_node_connections())
                else:
                    got = await _mget_per_node_async([(pipelined(key), names) for key, names in groups])
                snapshots = read.snapshots(_joined(got))
            if snapshots is None:
                snapshots = read.lua_snapshots(self._cluster_lua_read)
        return read.decoded(self._decoders, snapshots)

    def _cluster_lua_read(self, *, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """The Lua read, one call per view on the node that holds it (its arguments cut out of the many-view ones
        :meth:`online.redis_read.SnapshotRead.lua_snapshots` gives)."""
        router = self._cluster_router()
        count, nviews = int(args[0]), len(keys)
        answers = []
        for i, pointer in enumerate(keys):
            rows = args[1 + nviews + i * count : 1 + nviews + (i + 1) * count]
            script = router.node(pointer).register_script(READ_LUA)  # EVALSHA; loads the script once per node
            (answer,) = script(keys=[pointer], args=[count, args[1 + i], *rows])
            answers.append(answer)
        return answers

    def _node_pipelined_for_this_loop(self, router: ClusterRouter) -> Callable[[str], PipelinedRedis] | None:
        """Per node, the pipelined connection of the running event loop (as :meth:`_pipelined_for_this_loop`), for
        the slot map of now: a map read again after a failure drops them. None over TLS."""
        from online.pipelined import PipelinedRedis

        loop = asyncio.get_running_loop()
        found = self._node_pipelined
        if found is None or found[0] is not loop or found[1] != router.generation:
            self._close_node_pipelined()
            tls = not PipelinedRedis.supports(router.primaries()[0].connection_pool)
            found = self._node_pipelined = (loop, router.generation, None if tls else {})
        connections = found[2]
        if connections is None:
            return None

        def pipelined(key: str) -> PipelinedRedis:
            name, client = router.named_node(key)
            if name not in connections:
                pool = client.connection_pool
                connections[name] = PipelinedRedis(
                    dict(pool.connection_kwargs), connect_timeout=self.connect_timeout, timeout=self.timeout
                )
            return connections[name]

        return pipelined

    def _close_node_pipelined(self) -> None:
        if self._node_pipelined is not None and self._node_pipelined[2] is not None:
            for connection in self._node_pipelined[2].values():
                connection.close()
        self._node_pipelined = None


class _Translated:
    """:meth:`RedisOnlineStore._translated`'s context: a class, not a generator (two nested generator contexts cost
    ~1.5 µs a lookup)."""

    __slots__ = ("action", "store")

    def __init__(self, store: RedisOnlineStore, action: str) -> None:
        self.store = store
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None:
            return False
        if isinstance(exc, OnlineStoreError):  # already translated (a cluster's or the embedded server's check)
            self.store._failed()
            return False
        translated = translate_error(self.store._where, self.action, exc)
        if translated is None:
            return False
        self.store._failed()
        raise translated from exc


async def _mget_per_node_async(
    groups: Sequence[tuple[PipelinedRedis, Sequence[bytes | str]]],
) -> list[list[bytes | None]]:
    """One ``MGET`` per group on its node's pipelined connection: every one written before any reply is awaited, so
    the nodes answer at once, without a task per node (with ``asyncio.gather``: 3,400 reads/s against 5,500, 16 at a
    time on one loop, medians of 5 rounds on the busy benchmark machine). A group
    whose connection is not open yet, or dropped, goes through ``call`` (which opens one and retries a drop once);
    a timeout is not retried."""
    import redis

    sent = [(connection, names, connection.send("MGET", *names)) for connection, names in groups]
    got = []
    for connection, names, reply in sent:
        if reply is not None:
            try:
                got.append(await reply)
                continue
            except redis.ConnectionError:
                pass
        got.append(await connection.call("MGET", *names))
    return got


def _per_view_mgets(read: SnapshotRead) -> list[tuple[str, list[bytes | str]]]:
    """The names of a read's ``MGET`` cut per view (one slot each on a cluster): (the view's pointer, its version key
    and rows)."""
    assert read.names is not None
    names = read.names
    ends = [*read.rows_at[1:], len(names)]
    return [
        (layout.pointer, [names[i], *names[start:end]])
        for i, (layout, start, end) in enumerate(zip(read.layouts, read.rows_at, ends, strict=True))
    ]


def _joined(answers: Sequence[list[bytes | None]]) -> list[bytes | None]:
    """Per-view ``MGET`` answers back in the order of one ``MGET`` of :attr:`SnapshotRead.names`."""
    return [answer[0] for answer in answers] + [row for answer in answers for row in answer[1:]]


def _snapshot(fields: Mapping[str, str]) -> LiveSnapshot:
    """A snapshot's description from its pointer fields (the live pointer, or a kept snapshot's history entry);
    its ``version`` is the rollback point: ``N``, or ``N.s`` after s runs updated the snapshot in place."""
    version = fields.get("version")
    if version is not None and fields.get("step", "0") not in ("", "0"):
        version = f"{version}.{fields['step']}"
    return LiveSnapshot(
        watermark=int(fields["watermark"]),
        storage_fingerprint=fields.get("storage_fingerprint", ""),
        feature_fingerprints=tuple((str(n), str(f)) for n, f in orjson.loads(fields.get("features", "[]"))),
        published_at=from_micros(int(fields.get("published_at", "0"))),
        version=version,
        held=fields.get("held"),
    )
