"""The point-in-time join, written once.

For each entity row (keys, time ``t``) and each view it finds the row the online store would have served at
``t``: the latest feature row with ``event_timestamp <= t`` (ties broken by the later ``created_timestamp``,
a null created time sorting first) that is not older than the view's TTL (``t - event_timestamp <= ttl``,
inclusive); otherwise nulls. A windowed view stores rows only at the ticks where a value changes, so its
TTL counts from the last tick computed instead (``valid_until``, see ``offline/spark/windows.py``).

It is a union plus a window rather than a range join: entity rows and the feature rows of every view with the
same join keys are stacked, ordered by time within each key, and every entity row takes, per view, the last
feature value seen before it (``last(..., ignorenulls=True)``). That is one shuffle per set of join keys (the
entity rows travel whole through it, so nothing is joined back), and no quadratic blow-up on hot keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.dtypes import DType
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from offline.spark.jdbc import quote_spark, spark_type
from offline.tables import ViewTable

ROW_ID = "__skewless_row_id"


def point_in_time_join(entities: DataFrame, timestamp_column: str, views: Sequence[ViewTable]) -> DataFrame:
    """Add ``<view>__<feature>`` columns to ``entities`` as of each row's ``timestamp_column``.

    ``entities`` must carry a unique :data:`ROW_ID` column (see :func:`with_row_id`); the result keeps every
    input row exactly once, the input columns in their order, then the feature columns, in no particular row
    order: sort by :data:`ROW_ID` (kept for that) to align the result with the input.
    """

    result = entities
    for group in _by_join_keys(views):
        result = _join_group(result, timestamp_column, group)
    feature_columns = [F.col(quote_spark(v.column(f))) for v in views for f in v.features]
    return result.select(*(F.col(quote_spark(c)) for c in entities.columns), *feature_columns)


def _by_join_keys(views: Sequence[ViewTable]) -> list[list[ViewTable]]:
    """The views grouped by their join keys (names and types), in first-seen order."""
    groups: dict[tuple[tuple[str, DType], ...], list[ViewTable]] = {}
    for view in views:
        groups.setdefault(view.join_keys, []).append(view)
    return list(groups.values())


def _join_group(entities: DataFrame, timestamp_column: str, views: Sequence[ViewTable]) -> DataFrame:
    """``entities`` with the feature columns of ``views``, which all share the same join keys.

    One shuffle for the whole group: the entity rows (carried whole, as one struct) and every view's feature
    rows are stacked, partitioned by the keys and ordered by time; each entity row takes, per view, the last
    value of that view seen before it.
    """

    join_keys = views[0].join_keys
    keys = [f"__k{i}" for i in range(len(join_keys))]
    values = [f"__v{i}" for i in range(len(views))]
    row = _struct(entities.columns)
    value_structs = [_struct([*v.features, EVENT_TIMESTAMP]) for v in views]
    row_type = entities.select(row).schema[0].dataType
    value_types = [v.table.select(struct).schema[0].dataType for v, struct in zip(views, value_structs, strict=True)]

    left = entities.select(
        *(
            F.col(quote_spark(name)).cast(spark_type(dtype)).alias(k)
            for (name, dtype), k in zip(join_keys, keys, strict=True)
        ),
        F.col(quote_spark(timestamp_column)).cast("timestamp").alias("__t"),
        F.lit(1).alias("__side"),  # at equal times feature rows (0) come first: event_timestamp <= t is valid
        F.lit(None).cast("timestamp").alias("__created"),
        row.alias("__row"),
        *(F.lit(None).cast(t).alias(v) for v, t in zip(values, value_types, strict=True)),
    )
    stacked = left
    for i, view in enumerate(views):
        right = view.table.select(
            *(F.col(quote_spark(name)).alias(k) for (name, _), k in zip(join_keys, keys, strict=True)),
            F.col(EVENT_TIMESTAMP).alias("__t"),
            F.lit(0).alias("__side"),
            F.col(CREATED_TIMESTAMP).alias("__created"),
            F.lit(None).cast(row_type).alias("__row"),
            value_structs[i].alias(values[i]),
        )
        # Rows without keys or time in the table never match anything; keep them out of the shuffle.
        right = right.where(F.col("__t").isNotNull())
        for k in keys:
            right = right.where(F.col(k).isNotNull())
        stacked = stacked.unionByName(right, allowMissingColumns=True)

    window = (
        Window.partitionBy(*keys)
        .orderBy(F.col("__t").asc_nulls_first(), "__side", F.col("__created").asc_nulls_first())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    lasts = [F.last(v, ignorenulls=True).over(window).alias(v) for v in values]
    found = stacked.select("__t", "__side", "__row", *lasts).where(F.col("__side") == 1)

    columns = []
    for view, value in zip(views, values, strict=True):
        valid = F.col(value).isNotNull() & F.col("__t").isNotNull()
        if view.ttl_seconds is not None:
            age = F.unix_micros(F.col("__t")) - F.unix_micros(F.col(f"{value}.{EVENT_TIMESTAMP}"))
            valid = valid & (age <= F.lit(view.ttl_seconds * 1_000_000))
        if view.valid_until is not None:
            valid = valid & (F.col("__t") <= F.lit(view.valid_until).cast("timestamp"))
        columns += [F.when(valid, F.col(value)[f]).alias(view.column(f)) for f in view.features]
    return found.select("__row.*", *columns)


def _struct(columns: Sequence[str]) -> Column:
    return F.struct(*(F.col(quote_spark(c)) for c in columns))


def with_row_id(frame: DataFrame) -> DataFrame:
    """Add :data:`ROW_ID`, increasing in the frame's current row order."""

    return frame.withColumn(ROW_ID, F.monotonically_increasing_id())
