"""The statistics of a run's rows (:class:`features.run_stats.FeatureStats`) computed by Spark, over a DataFrame
the run already holds (persisted for its write or its publication): one aggregation for every feature's counts,
moments, quantiles and distinct count, and one grouping for the top values of the string and boolean features.
"""

from __future__ import annotations

import math
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from features.dtypes import DType
from features.run_stats import (
    QUANTILES,
    SPARK_ACCURACY,
    SPARK_DISTINCT_RSD,
    TOP_VALUES,
    FeatureStats,
    RunStats,
    empty_stats,
)
from offline.spark.jdbc import quote_spark

_CATEGORICAL = (DType.STRING, DType.BOOL)


def spark_run_stats(written: dict[str, FeatureStats], published: dict[str, FeatureStats] | None) -> RunStats:
    """A run's statistics as Spark computed them, with Spark's bounds."""
    return RunStats("spark", written, published, 1 / SPARK_ACCURACY, SPARK_DISTINCT_RSD)


def spark_stats(
    frame: DataFrame, features: list[tuple[str, DType]], rows: int | None = None
) -> dict[str, FeatureStats]:
    """The statistics of ``features`` (name, type) over ``frame``; ``rows``: its row count when known (0 skips
    every Spark job). Unknown, it is counted by the same aggregation (each feature's ``count``)."""
    if rows == 0 or not features:
        return {name: empty_stats(dtype) for name, dtype in features}
    aggregates: list[Any] = [F.count(F.lit(1)).alias("__rows")]
    for i, (name, dtype) in enumerate(features):
        aggregates.extend(_aggregates(f"c{i}", F.col(quote_spark(name)), dtype))
    row = frame.agg(*aggregates).collect()[0]  # an aggregation without grouping has one row
    if row["__rows"] == 0:  # as if the count had been given: no row, no statistic, no grouping for top values
        return {name: empty_stats(dtype) for name, dtype in features}
    tops = _top_values(frame, [(i, name, dtype) for i, (name, dtype) in enumerate(features) if dtype in _CATEGORICAL])
    return {name: _feature(row.asDict(), f"c{i}", dtype, tops.get(i, ())) for i, (name, dtype) in enumerate(features)}


def _aggregates(prefix: str, column: Any, dtype: DType) -> list[Any]:
    def count_if(condition: Any, suffix: str) -> Any:
        return F.coalesce(F.sum(F.when(condition, 1).otherwise(0)), F.lit(0)).alias(f"{prefix}_{suffix}")

    out = [count_if(column.isNull(), "nulls")]
    if dtype in _CATEGORICAL:
        return [*out, F.approx_count_distinct(column, SPARK_DISTINCT_RSD).alias(f"{prefix}_distinct")]
    if not dtype.is_numeric:
        return out
    finite = column
    if dtype is DType.FLOAT64:
        inf = F.lit(float("inf"))
        out += [
            count_if(F.isnan(column), "nan"),
            count_if(column == inf, "pos_inf"),
            count_if(column == -inf, "neg_inf"),
        ]
        finite = F.when(~F.isnan(column) & (column != inf) & (column != -inf), column)
    return [
        *out,
        F.min(finite).alias(f"{prefix}_min"),
        F.max(finite).alias(f"{prefix}_max"),
        F.avg(finite).alias(f"{prefix}_mean"),
        F.stddev_samp(finite).alias(f"{prefix}_stddev"),
        F.percentile_approx(finite, [p for _, p in QUANTILES], SPARK_ACCURACY).alias(f"{prefix}_quantiles"),
    ]


def _top_values(frame: DataFrame, columns: list[tuple[int, str, DType]]) -> dict[int, tuple[tuple[Any, int], ...]]:
    """The most frequent values of each string or boolean column (ties by value), in one grouping."""
    if not columns:
        return {}
    pairs = F.array(
        *(F.struct(F.lit(i).alias("f"), F.col(quote_spark(name)).cast("string").alias("v")) for i, name, _ in columns)
    )
    counted = (
        frame.select(F.explode(pairs).alias("p"))
        .select("p.f", "p.v")
        .where(F.col("v").isNotNull())
        .groupBy("f", "v")
        .count()
    )
    # Booleans as text sort "false" before "true", as False sorts before True; text sorts by code point.
    rank = F.row_number().over(Window.partitionBy("f").orderBy(F.col("count").desc(), F.col("v")))
    kept = counted.withColumn("rank", rank).where(F.col("rank") <= TOP_VALUES).collect()
    types = {i: dtype for i, _, dtype in columns}
    out: dict[int, list[tuple[Any, int]]] = {}
    for r in sorted(kept, key=lambda r: (r["f"], r["rank"])):
        value = r["v"] == "true" if types[r["f"]] is DType.BOOL else r["v"]
        out.setdefault(r["f"], []).append((value, int(r["count"])))
    return {i: tuple(values) for i, values in out.items()}


def _feature(row: dict[str, Any], prefix: str, dtype: DType, top: tuple[tuple[Any, int], ...]) -> FeatureStats:
    count, nulls = int(row["__rows"]), int(row[f"{prefix}_nulls"])
    if dtype in _CATEGORICAL:
        return FeatureStats(dtype.value, count, nulls, top=top, distinct=int(row[f"{prefix}_distinct"]))
    if not dtype.is_numeric:
        return FeatureStats(dtype.value, count, nulls)
    picked = row[f"{prefix}_quantiles"]
    stddev = row[f"{prefix}_stddev"]
    if stddev is not None and math.isnan(stddev):  # finite values whose moments overflowed float64 (inf - inf)
        stddev = math.inf
    return FeatureStats(
        dtype.value,
        count,
        nulls,
        nan=int(row.get(f"{prefix}_nan", 0)),
        pos_inf=int(row.get(f"{prefix}_pos_inf", 0)),
        neg_inf=int(row.get(f"{prefix}_neg_inf", 0)),
        min=row[f"{prefix}_min"],
        max=row[f"{prefix}_max"],
        mean=row[f"{prefix}_mean"],
        stddev=stddev,
        quantiles={} if picked is None else {name: v for (name, _), v in zip(QUANTILES, picked, strict=True)},
    )
