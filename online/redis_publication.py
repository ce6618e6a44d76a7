"""One atomic publish of one view: staged rows, a pointer flip, and the old versions' cleanup.

:meth:`online.redis_store.RedisOnlineStore.start_publication` takes a new version ``N``;
:meth:`RedisPublication.write` (from any process) writes ``P:V:vN:*`` (see :mod:`online.redis_layout`) with
``MSET`` in batches of 1000; :meth:`RedisPublication.commit` flips ``P:V:_live`` to ``N`` in one Lua script, only
if its watermark is >= the live one, putting into it the rows pushed since that it does not hold yet (see
:mod:`online.redis_push`). Then versions other than the live and the previous one are deleted:
``P:V:_versions`` names the candidates, so a commit with nothing to delete (the first two publications of a view)
scans no keys; one Lua script declares which of them are garbage (never live again: not live, not previous, not a
staged publication that may still commit), and only those versions' keys are scanned for and unlinked, then the
versions leave the set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from features.dtypes import DType
from features.errors import OnlineStoreError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from features.protocols import iter_batches
from online.encoding import encode_batch
from online.redis_client import as_text, connect, roundtrip, translate_errors
from online.redis_cluster import ClusterRouter, is_cluster_url
from online.redis_layout import (
    COMMIT_LUA,
    GARBAGE_LUA,
    UNKNOWN_VERSIONS,
    UPDATE_COMMIT_LUA,
    UPDATE_LUA,
    ViewKeys,
    glob_escape,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

logger = logging.getLogger(__name__)

WRITE_BATCH = 1000
SCAN_BATCH = 1000
# Every this many versions a commit scans all of the view's keys anyway. The set misses only rows a refused
# publication wrote after its version was deleted and before it crashed (a finished one deletes them itself).
FULL_SCAN_EVERY = 100


class RedisPublication:
    """One atomic publish of one view (see :class:`features.protocols.Publication`).

    Picklable: it holds only the URL and the view's layout, and opens its own connection on first use in
    whichever process calls :meth:`write` (Spark executors).
    """

    def __init__(
        self,
        *,
        url: str,
        tagged: bool = False,
        project: str,
        view: str,
        key_names: tuple[str, ...],
        key_dtypes: tuple[DType, ...],
        features: tuple[tuple[str, DType, str], ...],
        storage_fingerprint: str,
        watermark: int,
        version: int,
        keep_snapshots: int = 2,
        confirmed_at: int | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.tagged = tagged  # on a cluster: the view's keys carry the hash tag {project:view}
        self.project = project
        self.view = view
        self.key_names = key_names
        self.key_dtypes = key_dtypes
        self.features = features
        self.storage_fingerprint = storage_fingerprint
        self.watermark = watermark
        self.version = version
        self.keep_snapshots = keep_snapshots
        # Windowed views: the tick (microseconds) the snapshot is current at once committed; readers serve each
        # value's event time as the later of its row's and this (TTLs count from the last tick computed).
        self.confirmed_at = confirmed_at
        #: Why the commit was refused, when it was (a newer publication live, or a rollback holding the view).
        self.refusal: str | None = None
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
    def _keys(self) -> ViewKeys:
        return ViewKeys.of(self.project, self.view, self.tagged)

    def _redis(self) -> redis.Redis:
        """The server that holds the view: the one server, or on a cluster the primary of the view's slot (every
        key of the view is there, so the rows, the commit script and the cleanup all go to that node)."""
        if self._client is None:
            if is_cluster_url(self.url):
                router = ClusterRouter(self.url, connect_timeout=self.connect_timeout, timeout=self.timeout)
                self._client = router.node(self._keys.pointer)
            else:
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
                roundtrip(client, *commands)  # a batch's MSETs pipelined: one round trip, not one each
                written += len(keys)
        return written

    def commit(self) -> bool:
        """Make the staged snapshot live at once; False (and the staged rows dropped) when a publication with
        a newer watermark is already live, or a newer one of the same watermark committed meanwhile."""
        keys = self._keys
        committed, _ = self._commit_script(
            "committing",
            COMMIT_LUA,
            [keys.pointer, keys.staged, keys.version, keys.pushed, keys.history],
            [
                self.version,
                self.watermark,
                self.storage_fingerprint,
                features_json(self.features),
                to_micros_now(),
                keys.data_prefix,
                self.keep_snapshots,
                keys.undo_prefix,
                "" if self.confirmed_at is None else self.confirmed_at,
            ],
            refused="a newer publication is live",
        )
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

    def _commit_script(
        self, action: str, script: str, keys: Sequence[str], args: Sequence[Any], *, refused: str | None
    ) -> tuple[bool, str | None]:
        """Run the commit ``script`` (a publication's or an update's: each answers ``{status, detail}``, 1 when
        committed, -2 while a rollback holds the view); (committed, the script's detail). When refused, sets
        :attr:`refusal` (``refused``, or the script's own reason when None). Finished afterwards, committed or
        not."""
        if self._done:
            raise OnlineStoreError(f"publication {self.version} of view '{self.view}' is already finished")
        with translate_errors(self.url, f"{action} view '{self.view}'"):
            status, detail = self._redis().eval(script, len(keys), *keys, *args)
        self._done = True
        if int(status) == -2:
            self.refusal = f"a rollback holds it ({as_text(detail)}): 'skewless rollback {self.view} --release'"
        elif int(status) != 1:
            self.refusal = refused or as_text(detail)
        return int(status) == 1, (as_text(detail) if detail else None)

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
            listed = {as_text(v) for v in client.smembers(keys.versions)}
            candidates = listed - {UNKNOWN_VERSIONS}
            full_scan = UNKNOWN_VERSIONS in listed or self.version % FULL_SCAN_EVERY == 0
            if full_scan:  # rows written before the set existed, or a periodic check: find every version's rows
                found = {keys.version_of(key) for key in client.scan_iter(match=keys.data_pattern, count=SCAN_BATCH)}
                candidates |= {v for v in found if v is not None}
                if candidates:
                    client.sadd(keys.versions, *candidates)
            garbage = [
                as_text(v)
                for v in client.eval(GARBAGE_LUA, 3, keys.pointer, keys.staged, keys.history, *sorted(candidates))
            ]
            _unlink_versions(client, keys, garbage)
            if UNKNOWN_VERSIONS in listed:
                client.srem(keys.versions, UNKNOWN_VERSIONS)


class RedisUpdate(RedisPublication):
    """An incremental publication: the latest rows of the entities a run changed, written into the live snapshot
    ``version`` in place, each only where it is at least as new as the row served (:data:`UPDATE_LUA`), the row it
    replaces kept in the run's undo log in the same script; then :meth:`commit` records the new ``watermark`` in
    the pointer as rollback point ``version.step+1`` (:data:`UPDATE_COMMIT_LUA`). ``step``: the live point's step
    when the run started (0: the whole snapshot itself).

    A reader sees each entity's row whole, old or new, never an older one after a newer; during the write some
    changed entities already have their new row and others not yet. When the live snapshot changed meanwhile
    (``moved``: another publication committed, another definition), nothing more is written and the caller
    publishes a whole snapshot instead. Rows already written stay: they are rows of the committed table, never
    older than what they replaced, and the next run writes the rest.
    """

    moved = False  # the live snapshot is no longer ``version``: publish a whole snapshot instead

    def __init__(self, *, step: int = 0, **publication: Any) -> None:
        super().__init__(**publication)
        self.step = step

    def write(self, batches: Iterable[pa.RecordBatch]) -> int:
        """Write the rows of ``batches`` (one per entity) over older live rows; returns how many took them."""
        if self._done:
            raise OnlineStoreError(f"update of view '{self.view}' is already finished")
        names = [f[0] for f in self.features]
        dtypes = [f[1] for f in self.features]
        keys = self._keys
        features = features_json(self.features)
        undo = keys.undo(f"{self.version}.{self.step + 1}")
        applied = 0
        with translate_errors(self.url, f"updating view '{self.view}'"):
            client = self._redis()
            for batch in iter_batches(batches):
                entity_keys, rows = encode_batch(
                    batch, self.key_names, self.key_dtypes, names, dtypes, EVENT_TIMESTAMP, CREATED_TIMESTAMP
                )
                for start in range(0, len(entity_keys), WRITE_BATCH):
                    chunk = entity_keys[start : start + WRITE_BATCH]
                    args: list[Any] = [None] * (2 * len(chunk))
                    args[0::2] = chunk
                    args[1::2] = rows[start : start + WRITE_BATCH]
                    status, detail = client.eval(
                        UPDATE_LUA,
                        3,
                        keys.pointer,
                        keys.history,
                        undo,
                        str(self.version),
                        str(self.step),
                        features,
                        keys.data_prefix,
                        *args,
                    )
                    if int(status) != 1:
                        self.moved = True
                        self.refusal = f"the live snapshot changed during the update ({as_text(detail)})"
                        return applied
                    applied += int(detail)
        return applied

    def commit(self) -> bool:
        """Record the new watermark in the pointer, as the next rollback point; False when the live snapshot moved
        (see :attr:`moved`) or a newer watermark is live."""
        if self.moved:
            self._done = True
            return False
        keys = self._keys
        committed, detail = self._commit_script(
            "committing an update of",
            UPDATE_COMMIT_LUA,
            [keys.pointer, keys.history, keys.version],
            [
                self.version,
                self.step,
                self.watermark,
                to_micros_now(),
                keys.undo_prefix,
                self.keep_snapshots,
                "" if self.confirmed_at is None else self.confirmed_at,
            ],
            refused=None,
        )
        self.moved = not committed and detail == "moved"
        return committed

    def abort(self) -> None:
        """Nothing to drop: rows written in place are the committed table's, never older than those served."""
        self._done = True


def _unlink_versions(client: redis.Redis, keys: ViewKeys, versions: Sequence[str]) -> None:
    """Unlink every row and undo log of ``versions`` (garbage: none of them can commit), then drop them from the
    versions set.

    The set loses a version only after its rows are gone, so a cleanup that fails midway is finished by the next.
    """
    for version in versions:
        rows = glob_escape(keys.version_prefix(int(version)).decode()) + "*"
        undo_logs = glob_escape(keys.undo(version)) + ".*"  # of its in-place runs: a failed one's has no point
        for pattern in (rows, undo_logs):
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
        client.srem(keys.versions, version)


def features_json(features: Sequence[tuple[str, DType, str]]) -> bytes:
    """The pointer's ``features`` field: the feature names and fingerprints a snapshot's rows hold, in order. A
    push compares it with its own, so it must be these very bytes."""
    return orjson.dumps([[name, fingerprint] for name, _, fingerprint in features])


def to_micros_now() -> int:
    """Now, in integer microseconds since the epoch (the pointer's ``published_at``)."""
    return int(time.time() * 1_000_000)
