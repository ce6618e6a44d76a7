"""The Spark engine: offline jobs on a Spark session in this process (local mode by default, any cluster by
``spark.master``), with Delta Lake. It takes every job: it is the engine of any size, and the only one that
computes aggregations (contract 3).

This module imports no pyspark itself; the session starts on a job's first use of :attr:`SparkEngine.spark`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from features.checks import Baseline
from features.config import RepoConfig
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from offline.datasets import add_on_demand_columns, attach, function_loader, is_spark, view_table
from offline.jobs import Job, JoinedSet, Materialization, TrainingSet
from offline.manifest import DatasetError, Manifest

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from features.protocols import MaterializationResult, OnlineStore, Progress


class SparkEngine:
    """:class:`offline.jobs.Engine` on the process's Spark session (``offline.spark`` settings of
    ``skewless.yaml`` apply; one session per process, shared by every engine and by the user's own code).

    >>> engine = SparkEngine(RepoConfig.load("."))                          # doctest: +SKIP
    >>> engine.materialize(Materialization(plan, plan.view("card_txn"), None, None), online, None)  # doctest: +SKIP
    """

    name = "spark"
    remote = False

    def __init__(self, config: RepoConfig) -> None:
        self.config = config

    @property
    def spark(self) -> SparkSession:
        from offline.spark.session import get_spark

        return get_spark(self.config)

    def refusal(self, job: Job) -> str | None:
        return None

    def materialize(
        self, job: Materialization, online: OnlineStore | None, progress: Progress | None
    ) -> MaterializationResult:
        from offline.spark.materialize import materialize
        from offline.spark.session import get_spark

        return materialize(
            get_spark(self.config, large_run=expects_large_run(job.baseline)),
            self.config,
            job.plan,
            job.view,
            start=job.start,
            end=job.end,
            online=online,
            progress=progress,
            republish=job.republish,
            baseline=job.baseline,
        )

    def training_set(self, job: TrainingSet) -> JoinedSet:
        """The set joined in Spark: collected to Arrow when the entity rows came as Arrow (so it keeps their row
        order and their other columns exactly), kept in Spark when they came as a Spark DataFrame."""
        from offline.spark.point_in_time import ROW_ID

        manifest, entities = job.manifest, job.entities
        joined = _join(self.spark, manifest, entities)
        if is_spark(entities):
            frame = joined.orderBy(ROW_ID).drop(ROW_ID)  # the entity rows' order, as with the other inputs
            if manifest.on_demand is not None:
                from offline.on_demand import load_functions
                from offline.spark.on_demand import add_on_demand_spark

                functions = load_functions(manifest.on_demand, function_loader(self.config))
                frame = add_on_demand_spark(frame, manifest.on_demand, functions)
            return JoinedSet(self.name, None, frame)
        table = attach(entities, _collect(joined, manifest, entities.num_rows))
        table = add_on_demand_columns(self.config, manifest, table)
        as_spark = self.spark.createDataFrame(table) if manifest.output_format == "spark" else None
        return JoinedSet(self.name, table, as_spark)

    def stop(self) -> None:
        """Stop the process's Spark session."""
        from offline.spark.session import stop_spark

        stop_spark()


def expects_large_run(baseline: Baseline) -> bool:
    """Whether a materialization with ``baseline`` is expected to read at least
    :data:`~offline.spark.session.LARGE_RUN_ROWS` source rows: the view's last run that read the same kind of
    window did. With no such run, a run after the cursor is expected small, any other large: a first run or a
    ``--start`` range reads the whole source or a backfill's worth of it (a cold first run of 2M rows took the
    same CPU with either JIT)."""
    from offline.spark.session import LARGE_RUN_ROWS

    if baseline.previous_rows_read is not None:
        return baseline.previous_rows_read >= LARGE_RUN_ROWS
    return baseline.read_kind != "since"


def _join(spark: SparkSession, manifest: Manifest, entities: Any) -> DataFrame:
    """The Spark point-in-time join of ``entities`` (Arrow with row order, or Spark) per the manifest.

    Arrow entity rows go to Spark with only the columns the join needs (keys, time, a row id); their other
    columns (labels, ...) are attached again on the driver by :func:`offline.datasets.attach`.
    """
    import pyarrow as pa

    from offline.spark.point_in_time import ROW_ID, point_in_time_join, with_row_id
    from offline.spark.tables import read_table

    timestamp_column = manifest.timestamp_column
    needed: dict[str, None] = {}
    for view in manifest.views:
        needed.update(dict.fromkeys([*view.key_names, timestamp_column]))
    if isinstance(entities, pa.Table):
        # Row ids from the Arrow row order, so the result aligns with the input without relying on Spark.
        narrow = entities.select(list(needed))
        frame = spark.createDataFrame(narrow.append_column(ROW_ID, pa.array(range(narrow.num_rows), pa.int64())))
    else:
        frame = with_row_id(entities)
    inputs = []
    for view in manifest.views:
        try:
            table = read_table(spark, view.path, view.version)
            table = table.select(*view.key_names, *view.features, EVENT_TIMESTAMP, CREATED_TIMESTAMP)
        except Exception as exc:
            raise DatasetError(
                f"cannot read view '{view.name}' at version {view.version} from {view.path}: {exc}"
            ) from exc
        inputs.append(view_table(view, table))
    return point_in_time_join(frame, timestamp_column, inputs)


def _collect(joined: DataFrame, manifest: Manifest, rows: int) -> pa.Table:
    """The feature columns of the Spark join, in the entity rows' order."""
    from offline.spark.point_in_time import ROW_ID

    columns = manifest.feature_columns()
    features = joined.select(ROW_ID, *(f"`{c}`" for c in columns)).toArrow().sort_by(ROW_ID)
    if features.num_rows != rows:
        raise DatasetError(f"internal error: {features.num_rows} result rows for {rows} entity rows")
    return features.drop_columns([ROW_ID])
