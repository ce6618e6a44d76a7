"""A run's statistics computed in parts, one per task that holds some of its rows, and merged into the
:class:`~features.run_stats.FeatureStats` one pass over every row would give.

A Spark run that creates a table prepares and writes each partition of entities in a Python task
(:mod:`offline.spark.first_write`); each task describes its rows here (:func:`describe`), and the driver merges
the parts (:func:`merge`). What merges exactly: counts, min and max, the mean and the sample variance (Chan et
al.'s pairwise update of the sum of squared deviations), and the value counts of strings and booleans (hence
their top values and distinct count). Quantiles merge from each part's *ranked summary*: its sorted finite values
taken every ``s``-th (``s = n // SPARK_ACCURACY + 1``), each standing for ``s`` values, the largest for what is
left. A part under :data:`~features.run_stats.SPARK_ACCURACY` values keeps them all (exact); else each summary
undercounts the values at or below any x by less than ``n / SPARK_ACCURACY``, so the merged quantile's rank is
within ``ceil(n / SPARK_ACCURACY)`` of the exact one: the bound Spark's ``percentile_approx`` states, which
:func:`offline.spark.stats.spark_run_stats` records.

A part whose string or boolean feature holds more than :data:`MAX_VALUE_COUNTS` distinct values does not send
them (``counts`` is None): the caller counts that feature's values another way (a grouping in Spark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from features.dtypes import DType
from features.run_stats import QUANTILES, SPARK_ACCURACY, TOP_VALUES, FeatureStats, Value

if TYPE_CHECKING:
    import pyarrow as pa

#: The most distinct values of a string or boolean feature one part sends to be merged.
MAX_VALUE_COUNTS = 100_000

_CATEGORICAL = (DType.STRING, DType.BOOL)


@dataclass(frozen=True, slots=True)
class StatsPart:
    """One feature over one part of the rows: what merges into its :class:`FeatureStats`."""

    count: int
    nulls: int
    nan: int = 0
    pos_inf: int = 0
    neg_inf: int = 0
    finite: int = 0  # numeric: the finite values the moments and the summary are over
    min: Any = None
    max: Any = None
    mean: float = 0.0
    m2: float = 0.0  # the sum of squared deviations from ``mean``
    summary: tuple[np.ndarray, np.ndarray] | None = None  # numeric: ranked values and the values each stands for
    counts: dict[Value, int] | None = None  # strings and booleans: rows per value; None when too many


def describe(table: pa.Table, features: list[tuple[str, DType]]) -> dict[str, StatsPart]:
    """Each feature of ``features`` (name, type) over the rows of ``table``."""
    return {name: _part(table.column(name), dtype) for name, dtype in features}


def _part(column: pa.ChunkedArray, dtype: DType) -> StatsPart:
    import pyarrow.compute as pc

    count, nulls = len(column), column.null_count
    present = pc.drop_null(column)
    if dtype in _CATEGORICAL:
        counted = pc.value_counts(present) if len(present) else None
        if counted is None:
            return StatsPart(count, nulls, counts={})
        if len(counted) > MAX_VALUE_COUNTS:
            return StatsPart(count, nulls, counts=None)
        values, rows = counted.field(0).to_pylist(), counted.field(1).to_pylist()
        return StatsPart(count, nulls, counts=dict(zip(values, rows, strict=True)))
    if not dtype.is_numeric:
        return StatsPart(count, nulls)
    values = present.to_numpy()
    floating = dtype is DType.FLOAT64
    nan = int(np.isnan(values).sum()) if floating else 0
    pos_inf = int(np.isposinf(values).sum()) if floating else 0
    neg_inf = int(np.isneginf(values).sum()) if floating else 0
    finite = np.sort(values[np.isfinite(values)] if floating else values)
    n = len(finite)
    if not n:
        return StatsPart(count, nulls, nan, pos_inf, neg_inf)
    as_float = finite.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # values near 1e308 overflow the moments: inf, as in Spark
        mean = float(np.mean(as_float))
        m2 = float(np.sum((as_float - mean) ** 2))
    step = n // SPARK_ACCURACY + 1
    ranked = finite[step - 1 :: step]
    weights = np.full(len(ranked), step, np.int64)
    left = n - len(ranked) * step  # the largest values, past the last one taken
    if left:
        ranked, weights = np.append(ranked, finite[-1]), np.append(weights, left)
    return StatsPart(
        count, nulls, nan, pos_inf, neg_inf, n, finite[0].item(), finite[-1].item(), mean, m2, (ranked, weights)
    )


def merge(parts: list[StatsPart], dtype: DType) -> FeatureStats | None:
    """The statistics of the rows of every part; None for a string or boolean feature some part did not count
    (:data:`MAX_VALUE_COUNTS`)."""
    count, nulls = sum(p.count for p in parts), sum(p.nulls for p in parts)
    if dtype in _CATEGORICAL:
        if any(p.counts is None for p in parts):
            return None
        totals: dict[Value, int] = {}
        for p in parts:
            for value, rows in (p.counts or {}).items():
                totals[value] = totals.get(value, 0) + rows
        top = tuple(sorted(totals.items(), key=lambda p: (-p[1], p[0]))[:TOP_VALUES])
        return FeatureStats(dtype.value, count, nulls, top=top, distinct=len(totals))
    if not dtype.is_numeric:
        return FeatureStats(dtype.value, count, nulls)
    nan, pos_inf, neg_inf = (sum(getattr(p, name) for p in parts) for name in ("nan", "pos_inf", "neg_inf"))
    valued = [p for p in parts if p.finite]
    if not valued:
        return FeatureStats(dtype.value, count, nulls, nan, pos_inf, neg_inf)
    n, mean, m2 = 0, 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for p in valued:  # Chan et al.: the pairwise update of the mean and the sum of squared deviations
            total = n + p.finite
            delta = p.mean - mean
            m2 += p.m2 + delta * delta * n * p.finite / total
            mean += delta * p.finite / total
            n = total
    stddev = math.sqrt(m2 / (n - 1)) if n > 1 else None
    if stddev is not None and math.isnan(stddev):  # finite values whose moments overflowed float64, as in Spark
        stddev = math.inf
    return FeatureStats(
        dtype.value,
        count,
        nulls,
        nan,
        pos_inf,
        neg_inf,
        min=min(p.min for p in valued),
        max=max(p.max for p in valued),
        mean=mean,
        stddev=stddev,
        quantiles=_quantiles([p.summary for p in valued if p.summary is not None], n),
    )


def _quantiles(summaries: list[tuple[np.ndarray, np.ndarray]], n: int) -> dict[str, float | int]:
    """Each quantile p: the smallest ranked value whose values at or below it stand for ``ceil(p * n)`` values."""
    values = np.concatenate([s[0] for s in summaries])
    weights = np.concatenate([s[1] for s in summaries])
    order = np.argsort(values, kind="stable")
    values, reached = values[order], np.cumsum(weights[order])
    out: dict[str, float | int] = {}
    for name, p in QUANTILES:
        rank = max(1, math.ceil(p * n))
        out[name] = values[min(int(np.searchsorted(reached, rank)), len(values) - 1)].item()
    return out
