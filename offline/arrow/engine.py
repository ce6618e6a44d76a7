"""The Arrow engine: offline jobs in this process with Arrow and NumPy, without a JVM, when they fit in memory.

It takes a materialization of a view without aggregations whose source is PostgreSQL and whose window fits
(:mod:`offline.arrow.materialize`), and a training set whose entity rows are pandas or Arrow with plain key and
time columns and whose tables fit (:mod:`offline.arrow.join`). Its values are Spark's: the same evaluator of
row expressions that the conformance suite holds to Spark's translation, the same point-in-time rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa

from features.config import RepoConfig
from features.dtypes import DType
from offline import delta_rs
from offline.arrow import join as arrow_join
from offline.arrow import materialize as arrow_materialize
from offline.datasets import add_on_demand_columns, attach, is_spark, table_columns_read, view_table
from offline.jobs import Job, JoinedSet, Materialization, TrainingSet
from offline.manifest import DatasetError, Manifest

if TYPE_CHECKING:
    from features.protocols import MaterializationResult, OnlineStore, Progress

# The entity column types the join takes as each key type: the ones that cast to it exactly. Spark's casts of
# anything else (a float column as an int64 key) define the values, so those sets are Spark's.
_KEY_COLUMN_TYPES: dict[DType, Callable[[pa.DataType], bool]] = {
    DType.INT64: lambda t: pa.types.is_integer(t) and t != pa.uint64(),
    DType.STRING: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    DType.BOOL: pa.types.is_boolean,
    DType.TIMESTAMP: pa.types.is_timestamp,
}


class ArrowEngine:
    """:class:`offline.jobs.Engine` in this process, without a JVM."""

    name = "arrow"
    remote = False

    def __init__(self, config: RepoConfig) -> None:
        self.config = config

    def refusal(self, job: Job) -> str | None:
        if isinstance(job, Materialization):
            return arrow_materialize.refusal(self.config, job.view, job.start, job.end)
        return self._join_refusal(job)

    def materialize(
        self, job: Materialization, online: OnlineStore | None, progress: Progress | None
    ) -> MaterializationResult:
        return arrow_materialize.materialize(
            self.config,
            job.view,
            start=job.start,
            end=job.end,
            online=online,
            progress=progress,
            republish=job.republish,
            baseline=job.baseline,
        )

    def training_set(self, job: TrainingSet) -> JoinedSet:
        manifest, entities = job.manifest, job.entities
        table = attach(entities, self._join(manifest, entities))
        return JoinedSet(self.name, add_on_demand_columns(self.config, manifest, table))

    def stop(self) -> None:
        """Nothing to release: the engine holds no session or connection."""

    def _join_refusal(self, job: TrainingSet) -> str | None:
        manifest, entities = job.manifest, job.entities
        if is_spark(entities):
            return "the entity rows are a Spark DataFrame"
        if manifest.output_format == "spark":
            return "the result is asked as a Spark DataFrame"
        if self.config.arrow_join_max_mb == 0:
            return "offline.arrow_join_max_mb is 0"
        schema = entities.schema
        time_type = schema.field(manifest.timestamp_column).type
        if not pa.types.is_timestamp(time_type):
            return f"the time column {manifest.timestamp_column!r} is {time_type}, not a timestamp"
        size = 0
        for view in manifest.views:
            for key, dtype in view.join_keys:
                column_type = schema.field(key).type
                if dtype not in _KEY_COLUMN_TYPES or not _KEY_COLUMN_TYPES[dtype](column_type):
                    return f"view '{view.name}' has a {dtype.value} key and the entity column {key!r} is {column_type}"
            try:
                snapshot = delta_rs.snapshot(view.path, view.version)
            except (delta_rs.UnsupportedTableError, OSError) as exc:  # tables the Python reader does not read
                return f"view '{view.name}': {exc}"
            size += snapshot.size
        if size > self.config.arrow_join_max_mb * 2**20:
            limit = self.config.arrow_join_max_mb
            return f"the feature tables hold {size / 2**20:,.0f} MiB, over offline.arrow_join_max_mb ({limit})"
        return None

    def _join(self, manifest: Manifest, entities: pa.Table) -> pa.Table:
        """The feature columns, joined one view at a time so that only one view's table is in memory at once."""
        joined: dict[str, pa.ChunkedArray] = {}
        for view in manifest.views:
            try:
                table = delta_rs.read_snapshot(delta_rs.snapshot(view.path, view.version), table_columns_read(view))
            except Exception as exc:
                raise DatasetError(
                    f"cannot read view '{view.name}' at version {view.version} from {view.path}: {exc}"
                ) from exc
            result = arrow_join.point_in_time_join(entities, manifest.timestamp_column, [view_table(view, table)])
            joined.update(zip(result.column_names, result.columns, strict=True))
            del table, result  # before the next view's table is read
        return pa.table(joined)
