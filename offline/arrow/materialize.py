"""Materializing a view without aggregations in Arrow and NumPy, without a JVM, when its rows fit in memory.

It does what :func:`offline.spark.materialize.materialize` does in Spark, step for step, and writes the same table:
read the source window (:mod:`offline.adbc_source`), compute the features with the one evaluator of row
expressions (:mod:`features.evaluator`, the one the conformance suite holds to Spark's translation: contract 2),
drop rows without keys or event time, keep one row per (keys, event time, created time) by the same rule, leave
out the rows the table already holds, commit the rest in one version (:mod:`offline.delta_rs`: an append, or a
MERGE by Spark's rule when the source restated stored rows), and publish the latest row per entity of the table
at that version. A materialization of 2M source rows takes seconds from a cold start where a fresh Spark
session takes a minute.

Which runs come here is decided before any row is read, by :func:`refusal` (asked by
:class:`offline.arrow.engine.ArrowEngine`): windowed views never do, as aggregations are computed only in Spark
(contract 3).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from features.checks import ArrowRows, Baseline, gate
from features.config import RepoConfig
from features.plan import EVENT_TIMESTAMP, ViewPlan
from features.protocols import MaterializationResult, OnlineStore, Progress
from features.rows import compute_features
from features.rows import refusal as rows_refusal
from features.run_stats import FeatureStats, RunStats, arrow_stats
from offline import adbc_source, delta_rs, incremental
from offline.changes import (
    Change,
    compare,
    deduplicate,
    latest_of_files,
    latest_rows,
    stored_rows_of,
    write_change,
)
from offline.delta_rs import DELTA_TYPES, read_snapshot
from offline.publication import Published, RunProgress, publish_unless_live, write_from_here
from offline.tables import (
    RowCounts,
    remove_abandoned_staging,
    row_columns,
    table_columns,
    table_path,
)

log = logging.getLogger(__name__)


def refusal(config: RepoConfig, view: ViewPlan, start: datetime | None, end: datetime | None) -> str | None:
    """Why a run of ``view`` over ``[start, end)`` is not this module's, or None. It reads the plan, the table's
    Delta log and the database's answer to two questions about the window (its columns' types, its row count),
    never the rows themselves."""
    problem = _problem(config, view)
    if problem is None:
        problem = adbc_source.refusal(config.connection_url(view.source.connection))
    if problem is None:
        problem = _table_problem(config, view, table_path(config, view))
    if problem is None:
        uri = adbc_source.libpq_uri(config.connection_url(view.source.connection))
        window = incremental.plan_read(view, table_path(config, view), start, end)
        problem = adbc_source.window_refusal(
            view.source,
            uri,
            window.start,
            window.end,
            since=window.since,
            max_rows=config.arrow_materialize_max_rows,
        )
    return problem


def materialize(
    config: RepoConfig,
    view: ViewPlan,
    *,
    start: datetime | None,
    end: datetime | None,
    online: OnlineStore | None,
    progress: Progress | None = None,
    republish: bool = False,
    baseline: Baseline | None = None,
) -> MaterializationResult:
    """Materialize ``view`` as :func:`offline.spark.materialize.materialize` would, for a run :func:`refusal`
    accepted; its checks (against ``baseline``) are evaluated before the commit."""

    began = time.monotonic()
    run = RunProgress(progress, view)
    run.reading()
    path = table_path(config, view)
    stored = _stored_snapshot(path)
    if stored is not None:
        remove_abandoned_staging(view.name, path)
    window = incremental.plan_read(view, path, start, end)
    uri = adbc_source.libpq_uri(config.connection_url(view.source.connection))
    source = adbc_source.read_source(view.source, uri, window.start, window.end, window.since)
    cursor = incremental.next_cursor(window, incremental.latest_time(source.column(view.source.cursor_column)))
    rows, counts = prepare_rows(view, source)
    # The stored rows a read row may equal or restate: those of its entities (at or after the window's start).
    stored_rows = None if stored is None else stored_rows_of(view, stored, rows, window.start)
    change = (
        Change(rows, rows.slice(0, 0), np.zeros(0, np.int64))
        if stored_rows is None
        else compare(view, rows, stored_rows)
    )
    run.read(counts.read)
    log.info("view '%s': read %d source row(s) from '%s' (%s)", view.name, counts.read, view.source.name, window.reason)
    counts.warn(view.name)
    features = [(f.name, f.dtype) for f in view.features]
    batch = pa.concat_tables([change.updates, change.inserts])
    written_stats = arrow_stats(batch, features)
    # The gate: a blocking check that fails raises here, before anything is committed or published.
    report = gate(view, counts.read, written_stats, ArrowRows(batch, view.key_names, EVENT_TIMESTAMP), baseline)
    written = write_change(view, path, stored, change, datetime.now(UTC), incremental.cursor_metadata(cursor))
    version = written if written is not None else (stored.version if stored is not None else None)
    log.info(
        "view '%s': %d row(s) inserted and %d updated in %s (version %s), in Arrow without a JVM",
        view.name,
        change.inserts.num_rows,
        change.updates.num_rows,
        path,
        version,
    )
    latest_stats: dict[str, FeatureStats] = {}
    outcome = Published()
    if view.online and online is not None and version is not None:

        def latest() -> pa.Table:
            # A table this run created holds just its inserts, sorted by prepare_rows: no need to read it.
            if stored is None:
                rows = latest_rows(view, change.inserts, presorted=True)
            else:
                rows = latest_rows(view, read_snapshot(delta_rs.snapshot(path, version), row_columns(view)))
            latest_stats.update(arrow_stats(rows, features))
            return rows

        def latest_changed(files: list[str]) -> pa.Table:
            rows = latest_of_files(view, path, version, files)
            latest_stats.update(arrow_stats(rows, features))
            return rows

        outcome = publish_unless_live(
            view,
            path,
            version,
            online,
            write_from_here(latest, run),
            created=stored is None,
            republish=republish,
            write_changed=lambda publication, files: write_from_here(lambda: latest_changed(files), run)(publication),
        )
    run.finish()
    return MaterializationResult(
        view=view.name,
        rows_read=counts.read,
        rows_written_offline=change.inserts.num_rows + change.updates.num_rows,
        offline_version=version,
        rows_published=outcome.rows,
        online_committed=outcome.committed,
        seconds=time.monotonic() - began,
        online_current=outcome.current,
        engine="arrow",
        stats=RunStats("arrow", written_stats, latest_stats or None),
        checks=report,
        read_reason=window.reason,
        published_changed_only=outcome.changed_only,
    )


def _problem(config: RepoConfig, view: ViewPlan) -> str | None:
    """Why ``view`` is not this module's whatever its source and table, or None."""
    if config.arrow_materialize_max_rows == 0:
        return "offline.arrow_materialize_max_rows is 0"
    if view.is_windowed:
        return "its aggregations are computed only in Spark"
    return rows_refusal(view)


def _table_problem(config: RepoConfig, view: ViewPlan, path: Path) -> str | None:
    """Why the view's table (if it has one) is not one this module adds to, or None."""
    try:
        stored = _stored_snapshot(path)
    except (delta_rs.UnsupportedTableError, OSError) as exc:  # tables the Python reader does not read are Spark's
        return str(exc)
    if stored is None:
        return None
    expected = tuple((name, DELTA_TYPES[dtype]) for name, dtype in table_columns(view))
    if stored.columns != expected:
        return f"the table's columns {stored.columns} are not the view's {expected}"
    if stored.size > config.arrow_join_max_mb * 2**20:
        return f"the table holds {stored.size / 2**20:,.0f} MiB, over offline.arrow_join_max_mb"
    return None


def _stored_snapshot(path: Path) -> delta_rs.Snapshot | None:
    """The table's current snapshot; None when there is no table yet."""
    version = delta_rs.latest_version(path)
    return None if version is None else delta_rs.snapshot(path, version)


def prepare_rows(view: ViewPlan, source: pa.Table) -> tuple[pa.Table, RowCounts]:
    """The computed rows of ``source``, deduplicated by the rule both engines share
    (:func:`offline.changes.deduplicate`), sorted by keys and times."""
    return deduplicate(view, compute_features(view, source))
