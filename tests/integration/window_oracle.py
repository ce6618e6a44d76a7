"""Windowed aggregations in plain Python, straight from the written definition, for the tests to compare with.

The value of a window ``w`` at tick ``T`` aggregates the rows with ``T - w < event time <= T`` (every row up to
``T`` when unbounded) whose filter is true, skipping null inputs; an empty window is 0 for count and
count_distinct, None for the rest. No tiles, no Spark: one loop over the rows per value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    """One generated feature: ``function`` of ``value(row)`` over ``window`` (None: unbounded)."""

    name: str
    function: str
    window: timedelta | None
    value: Callable[[Row], Any]
    keep: Callable[[Row], bool] = lambda row: True


def value_at(spec: Spec, rows: Sequence[Row], tick: datetime, time_column: str, created_column: str) -> Any:
    picked = [
        row
        for row in rows
        if row[time_column] <= tick
        and (spec.window is None or row[time_column] > tick - spec.window)
        and spec.keep(row) is True
        and spec.value(row) is not None
    ]
    values = [spec.value(row) for row in picked]
    if spec.function == "count":
        return len(values)
    if spec.function == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if spec.function == "sum":
        return math.fsum(values) if isinstance(values[0], float) else sum(values)
    if spec.function == "mean":
        return math.fsum(values) / len(values)
    if spec.function == "stddev":
        return statistics.stdev(values) if len(values) >= 2 else None
    if spec.function == "min":
        return min(values)
    if spec.function == "max":
        return max(values)

    def order(row: Row) -> tuple[Any, ...]:  # event time, then created (null first), then the value
        created = row[created_column]
        return (row[time_column], created is not None, created or datetime.min, spec.value(row))

    if spec.function == "last":
        return spec.value(max(picked, key=order))
    if spec.function == "first":
        return spec.value(min(picked, key=order))
    raise ValueError(spec.function)


def same(expected: Any, got: Any) -> bool:
    """Equal, floats within 1e-9 relative (float sums are not in a fixed order; see offline/spark/windows.py)."""
    if expected is None or got is None:
        return expected is None and got is None
    if isinstance(expected, float) or isinstance(got, float):
        return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=1e-9)
    return bool(expected == got)
