"""Materialization: source rows → features → Delta MERGE → the latest row per entity to the online store.

The order makes a crash harmless. The schema check comes before any write; the Delta commit is atomic; the
online publication stays invisible until ``commit()``, and it always publishes the latest row per entity of
the whole table at the version just written, so a rerun after any failure completes the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from features.checks import Baseline, CheckReport, RunRows, gate
from features.config import RepoConfig
from features.dtypes import DType
from features.errors import ChecksFailedError, SkewlessError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, Plan, ViewPlan
from features.protocols import MaterializationResult, OnlineStore, Progress, Publication, iter_batches
from features.run_stats import FeatureStats, arrow_stats
from offline import changes, delta_rs, incremental
from offline.errors import error_summary, is_commit_conflict, run_failure
from offline.publication import Published, RunProgress, phase, publish_unless_live, write_from_here
from offline.spark import windows
from offline.spark.checks import SparkRows
from offline.spark.first_write import Created, SourceSlices, create_table, source_slices
from offline.spark.jdbc import quote_spark, read_source, read_window, spark_type
from offline.spark.stats import spark_run_stats, spark_stats
from offline.spark.tables import (
    Written,
    driver_snapshot,
    prepare_rows,
    read_table,
    table_schema,
    write_rows,
)
from offline.spark.translate import SparkTranslator
from offline.tables import RowCounts, read_through, remove_abandoned_staging, row_columns, table_path

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def compute_features(view: ViewPlan, source: DataFrame) -> DataFrame:
    """Join keys, features (plan order and types), event_timestamp and created_timestamp of each source row."""

    translator = SparkTranslator()
    src = view.source
    created = (F.col(quote_spark(src.created_column)) if src.created_column else F.lit(None)).cast("timestamp")
    return source.select(
        *(F.col(quote_spark(k)).alias(k) for k in view.key_names),
        *(translator.translate(f.expression).cast(spark_type(f.dtype)).alias(f.name) for f in view.features),
        F.col(quote_spark(src.timestamp_column)).cast("timestamp").alias(EVENT_TIMESTAMP),
        created.alias(CREATED_TIMESTAMP),
    )


def _published_columns(view: ViewPlan) -> list[Column]:
    """The columns a :class:`~features.protocols.Publication` expects, in its order."""
    return [F.col(quote_spark(c)) for c in (*view.key_names, *view.feature_names, EVENT_TIMESTAMP, CREATED_TIMESTAMP)]


def latest_rows(view: ViewPlan, table: DataFrame) -> DataFrame:
    """One row per entity: the latest by event_timestamp, then created_timestamp (null created sorts first).

    The columns are exactly what a :class:`~features.protocols.Publication` expects.
    """

    order = Window.partitionBy(*(F.col(quote_spark(k)) for k in view.key_names)).orderBy(
        F.col(EVENT_TIMESTAMP).desc(), F.col(CREATED_TIMESTAMP).desc_nulls_last()
    )
    return (
        table.withColumn("__rank", F.row_number().over(order))
        .where(F.col("__rank") == 1)
        .select(*_published_columns(view))
    )


def publish(latest: DataFrame, publication: Publication) -> int:
    """Write ``latest`` through ``publication`` from the executors; returns the number of rows written.

    Only one count per partition comes back to the driver, never the rows.
    """
    import pyarrow as pa

    def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        written = publication.write(iter_batches(batches))
        yield pa.RecordBatch.from_pydict({"written": pa.array([written], pa.int64())})

    row = latest.mapInArrow(write, "written long").agg(F.sum("written").alias("n")).first()
    return int(row["n"] or 0) if row is not None else 0


#: Rows per batch handed to a publication from a staged file (Spark's ``arrow.maxRecordsPerBatch`` default).
PUBLISH_BATCH_ROWS = 10_000


def _publish_files(spark: SparkSession, files: list[str], publication: Publication) -> int:
    """Write the rows of Parquet ``files`` (a first run's staged latest rows, typed as published) through
    ``publication`` from the executors, one task per file reading it with pyarrow: no Spark scan, and no
    conversion of the rows through the JVM. Returns the number of rows written."""
    if not files:
        return 0

    def write(paths: Iterable[str]) -> Iterator[int]:
        import pyarrow.parquet as pq

        for path in paths:
            # In batches of Spark's Arrow size: a publication pipelines each batch to the store as it comes.
            yield publication.write(iter_batches(pq.read_table(path).to_batches(max_chunksize=PUBLISH_BATCH_ROWS)))

    return int(sum(spark.sparkContext.parallelize(files, len(files)).mapPartitions(write).collect()))


def materialize(
    spark: SparkSession,
    config: RepoConfig,
    plan: Plan,
    view: ViewPlan,
    *,
    start: datetime | None,
    end: datetime | None,
    online: OnlineStore | None,
    progress: Progress | None = None,
    republish: bool = False,
    baseline: Baseline | None = None,
) -> MaterializationResult:
    """Compute ``view`` for source rows with ``start <= event time < end`` and publish it, once its checks
    (against ``baseline``: :func:`features.checks.gate`) pass.

    A run that commits nothing to Delta publishes nothing either when the online store already serves the
    table's current version (see :func:`already_live`); ``republish`` publishes it again anyway (a store that
    lost keys).

    Raises :class:`~features.errors.SchemaMismatchError` (before anything is written) when the source changed,
    and :class:`~features.errors.MaterializationError` when a later step failed; either way the offline table
    and the online store hold what they held before, or the complete result of this run.
    """
    if view.is_windowed:
        return materialize_windowed(
            spark,
            config,
            view,
            start=start,
            end=end,
            online=online,
            progress=progress,
            baseline=baseline,
            republish=republish,
        )
    began = time.monotonic()
    run = RunProgress(progress, view)
    run.reading()
    url = config.connection_url(view.source.connection)
    path = table_path(config, view)
    window = incremental.plan_read(view, path, start, end)
    creating = delta_rs.latest_version(path) is None
    if not creating:
        remove_abandoned_staging(view.name, path)
    # A run that creates the table reads the source in its tasks when it can (first_write.source_slices);
    # otherwise, and in later runs, Spark's JDBC read reads it.
    slices = source_slices(spark, url, view, window.start, window.end, window.since) if creating else None
    rows: DataFrame | SourceSlices
    if isinstance(slices, SourceSlices):
        log.info("view '%s': %d task(s) read the source with ADBC, a slice of entities each", view.name, slices.count)
        rows, latest_known, source_count = slices, None, None
    else:
        if slices is not None:
            log.info("view '%s': Spark's JDBC read reads the source: %s", view.name, slices)
        with phase(view, "checking the source schema"):
            # the schema check happens here
            read = read_window(
                spark,
                view.source,
                url,
                window.start,
                window.end,
                since=window.since,
                latest_of=view.source.cursor_column,
                # Whether the driver may finish the change depends on its size (see write_rows); a run that creates
                # the table never does, so it does not make the database count its rows.
                count=not creating and _driver_max_bytes(config) > 0,
            )
        rows, latest_known, source_count = compute_features(view, read.rows), read.latest, read.count

    def metadata(latest_read: datetime | None = None) -> str | None:
        """The commit's record of the cursor: the latest value read (told by the tasks, or asked of the database)."""
        return incremental.cursor_metadata(incremental.next_cursor(window, latest_read or latest_known))

    reports: list[CheckReport] = []

    def checked(counts: RowCounts, stats: dict[str, FeatureStats], rows: RunRows) -> None:
        reports.append(gate(view, counts.read, stats, rows, baseline))

    created: Created | None = None
    try:
        # One pass over the source: read, compute, drop invalid and duplicate rows, count, write.
        with phase(view, "reading the source and writing the offline table"):
            if creating:  # each task prepares and writes its entities' rows; one commit creates the table
                created = create_table(
                    spark, path, view, rows, datetime.now(UTC), before_commit=checked, metadata=metadata
                )
                outcome = Written(created.counts, created.counts.kept, created_version=0, stats=created.stats)
            else:
                assert isinstance(rows, DataFrame)  # tasks read the source only for a run that creates the table
                outcome = write_rows(
                    spark,
                    path,
                    view,
                    prepare_rows(view, rows),
                    datetime.now(UTC),
                    before_commit=checked,
                    metadata=metadata(),
                    start=window.start,
                    source_rows=source_count,
                    driver_max_bytes=_driver_max_bytes(config),
                )
            # Known without asking when this run created the table; else read from the log's listing (Spark's
            # ``history()`` is a job, ~0.25 s).
            version = outcome.created_version if outcome.created_version is not None else delta_rs.latest_version(path)
    except Exception as exc:  # Spark/JDBC/Delta errors, translated at the boundary
        # A refused commit (the table is as the other run left it) says "run again"; any other error of skewless's
        # own already says what went wrong (failed checks, a changed source).
        if isinstance(exc, SkewlessError) and not is_commit_conflict(exc):
            raise
        raise run_failure(
            view.name,
            exc,
            f"view '{view.name}': computing or writing the offline table {path} failed (the table is unchanged "
            f"unless its commit completed): {error_summary(exc)}",
        ) from exc
    rows_read, written = outcome.counts.read, outcome.rows_written
    log.info("view '%s': read %d source row(s) from '%s' (%s)", view.name, rows_read, view.source.name, window.reason)
    run.read(rows_read)
    log.info("view '%s': %d row(s) inserted or updated in %s (version %s)", view.name, written, path, version)

    publication = Published()
    latest_stats: dict[str, FeatureStats] = {}
    try:
        if view.online and online is not None and version is not None:
            publication = publish_unless_live(
                view,
                path,
                version,
                online,
                run.counted(_write_from_executors(spark, view, path, version, latest_stats, created=created)),
                created=outcome.created_version is not None,
                republish=republish,
                write_changed=lambda publication, files: _write_changed(
                    spark, config, view, path, version, latest_stats, files, run
                )(publication),
            )
    finally:
        if created is not None:
            created.discard()
    run.finish()
    return MaterializationResult(
        view=view.name,
        rows_read=rows_read,
        rows_written_offline=written,
        offline_version=version,
        rows_published=publication.rows,
        online_committed=publication.committed,
        seconds=time.monotonic() - began,
        online_current=publication.current,
        stats=spark_run_stats(outcome.stats, latest_stats or None),
        checks=reports[0] if reports else None,
        read_reason=window.reason,
        published_changed_only=publication.changed_only,
    )


def materialize_windowed(
    spark: SparkSession,
    config: RepoConfig,
    view: ViewPlan,
    *,
    start: datetime | None,
    end: datetime | None,
    online: OnlineStore | None,
    progress: Progress | None = None,
    baseline: Baseline | None = None,
    republish: bool = False,
) -> MaterializationResult:
    """Compute every tick of a windowed view in range (see :mod:`offline.spark.windows`) and publish the latest.
    Its checks read the values of the new ticks, before they are committed (the tiles, committed before, are
    replaced by the next run's, computed from the source as it is then, as after a failed commit).

    Reads the source rows of the new ticks only; the windows reach back through the stored tiles. A run without
    a new tick publishes nothing when the online store already serves the table's version (``republish``
    publishes it anyway); a new tick publishes the entities whose value changed at it, and records the tick in
    the snapshot (readers serve it as the event time of the values unchanged since).
    """
    began = time.monotonic()
    run = RunProgress(progress, view)
    run.reading()
    path = table_path(config, view)
    tiles_at = windows.tiles_path(path)
    ticks = windows.plan_ticks(view, read_through(path), start, end, datetime.now(UTC))
    rows_read = written = 0
    written_stats = spark_stats(spark.range(0), _features(view), 0)  # no tick to compute: no row written
    report: CheckReport | None = None
    if not ticks.empty:
        lower, upper = windows.source_bounds(ticks)
        url = config.connection_url(view.source.connection)
        source = read_source(spark, view.source, url, lower, upper)  # the schema check happens here
        span = f"({'the first row' if ticks.start is None else ticks.start.isoformat()}, {ticks.end.isoformat()}]"
        try:
            cached = source.persist()
            rows_read = cached.count()
            log.info("view '%s': read %d source row(s) for the ticks in %s", view.name, rows_read, span)
            run.read(rows_read)
            windows.write_tiles(spark, tiles_at, windows.build_tiles(view, cached), ticks, view)
            cached.unpersist()
            values = windows.values_at_ticks(spark, view, read_table(spark, tiles_at), ticks).persist()
            written = values.count()
            written_stats = spark_stats(values, _features(view), written)
            try:
                report = gate(view, rows_read, written_stats, SparkRows(values, view.key_names), baseline)
            except ChecksFailedError:
                values.unpersist()
                raise
            windows.write_values(spark, path, view, values, ticks, datetime.now(UTC))
            values.unpersist()
        except SkewlessError:
            raise
        except Exception as exc:  # on a refused commit, tiles already committed are recomputed the same by the rerun
            raise run_failure(
                view.name,
                exc,
                f"view '{view.name}': computing the windows for the ticks in {span} failed (tables unchanged "
                f"unless their commits completed; a rerun recomputes the range): {error_summary(exc)}",
            ) from exc
        log.info("view '%s': %d value row(s) written for the ticks in %s", view.name, written, span)
    version = delta_rs.latest_version(path)
    through = read_through(path)
    publication = Published()
    latest_stats: dict[str, FeatureStats] = {}
    if view.online and online is not None and version is not None and through is not None:
        # Each row keeps the tick its value last changed at; the snapshot records the last tick computed, which
        # readers serve as the event time of every older row (TTLs count from it). So a new tick publishes only
        # the entities with a row at it (their value changed, or their window emptied), into the live snapshot;
        # a recomputed range (--start) replaces rows of ticks already published: a whole snapshot then.
        publication = publish_unless_live(
            view,
            path,
            version,
            online,
            run.counted(_write_from_executors(spark, view, path, version, latest_stats)),
            created=False,
            republish=republish,
            write_changed=None
            if start is not None
            else lambda publication, files: _write_changed(
                spark, config, view, path, version, latest_stats, files, run
            )(publication),
            confirmed_at=through,
        )
    run.finish()
    return MaterializationResult(
        view=view.name,
        rows_read=rows_read,
        rows_written_offline=written,
        offline_version=version,
        rows_published=publication.rows,
        online_committed=publication.committed,
        seconds=time.monotonic() - began,
        ticks_through=through,
        online_current=publication.current,
        stats=spark_run_stats(written_stats, latest_stats or None),
        checks=report,
        published_changed_only=publication.changed_only,
    )


def _write_from_executors(
    spark: SparkSession,
    view: ViewPlan,
    path: Path,
    version: int,
    stats: dict[str, FeatureStats],
    files: list[str] | None = None,
    created: Created | None = None,
) -> Callable[[Publication], int]:
    """A ``write`` for :func:`offline.publication.published` that stages the latest row per entity at ``version``
    from Spark's executors, and puts the statistics of those rows in ``stats``. With ``files`` (data files of the
    table), only the entities that have a row in them. ``created``: this run created the table, and its tasks
    staged each entity's latest row and described them (not read back from Delta)."""

    def write(publication: Publication) -> int:
        if created is not None:
            stats.update(created.latest_stats)
            return _publish_files(spark, list(created.latest_files), publication)
        else:
            table = read_table(spark, str(path), version)
            if files is not None:
                if not files:
                    return 0
                table = _rows_of_entities_in(spark, view, path, table, files)
            latest = latest_rows(view, table)
        latest = latest.persist()  # published, then described, from one computation
        try:
            written = publish(latest, publication)
            stats.update(spark_stats(latest, _features(view), written))
        finally:
            latest.unpersist()
        return written

    return write


def _write_changed(
    spark: SparkSession,
    config: RepoConfig,
    view: ViewPlan,
    path: Path,
    version: int,
    stats: dict[str, FeatureStats],
    files: list[str],
    run: RunProgress,
) -> Callable[[Publication], int]:
    """A ``write`` that stages the latest row at ``version`` of each entity with a row in ``files``, and puts
    their statistics in ``stats``. When those files hold few rows (:func:`~offline.spark.tables.driver_snapshot`, so
    at most as many entities) of a table within :func:`_driver_max_bytes`, from the driver, as the Arrow engine
    publishes them (read through delta-rs: no Delta snapshot, no job, no Python worker in the executors). From
    the executors otherwise."""
    rows = delta_rs.rows_in_files(path, version, files) if files else None
    if driver_snapshot(path, version, rows, len(row_columns(view)), _driver_max_bytes(config)) is None:
        return run.counted(_write_from_executors(spark, view, path, version, stats, files=files))

    def latest() -> pa.Table:
        collected = changes.latest_of_files(view, path, version, files)
        stats.update(arrow_stats(collected, _features(view)))
        return collected

    return write_from_here(latest, run)


def _driver_max_bytes(config: RepoConfig) -> int:
    """The largest table whose rows the driver reads to finish a small change (compare, commit, publish it):
    ``offline.arrow_join_max_mb``, the bound on what this process reads of a table (0: none, every step stays
    in Spark)."""
    return config.arrow_join_max_mb * 2**20


def _rows_of_entities_in(
    spark: SparkSession, view: ViewPlan, path: Path, table: DataFrame, files: list[str]
) -> DataFrame:
    """The rows of ``table`` of the entities that have a row in ``files`` (data files of the table). An entity's
    latest row is at or after its earliest row in those files: older stored rows are skipped by their files'
    statistics."""
    keys = [quote_spark(k) for k in view.key_names]
    # The schema given, not inferred from the files' footers (a Spark job of its own).
    wanted = T.StructType([f for f in table_schema(view).fields if f.name in (*view.key_names, EVENT_TIMESTAMP)])
    added = spark.read.schema(wanted).parquet(*(str(path / f) for f in files)).select(*keys, EVENT_TIMESTAMP)
    row = added.agg(F.min(EVENT_TIMESTAMP).alias("earliest")).first()
    earliest = None if row is None else row["earliest"]
    if earliest is not None:
        table = table.where(F.col(EVENT_TIMESTAMP) >= F.lit(earliest))
    return table.join(added.select(*keys).distinct(), on=list(view.key_names), how="left_semi")


def _features(view: ViewPlan) -> list[tuple[str, DType]]:
    return [(f.name, f.dtype) for f in view.features]
