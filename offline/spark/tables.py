"""Writing and reading the Delta feature tables in Spark (the layout is :mod:`offline.tables`).

Writes are a single commit, hence atomic: a run that creates a table writes it in :mod:`offline.spark.first_write`,
later runs MERGE only the new or changed rows here, and re-running a window changes nothing.
"""

from __future__ import annotations

import functools
import logging
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.types import StructType

from features.checks import ArrowRows, RunRows
from features.errors import MaterializationError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, PUBLISHED_AT, ViewPlan
from features.run_stats import FeatureStats, arrow_stats
from offline import changes, delta_rs
from offline.spark.checks import SparkRows
from offline.spark.jdbc import quote_spark, spark_type
from offline.spark.stats import spark_stats
from offline.tables import RowCounts, stored_types

log = logging.getLogger(__name__)

#: A run whose window holds at most this many values (source rows times columns, ~tens of MB) onto a table the
#: driver may read is finished on the driver: compared, committed through delta-rs and published from there,
#: as the Arrow engine does (see :func:`write_rows`, ``offline.spark.materialize._write_changed``). Opening the
#: Delta table in Spark, its MERGE and a publication from the executors cost seconds of jobs, Delta's driver work
#: and cold code in a new process whatever the change's size (bench/results/2026-12-06-spark-jobs.md). The bound
#: keeps table-sized data off the driver: a larger change is compared, MERGEd and published by Spark.
DRIVER_MAX_VALUES = 5_000_000


def driver_snapshot(
    path: Path | str, version: int, rows: int | None, columns: int, max_bytes: int
) -> delta_rs.Snapshot | None:
    """The table's snapshot at ``version`` when a change of ``rows`` rows of ``columns`` columns onto it is
    finished on the driver: few enough values (:data:`DRIVER_MAX_VALUES`) onto a table of at most ``max_bytes``
    (what this process may read of one). None when Spark finishes it (``rows`` unknown, too many, or a larger
    table); the snapshot is loaded only once the rows fit."""
    if rows is None or rows * columns > DRIVER_MAX_VALUES:
        return None
    snapshot = delta_rs.snapshot(path, version)
    return snapshot if snapshot.size <= max_bytes else None


def table_schema(view: ViewPlan) -> StructType:
    """Join keys, features (plan types), event_timestamp, created_timestamp, published_at."""

    fields = [T.StructField(k.name, spark_type(k.dtype), True) for k in view.join_keys]
    fields += [T.StructField(f.name, spark_type(f.dtype), True) for f in view.features]
    fields += [
        T.StructField(name, T.TimestampType(), True) for name in (EVENT_TIMESTAMP, CREATED_TIMESTAMP, PUBLISHED_AT)
    ]
    return T.StructType(fields)


def table_version(spark: SparkSession, path: Path | str) -> int | None:
    """The current version of the Delta table at ``path``; None when there is no table yet."""

    if not DeltaTable.isDeltaTable(spark, str(path)):
        return None
    row = DeltaTable.forPath(spark, str(path)).history(1).select("version").first()
    return None if row is None else int(row["version"])


def read_table(spark: SparkSession, path: Path | str, version: int | None = None) -> DataFrame:
    """The table's rows, pinned at ``version`` (time travel) when given."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(str(path))


@dataclass(frozen=True, slots=True)
class PreparedRows:
    """Rows ready to write, and the observations that count them while they are written.

    Counting in the same pass as the write (Spark's ``observe``) saves reading the source twice: the counts are
    known only once an action on ``frame`` has run, through :meth:`counts`.
    """

    frame: DataFrame
    view: str
    read: Observation
    kept: Observation

    def counts(self) -> RowCounts:
        """The counts of the first action run on ``frame`` (call it after that action)."""
        read, kept = _observed(self.read), _observed(self.kept)
        total, ok, distinct = int(read.get("rows") or 0), int(read.get("valid") or 0), int(kept.get("rows") or 0)
        counts = RowCounts(total, total - ok, ok - distinct)
        counts.warn(self.view)
        return counts


def _observed(observation: Observation, timeout: float = 120.0) -> dict[str, Any]:
    """The metrics of an observation whose action has run. Spark posts them just after the action; waiting in
    a thread bounds the wait, so a plan that never reported them fails the run instead of hanging it."""
    box: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: box.update(metrics=observation.get), daemon=True)
    waiter.start()
    waiter.join(timeout)
    if "metrics" not in box:
        raise MaterializationError(f"Spark did not report the row counts within {timeout:.0f} s")
    metrics: dict[str, Any] = box["metrics"]
    return metrics


def prepare_rows(view: ViewPlan, computed: DataFrame) -> PreparedRows:
    """Drop rows without keys or event time, and keep one row per (keys, event, created) deterministically.

    ``computed`` has the join keys, the features, ``event_timestamp`` and ``created_timestamp``. Among rows
    sharing a key, the one whose feature values sort first is kept, so every run keeps the same row (the rule of
    :func:`offline.changes.deduplicate`, which a run that creates the table follows in its tasks). Nothing runs
    yet: the rows are counted (see :meth:`PreparedRows.counts`) by whichever action first reads ``frame``.
    """

    keys = [*view.key_names, EVENT_TIMESTAMP]
    valid = F.lit(True)
    for name in keys:
        valid = valid & F.col(quote_spark(name)).isNotNull()
    read, kept = Observation(), Observation()
    rows = computed.observe(
        read, F.count(F.lit(1)).alias("rows"), F.sum(F.when(valid, 1).otherwise(0)).alias("valid")
    ).where(valid)
    # Rows sorted per entity by (event time, created time, feature values): the rows sharing keys, event and
    # created time are neighbours, the one whose feature values sort first leading. A row is kept unless the row
    # before it has the same event and created time. Partitioned by the join keys alone, not by the whole
    # triple (the rows come out clustered by entity). Not ``row_number() == 1`` over the triple: for that Spark
    # sorts every partition before the shuffle too (a partial group limit), which pays off only when groups are
    # large; here nearly every group is one row.
    entity = Window.partitionBy(*(F.col(quote_spark(k)) for k in view.key_names)).orderBy(
        F.col(EVENT_TIMESTAMP).asc(),
        F.col(CREATED_TIMESTAMP).asc_nulls_first(),
        *(F.col(quote_spark(f)).asc_nulls_first() for f in view.feature_names),
    )
    event, created = F.col(EVENT_TIMESTAMP), F.col(CREATED_TIMESTAMP)
    duplicate = (
        F.lag(F.lit(True)).over(entity).isNotNull()
        & (F.lag(event).over(entity) == event)
        & F.lag(created).over(entity).eqNullSafe(created)
    )
    deduped = rows.withColumn("__duplicate", duplicate)
    deduped = deduped.where(~F.col("__duplicate")).drop("__duplicate")
    return PreparedRows(deduped.observe(kept, F.count(F.lit(1)).alias("rows")), view.name, read, kept)


@dataclass(frozen=True, slots=True)
class Written:
    """What a run's write did: the counts of the rows it read, how many it inserted or updated, and the table
    version it created when it created the table (0; None otherwise: ask :func:`table_version`)."""

    counts: RowCounts
    rows_written: int
    created_version: int | None = None
    stats: dict[str, FeatureStats] = field(default_factory=dict)  # of the rows written, per feature


def write_rows(
    spark: SparkSession,
    path: Path | str,
    view: ViewPlan,
    prepared: PreparedRows,
    published_at: datetime,
    before_commit: Callable[[RowCounts, dict[str, FeatureStats], RunRows], None] | None = None,
    *,
    metadata: str | None = None,
    start: datetime | None = None,
    source_rows: int | None = None,
    driver_max_bytes: int = 0,
) -> Written:
    """Write the prepared rows onto the view's existing table in one Delta commit (a run that creates the table
    writes it in :mod:`offline.spark.first_write`).

    The rows identical to a stored row are dropped with an anti-join and only the new or changed rows are MERGEd
    (see :func:`merge_rows`); when none are left there is no commit at all. The source is read once, and the
    statistics of the rows written (:mod:`offline.spark.stats`) come from the rows persisted for the write.
    ``before_commit`` gets the counts, those statistics and the persisted rows before anything is committed (the
    run's checks: it raises to stop the run). ``metadata`` goes into the commit's ``userMetadata``; ``start`` (every
    row's event time is at or after it) lets the anti-join and the MERGE skip the stored files of older rows.
    ``source_rows`` (how many source rows the prepared rows come from, when known before reading them) and
    ``driver_max_bytes``: onto a table of at most that many bytes, rows few enough (:func:`driver_snapshot`) are
    compared and committed from the driver instead (:func:`_write_from_driver`).
    """

    features = [(f.name, f.dtype) for f in view.features]
    version = delta_rs.latest_version(path)  # read from the log's listing: no Spark job
    if version is None:  # a run that creates the table writes it in offline.spark.first_write
        raise MaterializationError(f"view '{view.name}': no Delta table at {path} to write onto (deleted meanwhile?)")

    stored_snapshot = driver_snapshot(path, version, source_rows, len(prepared.frame.columns), driver_max_bytes)
    if stored_snapshot is not None:
        return _write_from_driver(
            view, Path(path), stored_snapshot, prepared, published_at, before_commit, metadata, start
        )

    # Only what differs from the stored rows goes into the MERGE: a rerun of an unchanged window matches every
    # row here and commits nothing, instead of MERGE-joining and rewriting the whole table.
    stored = read_table(spark, path)
    if start is not None:
        stored = stored.where(F.col(EVENT_TIMESTAMP) >= F.lit(start).cast("timestamp"))
    frame = prepared.frame
    # Each row against the stored row with the same keys, event and created time (the table holds at most one):
    # a row is left out when that row holds the same values, and counted as an update when it holds others. A
    # run without updates (new rows only: the usual incremental run) then MERGEs with inserts only, which Delta
    # runs without first finding the files that hold matched rows.
    stored = stored.withColumn("__stored", F.lit(True))
    triple = [*view.key_names, EVENT_TIMESTAMP, CREATED_TIMESTAMP]
    on = [frame[quote_spark(c)].eqNullSafe(stored[quote_spark(c)]) for c in triple]
    same = [frame[quote_spark(f)].eqNullSafe(stored[quote_spark(f)]) for f in view.feature_names]
    matched = F.coalesce(stored["__stored"], F.lit(False))
    updated = Observation()
    changed = (
        frame.join(stored, on=functools.reduce(operator.and_, on), how="left")
        .where(~functools.reduce(operator.and_, same, matched))
        .observe(updated, F.sum(F.when(matched, 1).otherwise(0)).alias("rows"))
        .select(*(frame[quote_spark(c)] for c in frame.columns))
        .persist()
    )
    try:
        # The one pass over the source. A count first, not the statistics' aggregation (which counts too, see
        # counted_stats): a rerun with nothing new stops at this cheap job, without planning that aggregation.
        count = changed.count()
        counts = prepared.counts()
        stats = spark_stats(changed, features, count)
        if before_commit is not None:
            before_commit(counts, stats, SparkRows(changed, view.key_names))
        inserts_only = not int(_observed(updated).get("rows") or 0)
        written = (
            merge_rows(
                spark, path, view, changed, published_at, metadata=metadata, start=start, inserts_only=inserts_only
            )
            if count
            else 0
        )
    finally:
        changed.unpersist()
    return Written(counts, written, stats=stats)


def _write_from_driver(
    view: ViewPlan,
    path: Path,
    stored: delta_rs.Snapshot,
    prepared: PreparedRows,
    published_at: datetime,
    before_commit: Callable[[RowCounts, dict[str, FeatureStats], RunRows], None] | None,
    metadata: str | None,
    start: datetime | None,
) -> Written:
    """Collect the prepared rows (few: see :func:`driver_snapshot`) and write them onto ``stored`` from the driver, as
    the Arrow engine writes its rows: compared with the stored rows of their entities (read through delta-rs),
    new rows appended, restated ones MERGEd, in one commit right after ``stored`` (a commit of another writer in
    between fails it whole), nothing committed when nothing changed. Their statistics and checks are computed
    here, exactly. Spark computed the rows; what it no longer does is open the Delta table, compare and MERGE:
    jobs and Delta's driver work that cost seconds at any size."""
    collected = prepared.frame.toArrow()  # the one Spark job: read, compute, deduplicate
    counts = prepared.counts()
    rows = stored_types(view, collected)
    change = changes.compare(view, rows, changes.stored_rows_of(view, stored, rows, start))
    written = pa.concat_tables([change.updates, change.inserts])
    stats = arrow_stats(written, [(f.name, f.dtype) for f in view.features])
    if before_commit is not None:
        before_commit(counts, stats, ArrowRows(written, view.key_names, EVENT_TIMESTAMP))
    committed = changes.write_change(view, path, stored, change, published_at, metadata)
    log.info(
        "view '%s': a small change, finished on the driver: %d row(s) compared with the table, %d written (%s)",
        view.name,
        rows.num_rows,
        written.num_rows,
        "nothing to commit" if committed is None else f"version {committed}, through delta-rs",
    )
    return Written(counts, written.num_rows, stats=stats)


def _with_published_at(view: ViewPlan, rows: DataFrame, published_at: datetime) -> DataFrame:
    """``rows`` in the table's column order and types, with ``published_at``."""

    schema = table_schema(view)
    return rows.select(
        *(F.col(quote_spark(f.name)).cast(f.dataType) for f in schema.fields if f.name != PUBLISHED_AT),
        F.lit(published_at).cast("timestamp").alias(PUBLISHED_AT),
    ).to(schema)


def merge_rows(
    spark: SparkSession,
    path: Path | str,
    view: ViewPlan,
    rows: DataFrame,
    published_at: datetime,
    *,
    metadata: str | None = None,
    start: datetime | None = None,
    inserts_only: bool = False,
) -> int:
    """MERGE ``rows`` into the view's table in one Delta commit; returns rows inserted or updated.

    Matched on (join keys, event_timestamp, created_timestamp null-safe). A matched row is updated only when a
    feature value differs (null-safe), so re-running a window commits nothing. ``metadata`` goes into the
    commit's ``userMetadata``; with ``start`` (no row of ``rows`` is older) the stored rows before it are not
    matched, so their files are not read. ``inserts_only``: no row of ``rows`` matches a stored one (the MERGE
    only inserts, which Delta does in one pass, still as a MERGE: it fails on a concurrent commit of those rows).
    """

    source = _with_published_at(view, rows, published_at)

    def col(side: str, name: str) -> str:
        return f"{side}.{quote_spark(name)}"

    on = " AND ".join(
        [
            *(f"{col('t', k)} <=> {col('s', k)}" for k in view.key_names),
            f"{col('t', EVENT_TIMESTAMP)} = {col('s', EVENT_TIMESTAMP)}",
            f"{col('t', CREATED_TIMESTAMP)} <=> {col('s', CREATED_TIMESTAMP)}",
            *([] if start is None else [f"{col('t', EVENT_TIMESTAMP)} >= timestamp'{_utc_text(start)}'"]),
        ]
    )
    changed = " OR ".join(f"NOT ({col('t', f)} <=> {col('s', f)})" for f in view.feature_names) or "false"
    updates: dict[str, str | Column] = {quote_spark(f): col("s", f) for f in (*view.feature_names, PUBLISHED_AT)}
    merge = DeltaTable.forPath(_committing_session(spark, metadata), str(path)).alias("t").merge(source.alias("s"), on)
    if not inserts_only:
        merge = merge.whenMatchedUpdate(condition=changed, set=updates)
    metrics = merge.whenNotMatchedInsertAll().execute().first()
    if metrics is None:
        return 0
    return int(metrics["num_inserted_rows"]) + int(metrics["num_updated_rows"])


def _committing_session(spark: SparkSession, metadata: str | None) -> SparkSession:
    """The session whose commits carry ``metadata`` as their ``userMetadata``. Delta takes it from a session
    setting, and views run concurrently in one session: a session of its own (same context, own settings)
    keeps one view's metadata out of another's commit."""
    if metadata is None:
        return spark
    session = spark.newSession()
    session.conf.set("spark.databricks.delta.commitInfo.userMetadata", metadata)
    return session


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
