"""The contracts between the layers: what an offline engine and an online store must provide.

They live in ``features/`` so the facade can drive both, while ``offline/`` and ``online/`` never import
each other: the materialization job receives an :class:`OnlineStore` as an argument and hands it rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from features.dtypes import from_micros
from features.plan import FeatureRefPlan, Plan, ViewPlan

if TYPE_CHECKING:
    import pyarrow as pa

    from features.audit import FeatureLayers, Rollback
    from features.checks import CheckReport
    from features.config import RepoConfig
    from features.run_stats import RunStats


class Publication(Protocol):
    """One atomic publish of one view's latest rows to the online store.

    Picklable: :meth:`write` runs inside Spark executors, each call on one partition's Arrow batches, whose
    columns are the view's join keys, its features (plan order), ``event_timestamp`` and
    ``created_timestamp``, one row per entity. Readers keep seeing the previous values until :meth:`commit`;
    :meth:`abort` (or a crash) leaves them untouched.
    """

    def write(self, batches: Iterable[pa.RecordBatch]) -> int:
        """Stage rows; returns how many were written."""
        ...

    def commit(self) -> bool:
        """Make the staged rows visible at once. False when a newer publication already won."""
        ...

    def abort(self) -> None:
        """Drop the staged rows."""
        ...


def column_values(column: list[Any] | ColumnText) -> list[Any]:
    """A read's column as a list of values, decoded when it came as text."""
    return column.values if type(column) is ColumnText else cast("list[Any]", column)


class ColumnText:
    """One column of a read given as the JSON array text of its values (``b'[1.5,null,"NaN"]'``), exactly what
    ``orjson.dumps`` writes for the column in an answer: the HTTP answer splices it as it is, and the values are
    decoded (by ``decode``, once) only for the callers that ask for them (:attr:`values`). ``blank`` gives the
    text with the values at some indices replaced by null (:meth:`without`)."""

    __slots__ = ("_blank", "_decode", "_values", "text")

    def __init__(
        self, text: bytes, decode: Callable[[bytes], list[Any]], blank: Callable[[bytes, list[int]], bytes]
    ) -> None:
        self.text = text
        self._decode = decode
        self._blank = blank
        self._values: list[Any] | None = None

    def without(self, indices: list[int]) -> ColumnText:
        """This column with the values at ``indices`` (increasing) null: an expired row's values are not served."""
        return ColumnText(self._blank(self.text, indices), self._decode, self._blank)

    @property
    def values(self) -> list[Any]:
        if self._values is None:
            self._values = self._decode(self.text)
        return self._values


class OnlineValues(NamedTuple):
    """What the online store holds for one view and a list of entities, column by column, in request order.

    ``columns[j][i]`` is requested feature ``j`` of entity ``i`` (None when the store has no row for it); a
    column may come as a :class:`ColumnText` (its values as the answer's JSON text), see :func:`column_values`;
    ``event_micros[i]`` the row's event time in microseconds since the epoch, UTC (None: no row). Columns and
    integer times keep the read path free of per-value objects; :attr:`values` and :attr:`event_timestamps`
    give rows and datetimes for tools and tests. Status (present / missing / expired) is derived by the caller
    from the view's TTL, so every reader applies the same rule.

    A named tuple rather than a frozen dataclass: a read makes one per view, and a frozen dataclass's ``__init__``
    (an ``object.__setattr__`` per field) cost ~1.2 µs more each, ~2% of a one-entity lookup of two views.
    """

    view: str
    features: tuple[str, ...]
    columns: list[list[Any] | ColumnText]
    event_micros: list[int | None]
    #: Requested features the live snapshot does not hold (never published, or published from a different
    #: definition: another feature fingerprint). Their values are None and callers report them as missing.
    unavailable: frozenset[str] = frozenset()
    #: The publication version of the snapshot read (None: nothing published), for the served-feature log.
    snapshot: str | None = None

    @property
    def values(self) -> list[tuple[Any, ...] | None]:
        """One tuple of the requested features per entity; None where the store has no row."""
        columns = [column_values(c) for c in self.columns]
        rows = zip(*columns, strict=True) if columns else ((),) * len(self.event_micros)
        return [None if t is None else row for row, t in zip(rows, self.event_micros, strict=True)]

    @property
    def event_timestamps(self) -> list[datetime | None]:
        return [None if t is None else from_micros(t) for t in self.event_micros]


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """What the live snapshot of a view was published from: the offline table version (``watermark``), the
    view's storage and feature fingerprints at the time, and when it was committed."""

    watermark: int
    storage_fingerprint: str
    feature_fingerprints: tuple[tuple[str, str], ...]  # (feature name, fingerprint), in plan order
    published_at: datetime
    # The rollback point: the publication version N (what the served-feature log records) of a whole snapshot, or
    # "N.s" after s runs updated snapshot N in place (see snapshot_order).
    version: str | None = None
    held: str | None = None  # set while a rollback holds the view: who rolled it back and when


def snapshot_order(point: str) -> tuple[int, int]:
    """A rollback point's place in publication order: ``"7"`` (whole snapshot 7) is ``(7, 0)``, ``"7.2"`` (the
    second run updated in place in it) ``(7, 2)``.

    >>> sorted(["7.10", "8", "7.2", "7"], key=snapshot_order)
    ['7', '7.2', '7.10', '8']
    """
    version, _, step = point.partition(".")
    return int(version), int(step or 0)


@runtime_checkable
class RollbackStore(Protocol):
    """An online store that keeps earlier published snapshots and can make one live again at once."""

    def kept_snapshots(self, view: str) -> list[LiveSnapshot]:
        """The snapshots of ``view`` a rollback can make live (the live one included), newest first."""
        ...

    def rollback(self, view: str, *, to: str | None, held: str) -> tuple[str, str]:
        """Make snapshot ``to`` (None: the newest kept one older than the live) live, holding the view (its
        publications are refused, with ``held`` as the reason) until :meth:`release`; (from, to) versions."""
        ...

    def release(self, view: str) -> str | None:
        """End a rollback's hold (the next run publishes again); the hold it ended, None when there was none."""
        ...


@runtime_checkable
class OnlineStore(Protocol):
    """A key-value store serving the latest published row per entity and view."""

    def start_publication(self, view: ViewPlan, *, watermark: int, confirmed_at: datetime | None = None) -> Publication:
        """Begin publishing ``view``. ``watermark`` orders publications (the offline table version the
        rows come from): a commit with a lower watermark than the live one is refused. ``confirmed_at``
        (windowed views): the tick the snapshot is current at; a lookup serves each value's event time as the
        later of its row's (the tick its value last changed at) and this, so TTLs count from the last tick
        computed while a tick that changed nothing writes nothing."""
        ...

    def live_snapshot(self, view: ViewPlan) -> LiveSnapshot | None:
        """What the live snapshot of ``view`` was published from; None before its first commit."""
        ...

    def read(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        """Read features for many entities across many views in one round trip.

        ``entities`` maps every join key of the requested views to its values, one per entity, already checked
        against the key types (see :func:`features.lookup.lookup`): ``{"card_id": [1, 2]}``."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> OnlineStore: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class UpdatableStore(Protocol):
    """An online store that can publish a run's changed entities into the live snapshot in place; it does when
    ``update_in_place`` (``online.update_in_place``, default true), keeping what each run overwrote so that it
    stays a rollback point."""

    update_in_place: bool

    def start_update(
        self, view: ViewPlan, *, watermark: int, live_version: str, confirmed_at: datetime | None = None
    ) -> Publication:
        """Write rows into the live snapshot at rollback point ``live_version`` (each only over an older row) and
        record ``watermark`` (and ``confirmed_at``, as for :meth:`OnlineStore.start_publication`) at commit, as a
        new rollback point; the publication's ``moved`` is true when that snapshot is no longer live."""
        ...


@dataclass(frozen=True, slots=True)
class StoredView:
    """What an online store holds of one view: its keys, and how many snapshots (published versions) they form."""

    name: str
    keys: int
    snapshots: int


@runtime_checkable
class PrunableStore(Protocol):
    """An online store that can list what it holds per view and delete a view's data (``skewless prune`` and
    ``skewless teardown`` use it when the store has it)."""

    def stored_views(self) -> list[StoredView]:
        """Every view of this project the store holds keys of."""
        ...

    def delete_view(self, view: str) -> int:
        """Delete every key of ``view``; returns how many were deleted."""
        ...


@runtime_checkable
class SampleableStore(Protocol):
    """An online store that can list some of the entities it serves (``skewless audit --sample``)."""

    def sample_entities(self, view: ViewPlan, count: int) -> dict[str, list[Any]]:
        """Up to ``count`` entities of ``view``'s live snapshot, as join-key columns (timestamps as
        microseconds since the epoch)."""
        ...


@runtime_checkable
class AsyncReadableStore(Protocol):
    """An online store that can also read on a server's event loop without blocking it (the HTTP service
    awaits :meth:`read_async` when the store has it, and calls :meth:`OnlineStore.read` otherwise)."""

    async def read_async(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        """What :meth:`OnlineStore.read` returns, awaited."""
        ...


@runtime_checkable
class PushableStore(Protocol):
    """An online store that takes pushed rows (:meth:`features.store.FeatureStore.push`)."""

    def push(self, view: ViewPlan, rows: pa.Table) -> int:
        """Serve ``rows`` (one per entity: join keys, features in plan order, ``event_timestamp``,
        ``created_timestamp``) at once, each only where it is at least as new (event time, then created time,
        a missing one first) as the row served for its entity, atomically per entity against other pushes and
        publications; returns how many entities took the pushed row."""
        ...


@runtime_checkable
class PushRecorder(Protocol):
    """An offline engine that keeps pushed rows for the next materialization of their view."""

    def record_push(self, view: ViewPlan, rows: pa.Table) -> str:
        """Keep ``rows`` (a view's computed rows) so the next materialization of ``view`` lands them in its
        table; returns what :meth:`discard_push` takes to drop them again."""
        ...

    def discard_push(self, view: ViewPlan, handle: str) -> None:
        """Drop rows :meth:`record_push` kept and nothing landed yet (a push whose online step failed)."""
        ...


def online_key_columns(views: Sequence[ViewPlan]) -> tuple[str, ...]:
    """The union of the views' join keys, in first-seen order: the columns a lookup request must give."""
    columns: list[str] = []
    for view in views:
        columns.extend(k for k in view.key_names if k not in columns)
    return tuple(columns)


@dataclass(frozen=True, slots=True)
class MaterializationResult:
    view: str
    rows_read: int
    rows_written_offline: int
    offline_version: int | None
    rows_published: int
    online_committed: bool
    seconds: float
    ticks_through: datetime | None = None  # windowed views: the last tick computed, which the values hold at
    online_current: bool = False  # nothing published: the online store already serves this offline version
    engine: str = "spark"  # whose code computed it: "arrow" (no JVM) or "spark" (here or in the warm engine)
    #: Why each engine asked before it did not take the run: (engine, reason), in the order asked.
    refusals: tuple[tuple[str, str], ...] = ()
    rows_landed: int = 0  # rows pushed since the previous run, landed in the table before this run read it
    stats: RunStats | None = None  # per feature, of the rows written and of the latest rows published
    checks: CheckReport | None = None  # the run's checks (features/checks.py): all passed, or warnings only
    #: Which source rows the run read and why (first run, since the watermark minus the lookback, --start, ...).
    read_reason: str = ""
    #: Published the changed entities into the live snapshot in place (False: a whole new snapshot, or nothing).
    published_changed_only: bool = False


class Progress(Protocol):
    """Where long jobs report progress; the CLI shows it as a progress bar."""

    def start(self, task: str, total: int | None = None) -> None: ...

    def advance(self, task: str, amount: int = 1) -> None: ...

    def finish(self, task: str) -> None: ...


class OfflineEngine(Protocol):
    """Batch computation: materialization and point-in-time training sets."""

    def __init__(self, config: RepoConfig) -> None: ...

    def materialize(
        self,
        plan: Plan,
        view: ViewPlan,
        *,
        start: datetime | None,
        end: datetime | None,
        online: OnlineStore | None,
        progress: Progress | None = None,
        republish: bool = False,
        plan_version: int | None = None,
        skip_checks: bool = False,
    ) -> MaterializationResult:
        """With ``plan_version``, the run is recorded in the registry's history by the process that runs it.
        ``skip_checks``: blocking checks that fail do not stop the run (recorded with it)."""
        ...

    def training_dataset(
        self,
        plan: Plan,
        plan_version: int,
        entities: Any,
        refs: Sequence[FeatureRefPlan],
        *,
        timestamp_column: str = "event_timestamp",
        output: str | None = None,
        output_format: str = "pandas",
    ) -> Any: ...

    def reproduce(self, plan: Plan, manifest_path: str, *, output: str | None = None) -> Any: ...

    def served_log(self, since: datetime | None = None) -> pa.Table:
        """Land the pending batches of logged lookups, then the served-feature log's rows since ``since``."""
        ...

    def audit_layers(
        self,
        plan: Plan,
        plan_version: int,
        log: pa.Table,
        *,
        logged_plans: Mapping[int, Plan],
        watermarks: Mapping[str, int | None],
        recompute: bool = True,
        rollbacks: Mapping[str, Sequence[Rollback]] | None = None,
    ) -> list[FeatureLayers]:
        """The offline layers of the consistency audit of ``log`` rows (:mod:`features.audit`); ``rollbacks``:
        when a rollback held each view, and the Delta version it served then."""
        ...

    def stop(self) -> None: ...


def iter_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Skip empty batches (Spark hands some to every partition)."""
    return (b for b in batches if b.num_rows)
