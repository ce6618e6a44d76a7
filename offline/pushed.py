"""Pushed rows on the offline side: kept in a landing folder, landed in the view's Delta table before its next
materialization, so training sets see every pushed value (contract: no skew between pushed and batch values).

A push (:meth:`features.store.FeatureStore.push`) hands this module the view's computed rows, which it writes
as one Parquet file in ``<table>/_pushed/`` (Delta ignores folders starting with ``_``): first under a hidden
temporary name, then renamed, so a reader never sees half a file and any number of serving workers may push at
once without a JVM or a lock. Before a view's materialization runs, in whichever engine, the router calls
:func:`land`: the pending files go into the table in one delta-rs commit (a MERGE by the rule every engine's
MERGE follows: a row with the keys, event and created time of a stored row replaces it when its values differ,
the others are inserted), whose ``userMetadata`` names the files it landed; then the files are removed. A crash
between the commit and the removal leaves files the next landing finds named in the log: it removes them
without landing them again. Among pending rows with the same keys, event and created time, the last pushed wins
(files sort by the time they were written), as it did online.

A source row later read with the same keys, event and created time as a landed row is that row: both engines
leave out a stored row with the same values, and replace one with other values (the source restated it), so a
training set never holds both.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.config import RepoConfig
from features.dtypes import DType, arrow_type
from features.errors import CommitConflictError, MaterializationError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, PUBLISHED_AT, ViewPlan
from offline import delta_rs
from offline.tables import STATS_PROPERTY, row_columns, stats_columns, table_columns, table_path

log = logging.getLogger(__name__)

LANDING = "_pushed"
LANDED_KEY = "skewless.landed"  # in a landing commit's userMetadata: the files it landed
_ATTEMPTS = 3  # landings of the same view at once: the one that loses the commit race starts again


def landing_dir(config: RepoConfig, view: ViewPlan) -> Path:
    """Where pushed rows of ``view`` wait for its next materialization."""
    return table_path(config, view) / LANDING


def _schema(view: ViewPlan) -> pa.Schema:
    return pa.schema([(name, arrow_type(dtype)) for name, dtype in table_columns(view) if name != PUBLISHED_AT])


def record(config: RepoConfig, view: ViewPlan, rows: pa.Table) -> str:
    """Write ``rows`` (the view's computed rows) as one pending file; returns its name. The name starts with the
    time it was written, so files sort in push order."""
    folder = landing_dir(config, view)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
    temporary = folder / f".{name}.tmp"
    try:
        pq.write_table(rows.select(row_columns(view)).cast(_schema(view)), temporary)
        os.replace(temporary, folder / name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return name


def discard(config: RepoConfig, view: ViewPlan, name: str) -> None:
    """Remove the pending file ``name`` (gone already when a landing took it)."""
    (landing_dir(config, view) / name).unlink(missing_ok=True)


def pending(config: RepoConfig, view: ViewPlan) -> list[str]:
    """The pending files of ``view``, oldest first."""
    try:
        names = os.listdir(landing_dir(config, view))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(".parquet") and not n.startswith("."))


def land(config: RepoConfig, view: ViewPlan) -> int:
    """Land the pending files of ``view`` in its table (one commit), then remove them; returns how many rows
    were landed (0, at the cost of a directory listing, when nothing is pending)."""
    for attempt in range(_ATTEMPTS):
        try:
            return _land_once(config, view)
        except CommitConflictError as exc:
            if attempt == _ATTEMPTS - 1:
                raise MaterializationError(
                    f"view '{view.name}': landing pushed rows lost the commit race {_ATTEMPTS} times; rerun: {exc}"
                ) from exc
            log.info("view '%s': another writer committed first; landing pushed rows again", view.name)
    raise AssertionError("unreachable")


def _land_once(config: RepoConfig, view: ViewPlan) -> int:
    names = pending(config, view)
    if not names:
        return 0
    folder = landing_dir(config, view)
    path = table_path(config, view)
    version = delta_rs.latest_version(path)
    already = _landed(path, version)
    tables: list[pa.Table] = []
    landing: list[str] = []
    for name in names:
        if name in already:
            continue
        try:
            tables.append(pq.read_table(folder / name).cast(_schema(view)))
        except FileNotFoundError:  # another landing took it meanwhile: its commit has it
            continue
        landing.append(name)
    rows = _last_of_each_row(view, tables) if tables else None
    if rows is not None and rows.num_rows:
        metadata = json.dumps({LANDED_KEY: landing})
        stamp = pa.repeat(pa.scalar(datetime.now(UTC), arrow_type(DType.TIMESTAMP)), rows.num_rows)
        data = rows.append_column(PUBLISHED_AT, stamp)
        if version is None:
            delta_rs.create(path, data, configuration={STATS_PROPERTY: stats_columns(view)}, user_metadata=metadata)
        else:
            delta_rs.merge(
                delta_rs.snapshot(path, version),
                data,
                keys=view.key_names,
                features=view.feature_names,
                user_metadata=metadata,
            )
        log.info(
            "view '%s': landed %d pushed row(s) from %d file(s) in %s", view.name, rows.num_rows, len(landing), path
        )
    for name in names:
        if name in already or name in landing:
            (folder / name).unlink(missing_ok=True)
    return 0 if rows is None else rows.num_rows


def _landed(path: Path, version: int | None) -> set[str]:
    """The files the latest landing commit at or before ``version`` landed (every landing removes the files an
    earlier one landed before it lands its own, so only the latest can name pending files; runs' commits, which
    record a cursor instead, are skipped)."""
    if version is None:
        return set()
    names = delta_rs.newest_metadata_value(path, version, LANDED_KEY)
    return {str(n) for n in names} if isinstance(names, list) else set()


def _last_of_each_row(view: ViewPlan, tables: list[pa.Table]) -> pa.Table:
    """The rows of ``tables`` (in push order), one per keys, event and created time: the last pushed."""
    rows = pa.concat_tables(tables)
    order = pa.array(range(rows.num_rows), pa.int64())
    identity = [*view.key_names, EVENT_TIMESTAMP, CREATED_TIMESTAMP]
    numbered = rows.select(identity).append_column("__order", order)
    last = numbered.group_by(identity, use_threads=False).aggregate([("__order", "max")])
    keep = pc.is_in(order, value_set=last.column("__order_max"))
    return rows.filter(keep)
