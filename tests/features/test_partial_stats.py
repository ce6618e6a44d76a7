"""Statistics merged from parts against plain Python over all the rows at once (statistics, math, Counter)."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter

import pyarrow as pa
import pytest

from features.dtypes import DType
from features.partial_stats import MAX_VALUE_COUNTS, describe, merge
from features.run_stats import QUANTILES, SPARK_ACCURACY, TOP_VALUES

FEATURES = [("x", DType.FLOAT64), ("n", DType.INT64), ("s", DType.STRING), ("b", DType.BOOL), ("t", DType.TIMESTAMP)]


def _rows(count: int, seed: int) -> dict[str, list[object]]:
    rng = random.Random(seed)
    x: list[object] = []
    for _ in range(count):
        r = rng.random()
        x.append(None if r < 0.03 else math.nan if r < 0.05 else math.inf if r < 0.06 else rng.gauss(3.0, 10.0))
    return {
        "x": x,
        "n": [None if rng.random() < 0.02 else rng.randint(-50, 5000) for _ in range(count)],
        "s": [None if rng.random() < 0.1 else f"v{int(rng.paretovariate(1.2))}" for _ in range(count)],
        "b": [rng.random() < 0.3 for _ in range(count)],
        "t": [None] * count,
    }


def _parts(rows: dict[str, list[object]], cuts: list[int]) -> list[pa.Table]:
    table = pa.table(
        {
            "x": pa.array(rows["x"], pa.float64()),
            "n": pa.array(rows["n"], pa.int64()),
            "s": pa.array(rows["s"], pa.string()),
            "b": pa.array(rows["b"], pa.bool_()),
            "t": pa.array(rows["t"], pa.timestamp("us", tz="UTC")),
        }
    )
    return [table.slice(a, b - a) for a, b in itertools.pairwise(cuts)]


def _rank_error(values: list[float], picked: float, p: float) -> int:
    """How far (in ranks) ``picked`` is from the exact quantile: 0 when a copy of it holds rank ceil(p * n)."""
    rank = max(1, math.ceil(p * len(values)))
    first = sum(v < picked for v in values) + 1
    last = sum(v <= picked for v in values)
    assert last >= first, "the quantile must be one of the values"
    return 0 if first <= rank <= last else min(abs(first - rank), abs(last - rank))


@pytest.mark.parametrize(
    ("count", "cuts"),
    [(2_000, [0, 700, 700, 1500, 2000]), (60_000, [0, 25_000, 48_000, 60_000])],
    ids=["parts-below-the-summary-size", "parts-summarized"],
)
def test_merged_parts_match_one_pass_over_every_row(count: int, cuts: list[int]) -> None:
    rows = _rows(count, seed=count)
    parts = [describe(t, FEATURES) for t in _parts(rows, cuts)]
    merged = {name: merge([p[name] for p in parts], dtype) for name, dtype in FEATURES}

    for name in ("x", "n"):
        stats = merged[name]
        assert stats is not None
        present = [v for v in rows[name] if v is not None]
        finite = sorted(float(v) for v in present if math.isfinite(float(v)))  # type: ignore[arg-type]
        assert stats.count == count and stats.nulls == count - len(present)
        assert stats.nan == sum(1 for v in present if isinstance(v, float) and math.isnan(v))
        assert stats.pos_inf == sum(1 for v in present if v == math.inf)
        assert stats.values == len(finite)
        assert (stats.min, stats.max) == (finite[0], finite[-1])
        assert stats.mean == pytest.approx(statistics.fmean(finite), rel=1e-12)
        assert stats.stddev == pytest.approx(statistics.stdev(finite), rel=1e-12)
        bound = math.ceil(len(finite) / SPARK_ACCURACY)
        summarized = max(b - a for a, b in itertools.pairwise(cuts)) >= SPARK_ACCURACY
        for label, p in QUANTILES:
            error = _rank_error(finite, float(stats.quantiles[label]), p)
            assert error <= bound, (name, label, error, bound)
            if not summarized:
                assert error == 0

    for name in ("s", "b"):
        stats = merged[name]
        assert stats is not None
        counted = Counter(v for v in rows[name] if v is not None)
        assert stats.distinct == len(counted)
        assert stats.top == tuple(sorted(counted.items(), key=lambda p: (-p[1], p[0]))[:TOP_VALUES])
        assert stats.nulls == sum(v is None for v in rows[name])

    timestamps = merged["t"]
    assert timestamps is not None and (timestamps.count, timestamps.nulls) == (count, count)


def test_a_feature_with_too_many_values_to_send_is_left_to_the_caller() -> None:
    many = pa.table({"s": pa.array([f"id{i}" for i in range(MAX_VALUE_COUNTS + 1)])})
    few = pa.table({"s": pa.array(["a", "b"])})
    parts = [describe(many, [("s", DType.STRING)]), describe(few, [("s", DType.STRING)])]
    assert parts[0]["s"].counts is None
    assert merge([p["s"] for p in parts], DType.STRING) is None
    assert merge([parts[1]["s"]], DType.STRING) is not None


def test_parts_without_values_merge_to_no_moments() -> None:
    empty = pa.table({"x": pa.array([None, math.nan], pa.float64())})
    stats = merge([describe(empty, [("x", DType.FLOAT64)])["x"]] * 2, DType.FLOAT64)
    assert stats is not None
    assert (stats.count, stats.nulls, stats.nan, stats.min, stats.mean, stats.quantiles) == (4, 2, 2, None, None, {})
