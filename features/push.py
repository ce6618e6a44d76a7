"""Pushing fresh values: a view's source rows, computed as a materialization computes them, served at once and
kept for the offline table.

>>> store.push("card_last_payment", {"card_id": [7], "paid_at": [now], "recorded_at": [now],  # doctest: +SKIP
...     "amount": [25.0], "fx_rate": [1.0], "country": ["FR"], "home_country": ["FR"]})

The rows hold the view's *source* columns (join keys, the source's timestamp column, its created column when
it has one, and the fields the features read), checked against the plan's types. The features are computed by
:func:`features.rows.compute_features`, the function the Arrow engine materializes with (the one evaluator of
row expressions: contract 2). Then, in this order:

1. the offline side keeps the rows (:class:`features.protocols.PushRecorder`: a pending file the next
   materialization lands in the view's Delta table, see :mod:`offline.pushed`);
2. the online store serves each entity's newest pushed row at once, where it is at least as new as the row it
   serves (:class:`features.protocols.PushableStore`, atomic per entity in Redis).

Offline first, so a value is never served that the offline side will not have: when the online store refuses
the rows (another definition is served), the pending file is removed and nothing changed; when it fails
otherwise (unreachable, a timeout: it may have written them), the file stays and the next run lands and serves
the rows. Views with windowed aggregations are refused: their values are windows over
source rows at each tick, computed only in Spark (contract 3), and a pushed row is one event, not a window value.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from features.dtypes import DType, arrow_type
from features.errors import PushConflictError, PushError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, ViewPlan
from features.protocols import OfflineEngine, OnlineStore, PushableStore, PushRecorder
from features.rows import compute_features
from features.rows import refusal as rows_refusal


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did: ``rows`` computed and kept for the offline table, ``entities`` they cover, ``served``
    entities whose online value is now the pushed one (the others already served a newer row; 0 for an
    offline-only view)."""

    view: str
    rows: int
    entities: int
    served: int

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view, "rows": self.rows, "entities": self.entities, "served": self.served}


def source_columns(view: ViewPlan) -> dict[str, DType]:
    """The columns a push to ``view`` gives, and their types, in the source's order: join keys, the timestamp
    and created columns, and the fields its features read."""
    read: set[str] = {k.name for k in view.join_keys} | {view.source.timestamp_column}
    if view.source.created_column:
        read.add(view.source.created_column)
    for feature in view.features:
        read |= feature.expression.columns()
    types = {c.name: c.dtype for c in view.source.columns}
    ordered = [c.name for c in view.source.columns if c.name in read]
    ordered += sorted(read - set(ordered))  # a join key the source names otherwise (never, once compiled)
    keys = {k.name: k.dtype for k in view.join_keys}
    return {name: types.get(name, keys.get(name, DType.STRING)) for name in ordered}


def refusal(view: ViewPlan) -> str | None:
    """Why ``view`` takes no pushes, or None."""
    if view.is_windowed:
        return (
            "its features are windowed aggregations, computed at each tick from the source rows in Spark only; "
            "a pushed row is one event, not a window value (add the event to the source: the next run counts it)"
        )
    return rows_refusal(view)


def push(view: ViewPlan, rows: Any, *, offline: OfflineEngine, online: OnlineStore | None) -> PushResult:
    """Validate ``rows`` against ``view``, compute its features, keep them offline, serve them online (when the
    view is served online and ``online`` is given). A :class:`PushError` names what is wrong and changes
    nothing."""
    why = refusal(view)
    if why is not None:
        raise PushError(f"view '{view.name}' takes no pushes: {why}")
    table = as_source_table(view, rows)
    _check_rows(view, table)
    computed = compute_features(view, table)
    if computed.num_rows == 0:
        return PushResult(view.name, 0, 0, 0)
    newest = latest_per_entity(view, computed)
    store = online if view.online else None
    if store is not None:
        if not isinstance(store, PushableStore):
            raise PushError(f"the online store {store!r} takes no pushes")
        _check_live_definition(view, store)
    if not isinstance(offline, PushRecorder):
        raise PushError(f"the offline engine {type(offline).__name__} keeps no pushed rows")
    handle = offline.record_push(view, computed)
    served = 0
    if store is not None:
        try:
            served = store.push(view, newest)
        except PushConflictError:
            offline.discard_push(view, handle)  # refused before anything was written: nothing kept either
            raise
        # Any other failure (a timeout, a dropped connection) may come after the store wrote the rows: the
        # pending file stays, so the next run lands and serves them whatever happened, and offline and online
        # agree from then on. Pushing the same rows again is harmless.
    return PushResult(view.name, computed.num_rows, newest.num_rows, served)


def _check_live_definition(view: ViewPlan, store: OnlineStore) -> None:
    """Refuse early (before anything is written) when the online store serves ``view`` from another definition;
    the store's own atomic check covers a materialization that changes it meanwhile."""
    live = store.live_snapshot(view)
    if live is None:
        return
    mine = tuple((f.name, f.fingerprint) for f in view.features)
    if live.feature_fingerprints != mine:
        raise PushConflictError(
            f"view '{view.name}' is served online from another definition than the applied plan's (features "
            f"{[n for n, _ in live.feature_fingerprints]} against {list(view.feature_names)}, or changed "
            "expressions): materialize it, then push"
        )


def latest_per_entity(view: ViewPlan, computed: pa.Table) -> pa.Table:
    """One row per entity: the latest by event time, then created time (a missing one first), as a
    materialization publishes it."""
    keys = [(name, "ascending", "at_start") for name in (*view.key_names, EVENT_TIMESTAMP, CREATED_TIMESTAMP)]
    ordered = computed.take(pc.sort_indices(computed, sort_keys=keys))
    position = pa.array(range(ordered.num_rows), pa.int64())
    grouped = ordered.select(list(view.key_names)).append_column("__position", position)
    last = grouped.group_by(list(view.key_names), use_threads=False).aggregate([("__position", "max")])
    positions = last.column("__position_max")
    return ordered.take(positions.take(pc.sort_indices(positions)))


# -- validation -------------------------------------------------------------------------------------------------

_KINDS = {
    DType.INT64: "an integer",
    DType.FLOAT64: "a number",
    DType.STRING: "a string",
    DType.BOOL: "true or false",
    DType.TIMESTAMP: "a time (a datetime, or ISO-8601 text; naive times are UTC)",
}
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # how JSON carries them


def _expected(view: ViewPlan, columns: Mapping[str, DType]) -> str:
    listed = ", ".join(f"{name} ({dtype.value})" for name, dtype in columns.items())
    return f"a push to view '{view.name}' takes the columns {listed}"


def as_source_table(view: ViewPlan, rows: Any) -> pa.Table:
    """``rows`` (a pandas DataFrame, a pyarrow Table or a mapping of columns to lists) as an Arrow table of the
    view's source columns and types; :class:`PushError` for a missing, extra or mistyped column."""
    columns = source_columns(view)
    if isinstance(rows, pa.Table):
        given = list(rows.column_names)
    elif isinstance(rows, Mapping):
        given = [str(name) for name in rows]
    elif hasattr(rows, "columns") and hasattr(rows, "dtypes"):  # pandas, without importing it
        given = [str(name) for name in rows.columns]
    else:
        raise PushError(
            f"rows must be a pandas DataFrame, a pyarrow Table or a dict of lists; {_expected(view, columns)}"
        )
    missing = [name for name in columns if name not in given]
    if missing:
        raise PushError(f"missing column(s) {', '.join(missing)}; {_expected(view, columns)}")
    extra = [name for name in given if name not in columns]
    if extra:
        raise PushError(f"unknown column(s) {', '.join(extra)}; {_expected(view, columns)}")
    if isinstance(rows, Mapping):
        return _from_lists(view, rows, columns)
    if not isinstance(rows, pa.Table):
        try:
            rows = pa.Table.from_pandas(rows, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise PushError(f"the rows do not convert to Arrow ({exc}); {_expected(view, columns)}") from exc
    return pa.table({name: _typed(view, name, rows.column(name), dtype, columns) for name, dtype in columns.items()})


def _typed(view: ViewPlan, name: str, column: pa.ChunkedArray, dtype: DType, columns: Mapping[str, DType]) -> Any:
    """``column`` as the plan type ``dtype`` when its Arrow type is one of that kind; else :class:`PushError`."""
    kind = column.type
    fits = {
        DType.INT64: pa.types.is_integer(kind),
        DType.FLOAT64: pa.types.is_floating(kind) or pa.types.is_integer(kind),
        DType.STRING: pa.types.is_string(kind) or pa.types.is_large_string(kind),
        DType.BOOL: pa.types.is_boolean(kind),
        DType.TIMESTAMP: pa.types.is_timestamp(kind),
    }[dtype] or pa.types.is_null(kind)
    if not fits:
        raise PushError(f"column '{name}' is {kind}, not {dtype.value}; {_expected(view, columns)}")
    if pa.types.is_timestamp(kind) and kind.tz is None:
        column = column.cast(pa.timestamp(kind.unit, tz="UTC"))  # naive times are UTC
    try:
        # Times to microseconds as Spark reads them (truncated); numbers only when exact.
        return column.cast(arrow_type(dtype), safe=dtype is not DType.TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PushError(f"column '{name}' does not fit {dtype.value}: {exc}; {_expected(view, columns)}") from exc


def _from_lists(view: ViewPlan, rows: Mapping[str, Any], columns: Mapping[str, DType]) -> pa.Table:
    arrays: dict[str, pa.Array] = {}
    for name, dtype in columns.items():
        values = rows[name]
        if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
            raise PushError(f"column '{name}' must be a list of values, not {type(values).__name__}")
        checked = [None if v is None else _value(view, name, dtype, v, i, columns) for i, v in enumerate(values)]
        arrays[name] = pa.array(checked, arrow_type(dtype))
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise PushError(f"the columns of a push must have the same length; got {shown}")
    return pa.table(arrays)


def _value(view: ViewPlan, name: str, dtype: DType, value: Any, index: int, columns: Mapping[str, DType]) -> Any:
    is_bool = type(value) is bool or type(value).__name__ in ("bool_", "bool")
    ok = False
    if dtype is DType.INT64:
        ok = isinstance(value, numbers.Integral) and not is_bool and -(2**63) <= int(value) < 2**63
        value = int(value) if ok else value
    elif dtype is DType.FLOAT64:
        if isinstance(value, str) and value in _NON_FINITE:
            value, ok = _NON_FINITE[value], True
        else:
            ok = isinstance(value, numbers.Real) and not is_bool
            value = float(value) if ok else value
    elif dtype is DType.STRING:
        ok = isinstance(value, str)
    elif dtype is DType.BOOL:
        ok = is_bool
        value = bool(value) if ok else value
    elif dtype is DType.TIMESTAMP:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # not ISO text: reported below, as any other value
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        ok = isinstance(value, datetime)
        if ok and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
    if not ok:
        raise PushError(
            f"column '{name}' is {dtype.value}: value {index} ({value!r}, {type(value).__name__}) is not "
            f"{_KINDS[dtype]}; {_expected(view, columns)}"
        )
    return value


def _check_rows(view: ViewPlan, table: pa.Table) -> None:
    """Every row has its keys and event time, and no two rows are the same row (keys, event and created time):
    a table holds one, and a push cannot say which it meant."""
    for name in (*view.key_names, view.source.timestamp_column):
        nulls = table.column(name).null_count
        if nulls:
            first = pc.index(pc.is_null(table.column(name)), True).as_py()
            raise PushError(f"row {first} has no '{name}'; every pushed row needs its join keys and event time")
    identity = [*view.key_names, view.source.timestamp_column]
    if view.source.created_column:
        identity.append(view.source.created_column)
    if table.num_rows:
        counts = table.select(identity).group_by(identity, use_threads=False).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
        if repeated.num_rows:
            first = {name: repeated.column(name)[0].as_py() for name in identity}
            raise PushError(
                f"{repeated.column('count_all')[0].as_py()} rows share {first}: a view holds one row per keys, "
                "event and created time; push one"
            )
