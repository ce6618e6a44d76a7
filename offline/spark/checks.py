"""A run's checks in Spark: :class:`features.checks.RunRows` over the rows the run persisted for its write.

Only a failing check reads rows (a count and a few examples, from Spark's cache); the checks themselves are
evaluated from the statistics by :func:`features.checks.gate`, the same for every engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.checks import CheckPlan, json_row
from features.plan import EVENT_TIMESTAMP
from offline.spark.jdbc import quote_spark


class SparkRows:
    """:class:`features.checks.RunRows` over a (persisted) DataFrame of the rows a run writes."""

    def __init__(self, frame: DataFrame, key_names: Sequence[str]) -> None:
        self._frame = frame
        self._keys = list(key_names)

    def failing(self, check: CheckPlan, limit: int) -> tuple[int, list[dict[str, Any]]]:
        assert check.feature is not None
        failing = self._frame.where(_condition(check, F.col(quote_spark(check.feature)), self._frame, check.feature))
        columns = [quote_spark(c) for c in (*self._keys, EVENT_TIMESTAMP, check.feature)]
        examples = [json_row(r.asDict()) for r in failing.select(*columns).limit(limit).collect()]
        return failing.count(), examples

    def duplicate_keys(self, limit: int) -> tuple[int, list[dict[str, Any]]]:
        keys = [F.col(quote_spark(k)) for k in self._keys]
        repeated = self._frame.groupBy(*keys).count().where(F.col("count") > 1).persist()
        try:
            total = repeated.agg(F.sum(F.col("count") - 1).alias("n")).first()
            examples = [
                json_row(r.asDict()) for r in repeated.withColumnRenamed("count", "rows").limit(limit).collect()
            ]
        finally:
            repeated.unpersist()
        return int((total["n"] if total is not None else 0) or 0), examples


def _condition(check: CheckPlan, column: Column, frame: DataFrame, feature: str) -> Column:
    """The rows that fail a row-level check, as Arrow's masks in :mod:`features.checks` select them: nulls (and NaN)
    are no values for a range or a list of allowed values, and an infinity is outside the bound on its side."""
    floating = dict(frame.dtypes).get(feature) in ("double", "float")
    if check.kind == "max_nulls":
        return column.isNull() | F.isnan(column) if floating else column.isNull()
    if check.kind == "range":
        low, high = check.params["min"], check.params["max"]
        out = F.lit(False)
        if low is not None:
            out = out | (column < F.lit(low))
        if high is not None:
            out = out | (column > F.lit(high))
        valid = column.isNotNull() & ~F.isnan(column) if floating else column.isNotNull()
        return valid & out
    return column.isNotNull() & ~column.isin(list(check.params["values"]))
