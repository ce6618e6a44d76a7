"""The point-in-time join, written once.

For each entity row (keys, time ``t``) and each view it finds the row the online store would have served at
``t``: the latest feature row with ``event_timestamp <= t`` (ties broken by the later ``created_timestamp``,
a null created time sorting first) that is not older than the view's TTL (``t - event_timestamp <= ttl``,
inclusive); otherwise nulls. A windowed view stores rows only at the ticks where a value changes, so its
TTL counts from the last tick computed instead (``valid_until``, see ``offline/windows.py``).

It is a union plus a window rather than a range join: entity rows and feature rows of a view are stacked,
ordered by time within each key, and every entity row takes the last feature value seen before it
(``last(..., ignorenulls=True)``). That is one shuffle per view and no quadratic blow-up on hot keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from features.dtypes import DType
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from offline.jdbc import quote_spark, spark_type

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

ROW_ID = "__skewless_row_id"


@dataclass(frozen=True, slots=True)
class ViewInput:
    """One view's side of the join: its feature table (already pinned to a version) and what to take from it.

    ``table`` has the join keys, the features, ``event_timestamp`` and ``created_timestamp``.
    """

    name: str
    join_keys: tuple[tuple[str, DType], ...]
    features: tuple[str, ...]
    ttl_seconds: int | None
    table: DataFrame
    valid_until: datetime | None = None  # windowed views: the last tick computed plus the TTL

    def column(self, feature: str) -> str:
        return f"{self.name}__{feature}"


def point_in_time_join(entities: DataFrame, timestamp_column: str, views: Sequence[ViewInput]) -> DataFrame:
    """Add ``<view>__<feature>`` columns to ``entities`` as of each row's ``timestamp_column``.

    ``entities`` must carry a unique, increasing :data:`ROW_ID` column (see :func:`with_row_id`); the result
    keeps every input row exactly once, the input columns in their order, then the feature columns, sorted
    by :data:`ROW_ID` (which is kept so callers can align the result with the input).
    """
    from pyspark.sql import functions as F

    result = entities
    for view in views:
        result = result.join(_view_values(entities, timestamp_column, view), on=ROW_ID, how="left")
    feature_columns = [F.col(quote_spark(v.column(f))) for v in views for f in v.features]
    return result.select(*(F.col(quote_spark(c)) for c in entities.columns), *feature_columns).orderBy(ROW_ID)


def _view_values(entities: DataFrame, timestamp_column: str, view: ViewInput) -> DataFrame:
    """ROW_ID and the view's feature columns for every entity row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = [f"__k{i}" for i in range(len(view.join_keys))]
    value_fields = [*view.features, EVENT_TIMESTAMP]
    value_type = view.table.select(F.struct(*(F.col(quote_spark(c)) for c in value_fields)).alias("v")).schema[0]

    left = entities.select(
        *(
            F.col(quote_spark(name)).cast(spark_type(dtype)).alias(k)
            for (name, dtype), k in zip(view.join_keys, keys, strict=True)
        ),
        F.col(quote_spark(timestamp_column)).cast("timestamp").alias("__t"),
        F.lit(1).alias("__side"),  # at equal times feature rows (0) come first: event_timestamp <= t is valid
        F.lit(None).cast("timestamp").alias("__created"),
        F.col(ROW_ID),
        F.lit(None).cast(value_type.dataType).alias("__v"),
    )
    right = view.table.select(
        *(F.col(quote_spark(name)).alias(k) for (name, _), k in zip(view.join_keys, keys, strict=True)),
        F.col(EVENT_TIMESTAMP).alias("__t"),
        F.lit(0).alias("__side"),
        F.col(CREATED_TIMESTAMP).alias("__created"),
        F.lit(None).cast("long").alias(ROW_ID),
        F.struct(*(F.col(quote_spark(c)) for c in value_fields)).alias("__v"),
    )
    # Rows without keys or time in the table never match anything; keep them out of the shuffle.
    right = right.where(F.col("__t").isNotNull())
    for k in keys:
        right = right.where(F.col(k).isNotNull())

    window = (
        Window.partitionBy(*keys)
        .orderBy(F.col("__t").asc_nulls_first(), "__side", F.col("__created").asc_nulls_first())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    stacked = left.unionByName(right).withColumn("__last", F.last("__v", ignorenulls=True).over(window))
    found = stacked.where(F.col("__side") == 1)

    valid = F.col("__last").isNotNull() & F.col("__t").isNotNull()
    if view.ttl_seconds is not None:
        age = F.unix_micros(F.col("__t")) - F.unix_micros(F.col(f"__last.{EVENT_TIMESTAMP}"))
        valid = valid & (age <= F.lit(view.ttl_seconds * 1_000_000))
    if view.valid_until is not None:
        valid = valid & (F.col("__t") <= F.lit(view.valid_until).cast("timestamp"))
    return found.select(
        F.col(ROW_ID),
        *(F.when(valid, F.col("__last")[f]).alias(view.column(f)) for f in view.features),
    )


def with_row_id(frame: DataFrame) -> DataFrame:
    """Add :data:`ROW_ID`, increasing in the frame's current row order."""
    from pyspark.sql import functions as F

    return frame.withColumn(ROW_ID, F.monotonically_increasing_id())
