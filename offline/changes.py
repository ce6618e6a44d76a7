"""A run's change to a view's table, worked out on Arrow tables in this process: which of its rows are new, which
restate a stored row with other values and which the table already holds (:func:`compare`, by the rule Spark's
anti-join and MERGE follow), their commit through delta-rs (:func:`write_change`), and the latest row of each
entity a commit touched (:func:`latest_of_files`), for its publication.

Shared by the engines: the Arrow engine writes every run it takes this way, and Spark a small change, once its
rows are computed (docs/ARCHITECTURE.md, "Spark's fixed costs per run"). Nothing here computes a feature value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.dtypes import DType, arrow_type
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, ViewPlan
from offline import delta_rs
from offline.codes import column_codes, micros
from offline.delta_rs import read_snapshot
from offline.errors import run_failure
from offline.tables import STATS_PROPERTY, RowCounts, row_columns, stats_columns, table_columns, table_rows


@dataclass(frozen=True, slots=True)
class Change:
    """What a run does to the table: rows to insert, rows that replace stored ones with other values (a
    source that restated them), and the positions of the replaced rows among the stored rows."""

    inserts: pa.Table
    updates: pa.Table
    replaced: np.ndarray


def compare(view: ViewPlan, rows: pa.Table, stored: pa.Table) -> Change:
    """Sort ``rows`` against the stored rows by (keys, event, created). A row whose identity the table does not
    hold is an insert; one it holds with the same values is left out (null equal to null, NaN to NaN, -0.0 to
    0.0, as Spark's anti-join compares); one it holds with other values updates it, as Spark's MERGE does."""

    order, same_key = sort_order(view, [stored, rows])
    n_stored = stored.num_rows
    event = np.concatenate([micros(stored.column(EVENT_TIMESTAMP)), micros(rows.column(EVENT_TIMESTAMP))])[order]
    created = np.concatenate([micros(stored.column(CREATED_TIMESTAMP)), micros(rows.column(CREATED_TIMESTAMP))])
    created = created[order]
    same_identity = same_key & (event == np.roll(event, 1)) & (created == np.roll(created, 1))
    # A new row right after a stored row of the same identity holds that identity (identities are unique in each).
    is_new = order >= n_stored
    matched = np.flatnonzero(is_new & same_identity & ~np.roll(is_new, 1))
    new_index, stored_index = order[matched] - n_stored, order[matched - 1]
    same_values = np.ones(len(matched), bool)
    for name in view.feature_names:
        a, b = rows.column(name).take(new_index), stored.column(name).take(stored_index)
        equal = pc.fill_null(pc.equal(a, b), False)
        equal = pc.or_(equal, pc.and_(a.is_null(), b.is_null()))
        if a.type == arrow_type(DType.FLOAT64):
            equal = pc.or_(equal, pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False))
        same_values &= np.asarray(equal.to_numpy(zero_copy_only=False), dtype=bool)
    stored_already = np.zeros(rows.num_rows, bool)
    stored_already[new_index] = True
    updated = np.sort(new_index[~same_values])
    return Change(
        inserts=rows.filter(~stored_already),
        updates=rows.take(updated),
        replaced=stored_index[~same_values],
    )


def stored_rows_of(view: ViewPlan, stored: delta_rs.Snapshot, rows: pa.Table, start: datetime | None) -> pa.Table:
    """The stored rows of the entities of ``rows`` (with an event time at or after ``start``, when given): every
    stored row a read row can have the identity of (keys, event and created time).

    Without ``start`` (a source read by its change column) every stored row is a candidate, so the scan also
    filters on the entities' key values (each key column's: a superset for several keys, made exact by the
    semi-join): only their rows are held in memory, not the whole table the scan passes through."""
    if start is not None:
        where = pc.field(EVENT_TIMESTAMP) >= pa.scalar(start, arrow_type(DType.TIMESTAMP))
    else:
        where = None
        for key in view.join_keys:
            values = pc.unique(rows.column(key.name)).cast(arrow_type(key.dtype))
            in_rows = pc.field(key.name).isin(values)
            where = in_rows if where is None else where & in_rows
    return semi_join(view, read_snapshot(stored, row_columns(view), where), rows)


def latest_rows(view: ViewPlan, table: pa.Table, *, presorted: bool = False) -> pa.Table:
    """One row per entity: the latest by event time, then created time (null first), as
    :func:`offline.spark.materialize.latest_rows` picks it. ``presorted``: ``table`` is already sorted by keys, event
    time and created time (what :func:`deduplicate` returns)."""
    if presorted:
        order = np.arange(table.num_rows)
        same_key = same_as_previous([column_codes(table.column(name))[0] for name in view.key_names], order)
    else:
        order, same_key = sort_order(view, [table])
    last_of_key = np.append(~same_key[1:], True) if len(order) else np.zeros(0, bool)
    return table.select(row_columns(view)).take(order[last_of_key])


def latest_of_files(view: ViewPlan, path: Path, version: int, files: list[str]) -> pa.Table:
    """The latest row at ``version`` of every entity that has a row in ``files`` (data files of the table)."""
    import pyarrow.parquet as pq

    if not files:
        return pa.table({name: pa.array([], arrow_type(dtype)) for name, dtype in table_columns(view)}).select(
            row_columns(view)
        )
    added = pa.concat_tables(
        [pq.read_table(path / f, columns=[*view.key_names, EVENT_TIMESTAMP]) for f in files], promote_options="default"
    )
    # An entity's latest row is at or after the earliest added row of it: older rows need not be read.
    earliest = pc.min(added.column(EVENT_TIMESTAMP).cast(arrow_type(DType.TIMESTAMP))).as_py()
    event = pc.field(EVENT_TIMESTAMP) >= pa.scalar(earliest, arrow_type(DType.TIMESTAMP))
    rows = read_snapshot(delta_rs.snapshot(path, version), row_columns(view), event)
    return latest_rows(view, semi_join(view, rows, added))


def write_change(
    view: ViewPlan,
    path: Path,
    stored: delta_rs.Snapshot | None,
    change: Change,
    at: datetime,
    metadata: str | None = None,
) -> int | None:
    """Apply ``change`` to the table in one commit, through delta-rs (creating the table when ``stored`` is
    None); the version committed, or None when there was nothing to commit. New rows alone are appended;
    restated rows are MERGEd by the rule Spark's MERGE follows, the new rows with them."""
    if stored is not None and change.inserts.num_rows == 0 and change.updates.num_rows == 0:
        return None
    data = table_rows(view, pa.concat_tables([change.updates, change.inserts]), at)
    version = 0 if stored is None else stored.version + 1
    try:
        path.mkdir(parents=True, exist_ok=True)
        if stored is None:
            return delta_rs.create(
                path, data, configuration={STATS_PROPERTY: stats_columns(view)}, user_metadata=metadata
            )
        if change.updates.num_rows:
            return delta_rs.merge(
                stored,
                data,
                keys=tuple(view.key_names),
                features=tuple(view.feature_names),
                user_metadata=metadata,
            )
        return delta_rs.append(stored, data, user_metadata=metadata)
    except Exception as exc:  # a concurrent commit, a full disk: nothing of this run is visible
        raise run_failure(
            view.name,
            exc,
            f"view '{view.name}': committing version {version} of {path} failed, the table is unchanged (a rerun "
            f"materializes the window again): {exc}",
        ) from exc


def semi_join(view: ViewPlan, rows: pa.Table, keys: pa.Table) -> pa.Table:
    """The rows of ``rows`` whose join keys appear in ``keys``."""
    wanted = keys.select(view.key_names).group_by(view.key_names).aggregate([])
    wanted = pa.table({name: wanted.column(name).cast(rows.schema.field(name).type) for name in view.key_names})
    return rows.join(wanted, keys=view.key_names, join_type="left semi", use_threads=False)


def sort_order(view: ViewPlan, tables: list[pa.Table]) -> tuple[np.ndarray, np.ndarray]:
    """The order of the rows of ``tables`` (stacked, in that order) by keys, event time and created time (null
    first), then table; and, in that order, whether each row has the keys of the row before it."""

    keys = [
        column_codes(pa.chunked_array([c for t in tables for c in t.column(name).chunks], tables[0].column(name).type))[
            0
        ]
        for name in view.key_names
    ]
    event = np.concatenate([micros(t.column(EVENT_TIMESTAMP)) for t in tables])
    created = np.concatenate([micros(t.column(CREATED_TIMESTAMP)) for t in tables])
    side = np.concatenate([np.full(t.num_rows, i, np.int8) for i, t in enumerate(tables)])
    columns = {f"k{i}": codes for i, codes in enumerate(keys)} | {"event": event, "created": created}
    if len(tables) > 1:
        columns["side"] = side
    # Arrow's multi-column sort: ~30% faster than np.lexsort on these int64 columns.
    by = [(name, "ascending") for name in columns]
    order = np.asarray(pc.sort_indices(pa.table(columns), sort_keys=by).to_numpy(), dtype=np.int64)
    return order, same_as_previous(keys, order)


def same_as_previous(keys: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """In ``order``, whether each row has the key codes of the row before it (the first row has none)."""
    same = np.ones(len(order), bool)
    for codes in keys:
        ordered = codes[order]
        same &= ordered == np.roll(ordered, 1)
    if len(order):
        same[0] = False
    return same


def deduplicate(view: ViewPlan, computed: pa.Table) -> tuple[pa.Table, RowCounts]:
    """``computed`` (join keys, features, event and created time) without the rows missing a key or the event
    time, one row per (keys, event time, created time), sorted by keys and times; and how many rows were dropped
    and why. Among rows sharing those, the one whose feature values sort first (ascending, nulls first, NaN
    last, as Spark orders them) is kept; rows equal under that order are equal but for the sign of a zero or a
    NaN's bits, and either may be kept, in Spark as here (the rule of :func:`offline.spark.tables.prepare_rows`).
    The Arrow engine's runs, and the tasks of a Spark run that creates a table, deduplicate here."""

    valid = pc.is_valid(computed.column(EVENT_TIMESTAMP))
    for name in view.key_names:
        valid = pc.and_(valid, pc.is_valid(computed.column(name)))
    rows = computed.filter(valid)
    order, same_key = sort_order(view, [rows])
    event, created = micros(rows.column(EVENT_TIMESTAMP))[order], micros(rows.column(CREATED_TIMESTAMP))[order]
    same_identity = same_key & (event == np.roll(event, 1)) & (created == np.roll(created, 1))
    keep = np.ones(len(order), bool)
    if same_identity.any():
        keep = _first_of_each_group(view, rows, order, same_identity)
    kept = rows.take(order[keep])  # sorted by keys and times: latest_rows(presorted=True) needs no sort
    return kept, RowCounts(computed.num_rows, computed.num_rows - rows.num_rows, rows.num_rows - kept.num_rows)


def _first_of_each_group(view: ViewPlan, rows: pa.Table, order: np.ndarray, same_identity: np.ndarray) -> np.ndarray:
    """Which sorted rows to keep: every row alone in its group, and the one sorting first in each group."""
    keep = ~same_identity
    starts = np.flatnonzero(keep)
    sizes = np.diff(np.append(starts, len(order)))
    groups = [(int(s), int(s + n)) for s, n in zip(starts[sizes > 1], sizes[sizes > 1], strict=True)]
    members = np.concatenate([np.arange(s, e) for s, e in groups])
    values = [rows.column(name).take(order[members]).to_pylist() for name in view.feature_names]
    position = {int(m): i for i, m in enumerate(members)}
    for s, e in groups:
        best = min(range(s, e), key=lambda m: tuple(_sort_key(column[position[m]]) for column in values))
        keep[s] = False
        keep[best] = True
    return keep


def _sort_key(value: object) -> tuple[object, ...]:
    """Spark's ascending order with nulls first: NaN after every number, -0.0 equal to 0.0."""
    if value is None:
        return (0,)
    if isinstance(value, float) and value != value:
        return (1, 1, 0.0)
    return (1, 0, value)
