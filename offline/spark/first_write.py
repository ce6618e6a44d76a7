"""A Spark run that creates a view's table: each task gets the rows of a slice of the entities, and prepares,
describes and writes them in Arrow; the driver commits every task's file in one Delta commit.

How a task gets its rows: over a PostgreSQL source (:func:`source_slices` says when), it reads its slice itself
with ADBC (:func:`offline.adbc_source.entity_slice`) and computes the features with the shared evaluator
(:func:`features.rows.compute_features`): no row passes through the JVM, whose JDBC read and conversion to Arrow
cost ~4 µs of CPU per row. Otherwise Spark reads the source through JDBC and computes the features (its
translation), and shuffles the rows by entity to the tasks.

Why not Spark's own window, cache and Parquet writer: a first run was ~11.6 s of CPU per million rows in a warm
JVM that way (sorted window, cache build, three statistics passes, the Delta write, the publication's scan), and
the same work in a Python task per partition ~2 s (bench/results/2026-12-07-first-write.md). The task runs the
code the Arrow engine runs (:func:`offline.changes.deduplicate`, :func:`offline.tables.table_rows`,
:func:`offline.changes.latest_rows`), so both engines keep the same row by construction.

Each task, for the rows of its entities (``spark.sql.shuffle.partitions`` tasks, or more when the source
table's estimated rows call for it: :func:`slice_count`; a task holds its slice in a Python worker's memory):

1. drops rows without keys or event time and keeps one row per (keys, event, created) by the shared rule;
2. writes them as one Parquet file into the table's directory, with the per-file statistics Delta keeps of the
   keys and times (:func:`offline.delta_rs.write_file`): not yet part of the table;
3. describes them and their entities' latest rows in parts that merge (:mod:`features.partial_stats`);
4. stages each entity's latest row under the table's directory, in ``_skewless_latest_<run>`` (Delta ignores
   names starting with ``_``), for the publication (a process killed before it ends leaves them: a later run
   removes them, :func:`offline.tables.remove_abandoned_staging`).

The driver merges the counts and statistics, runs the checks (a failing row-level check reads the written
files), then creates the table from every file in one commit (:func:`offline.delta_rs.create_from_files`): the
table appears whole or not at all. A concurrent creator makes one of the two fail. Whatever fails, the files
this run wrote are removed (a retried task's earlier file is never committed, only left to a vacuum). The caller
publishes the staged rows after the commit and then removes them (:meth:`Created.discard`).
"""

from __future__ import annotations

import logging
import math
import pickle
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features import partial_stats
from features.checks import RunRows
from features.dtypes import DType
from features.plan import ViewPlan
from features.rows import refusal as rows_refusal
from features.run_stats import FeatureStats
from offline import adbc_source, changes, delta_rs, incremental
from offline.spark.checks import SparkRows
from offline.spark.jdbc import quote_spark
from offline.spark.stats import spark_stats
from offline.spark.tables import table_schema
from offline.tables import (
    LATEST_DIR_PREFIX,
    STATS_PROPERTY,
    RowCounts,
    stats_column_names,
    stats_columns,
    table_arrow_schema,
    table_rows,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What one task did with its entities' rows (pickled back to the driver)."""

    counts: RowCounts
    file: delta_rs.DataFile | None
    stats: dict[str, partial_stats.StatsPart]
    latest_stats: dict[str, partial_stats.StatsPart]
    latest_file: str | None  # in the staging directory
    latest_read: datetime | None = None  # the latest value of the source's cursor column the task read


@dataclass(frozen=True, slots=True)
class SourceSlices:
    """A source window the tasks read themselves (PostgreSQL, through ADBC), each one of ``count`` slices of the
    entities (:func:`offline.adbc_source.entity_slice`)."""

    uri: str = field(repr=False)  # libpq's, with the password
    start: datetime | None
    end: datetime | None
    since: datetime | None
    count: int


def source_slices(
    spark: SparkSession,
    url: str,
    view: ViewPlan,
    start: datetime | None,
    end: datetime | None,
    since: datetime | None = None,
) -> SourceSlices | str:
    """How this run's tasks read the window of ``view``'s source at ``url`` themselves, or why Spark's JDBC read
    reads it instead: a source other than PostgreSQL, a column type or an expression only Spark reads or computes,
    a key that does not split the source in SQL. Asks the database the window's column types (no row is read)."""
    problem = adbc_source.refusal(url) or rows_refusal(view)
    first_key = view.join_keys[0]
    if problem is None and first_key.dtype not in adbc_source.SLICEABLE_KEYS:
        problem = f"its first key '{first_key.name}' is a {first_key.dtype.value}, which does not split a source"
    if problem is not None:
        return problem
    uri = adbc_source.libpq_uri(url)
    problem = adbc_source.window_refusal(view.source, uri, start, end, since=since, max_rows=None)
    if problem is not None:
        return problem
    return SourceSlices(
        uri, start, end, since, slice_count(view, _partitions(spark), adbc_source.estimated_rows(view.source, uri))
    )


#: Values (rows x columns) a first run's task may hold: ~200 MB as Arrow, a few times that while it
#: deduplicates and writes, in one Python worker.
SLICE_VALUES = 25_000_000


def slice_count(view: ViewPlan, partitions: int, estimated_rows: int | None) -> int:
    """How many slices a first run reads: ``spark.sql.shuffle.partitions``, or more when the source's estimated
    rows would put over :data:`SLICE_VALUES` values in one task (a large table on a machine configured for small
    runs; the whole table, as a first run usually reads it). 100M rows of 9 columns: 36 slices.
    """
    if estimated_rows is None:
        return partitions
    columns = len(view.key_names) + len(view.features) + 2  # and event and created time
    return max(partitions, math.ceil(estimated_rows * columns / SLICE_VALUES))


def _partitions(spark: SparkSession) -> int:
    return int(spark.conf.get("spark.sql.shuffle.partitions") or "4")


@dataclass(frozen=True, slots=True)
class Created:
    """The table a run created (version 0), and what its publication needs."""

    counts: RowCounts
    stats: dict[str, FeatureStats]  # of the rows written
    latest_stats: dict[str, FeatureStats]  # of each entity's latest row
    latest_dir: Path  # those rows, staged as Parquet files
    latest_files: tuple[str, ...]  # named one by one: Spark skips a directory named with a leading "_"

    def discard(self) -> None:
        """Remove the staged latest rows (after their publication, or when the view publishes nothing)."""
        shutil.rmtree(self.latest_dir, ignore_errors=True)


def create_table(
    spark: SparkSession,
    path: Path,
    view: ViewPlan,
    rows: DataFrame | SourceSlices,
    published_at: datetime,
    before_commit: Callable[[RowCounts, dict[str, FeatureStats], RunRows], None] | None = None,
    *,
    metadata: Callable[[datetime | None], str | None] | None = None,
) -> Created:
    """Create ``view``'s table at ``path`` in one commit from ``rows``: the computed rows (join keys, features,
    event and created time of each source row), or the slices of the source the tasks read and compute
    themselves. ``before_commit`` gets the counts, the statistics of the rows to write and those rows before
    anything is committed (the run's checks: it raises to stop the run); ``metadata`` gives the commit's
    ``userMetadata`` from the latest value of the source's cursor column the tasks read (None: not read by them).
    """
    run = uuid.uuid4().hex
    staging = path / f"{LATEST_DIR_PREFIX}{run}"
    staging.mkdir(parents=True, exist_ok=True)
    features = [(f.name, f.dtype) for f in view.features]
    try:
        if isinstance(rows, SourceSlices):
            task = _slice_task(view, rows, str(path), str(staging), published_at, run)
            results = spark.sparkContext.parallelize(range(rows.count), rows.count).map(task).collect()
        else:
            keys = [F.col(quote_spark(k)) for k in view.key_names]
            shuffled = _normalized_float_keys(view, rows).repartition(_partitions(spark), *keys)
            collected = shuffled.mapInArrow(_task(view, str(path), str(staging), published_at, run), "result binary")
            results = [pickle.loads(row["result"]) for row in collected.collect()]
        files = [r.file for r in results if r.file is not None]
        counts = RowCounts(
            sum(r.counts.read for r in results),
            sum(r.counts.null_keys_or_time for r in results),
            sum(r.counts.duplicates for r in results),
        )
        counts.warn(view.name)

        def written() -> DataFrame:
            return _read_files(spark, view, path, [f.path for f in files])

        def latest() -> DataFrame:
            return _read_files(spark, view, staging, [r.latest_file for r in results if r.latest_file])

        stats = _merged(features, [r.stats for r in results], written)
        latest_stats = _merged(features, [r.latest_stats for r in results], latest)
        if before_commit is not None:
            before_commit(counts, stats, SparkRows(written(), view.key_names))
        delta_rs.create_from_files(
            path,
            table_arrow_schema(view),
            files,
            configuration={STATS_PROPERTY: stats_columns(view)},
            user_metadata=None if metadata is None else metadata(_latest_read(results)),
        )
    except BaseException:
        # Every file of this run, by its name: a job that failed midway returned no result of the tasks that wrote.
        for written_file in path.glob(f"part-*-{run}-c000.snappy.parquet"):
            written_file.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "view '%s': created %s from %d file(s) its %d task(s) wrote, %d row(s)",
        view.name,
        path,
        len(files),
        len(results),
        counts.kept,
    )
    latest_files = tuple(str(staging / r.latest_file) for r in results if r.latest_file)
    return Created(counts, stats, latest_stats, staging, latest_files)


def _latest_read(results: list[TaskResult]) -> datetime | None:
    read = [r.latest_read for r in results if r.latest_read is not None]
    return max(read) if read else None


def _normalized_float_keys(view: ViewPlan, computed: DataFrame) -> DataFrame:
    """``computed`` with each float key as Spark's grouping compares it (``-0.0`` as ``0.0``, every NaN as one),
    so that the shuffle and the tasks' grouping by value see the entities Spark's would."""
    floats = {k.name for k in view.join_keys if k.dtype is DType.FLOAT64}
    if not floats:
        return computed
    columns = []
    for name in computed.columns:
        column = F.col(quote_spark(name))
        if name in floats:
            column = F.when(F.isnan(column), F.lit(float("nan"))).when(column == 0.0, F.lit(0.0)).otherwise(column)
        columns.append(column.alias(name))
    return computed.select(*columns)


def _task(
    view: ViewPlan, path: str, staging: str, published_at: datetime, run: str
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function each task runs on its entities' computed rows, shuffled to it by Spark (in a Python worker)."""

    def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        received = list(batches)
        computed = pa.Table.from_batches(received) if received else None
        result = _write_rows(view, computed, path, staging, published_at, run)
        yield pa.RecordBatch.from_pydict({"result": pa.array([pickle.dumps(result)], pa.binary())})

    return write


def _slice_task(
    view: ViewPlan, slices: SourceSlices, path: str, staging: str, published_at: datetime, run: str
) -> Callable[[int], TaskResult]:
    """The function each task runs on its slice of the source: it reads the slice's rows with ADBC and computes
    their features with the shared evaluator (in a Python worker; no row passes through the JVM)."""

    def write(index: int) -> TaskResult:
        from features.rows import compute_features

        key = view.join_keys[0]
        source = adbc_source.read_source(
            view.source,
            slices.uri,
            slices.start,
            slices.end,
            slices.since,
            where=adbc_source.entity_slice(key.name, key.dtype, index, slices.count),
        )
        result = _write_rows(view, compute_features(view, source), path, staging, published_at, run)
        return replace(result, latest_read=incremental.latest_time(source.column(view.source.cursor_column)))

    return write


def _write_rows(
    view: ViewPlan, computed: pa.Table | None, path: str, staging: str, published_at: datetime, run: str
) -> TaskResult:
    """Deduplicate, write, describe and stage the latest rows of a task's entities (``computed``: their join
    keys, features, event and created time, as :func:`features.rows.compute_features` gives them)."""
    import pyarrow.parquet as pq

    features = [(f.name, f.dtype) for f in view.features]
    if computed is None or computed.num_rows == 0:
        return TaskResult(RowCounts(0, 0, 0), None, {}, {}, None)
    kept, counts = changes.deduplicate(view, computed)
    rows = table_rows(view, kept, published_at)  # sorted by keys and times, as deduplicate left them
    latest = changes.latest_rows(view, rows, presorted=True)
    name = f"{uuid.uuid4().hex}"
    data = None
    latest_file = None
    if rows.num_rows:
        data = delta_rs.write_file(path, rows, f"part-{name}-{run}-c000.snappy.parquet", stats_column_names(view))
        latest_file = f"{name}.parquet"
        pq.write_table(latest, f"{staging}/{latest_file}")
    return TaskResult(
        counts,
        data,
        partial_stats.describe(rows, features),
        partial_stats.describe(latest, features),
        latest_file,
    )


def _merged(
    features: list[tuple[str, DType]],
    parts: list[dict[str, partial_stats.StatsPart]],
    rows: Callable[[], DataFrame],
) -> dict[str, FeatureStats]:
    """Each feature's statistics merged from the tasks' parts; a string or boolean feature with too many values
    to send (:data:`features.partial_stats.MAX_VALUE_COUNTS`) is described by Spark over ``rows()``."""
    parts = [p for p in parts if p]  # a task that had no row describes nothing
    if not parts:
        return spark_stats(rows(), features, 0)
    out: dict[str, FeatureStats] = {}
    uncounted: list[tuple[str, DType]] = []
    for name, dtype in features:
        merged = partial_stats.merge([p[name] for p in parts], dtype)
        if merged is None:
            uncounted.append((name, dtype))
        else:
            out[name] = merged
    if uncounted:
        out.update(spark_stats(rows(), uncounted))
    return {name: out[name] for name, _ in features}


def _read_files(spark: SparkSession, view: ViewPlan, directory: Path, files: list[str]) -> DataFrame:
    """The rows of Parquet ``files`` in ``directory``, as the table types them (no Spark job to infer a schema)."""
    schema = table_schema(view)
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*(str(directory / f) for f in files))
