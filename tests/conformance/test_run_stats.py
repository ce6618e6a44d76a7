"""Run statistics (features/run_stats.py) of every offline engine, held to a plain-Python oracle computed on the
rows read back independently (the Delta table with the ``deltalake`` reader, the published rows from the online
store's files), within each engine's stated bounds: Arrow exactly, Spark's quantiles within ``ceil(n / A)``
ranks and its distinct counts within 3 relative standard deviations. Both engines held to one oracle on the same
source agree with each other within the same bounds. Edge cases: an empty run, an all-null column, a single row,
NaN and infinities."""

from __future__ import annotations

import math
import sys
import uuid
from collections import Counter
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from features.config import RepoConfig
from features.dtypes import DType
from features.run_stats import QUANTILES, TOP_VALUES, FeatureStats, RunStats
from offline.jobs import Materialization
from offline.tables import table_path
from tests.conformance.test_materialize_engines import generated_rows
from tests.offline.support import FileOnlineStore, make_plan, make_view
from tests.offline.test_arrow_materialize import write_pg_source

pytestmark = [pytest.mark.postgres, pytest.mark.spark, pytest.mark.slow]

FEATURES = {"amount_x2": "amount * 2", "total": "amount * qty", "units": "qty", "merchant_lc": "lower(merchant)"}
FEATURES |= {"bulk": "qty > 2"}


def stats_view(table: str, name: str) -> Any:
    return make_view(
        name,
        connection="shop",
        table=table,
        keys={"user_id": DType.INT64},
        columns={
            "merchant": DType.STRING,
            "amount": DType.FLOAT64,
            "qty": DType.INT64,
            "ts": DType.TIMESTAMP,
            "created": DType.TIMESTAMP,
        },
        features=FEATURES,
        created="created",
    )


def run(offline_engine: Any, postgres_url: str, root: Path, rows: list[Any]) -> tuple[Any, Any, Any, Any]:
    """Materialize ``rows`` once; (config, view, store, result)."""
    table = f"st_{uuid.uuid4().hex[:8]}"
    write_pg_source(postgres_url, table, rows)
    view = stats_view(table, "stats_txn")
    config = RepoConfig(root=root, connections={"shop": postgres_url})
    store = FileOnlineStore(root / "online")
    engine = offline_engine(config)
    job = Materialization(make_plan(view), view, None, None)
    assert engine.refusal(job) is None
    return config, view, store, engine.materialize(job, store, None)


def oracle(values: list[Any], dtype: DType) -> dict[str, Any]:
    """The statistics of one column, in plain Python (exact arithmetic for the moments)."""
    present = [v for v in values if v is not None]
    out: dict[str, Any] = {"count": len(values), "nulls": len(values) - len(present)}
    if dtype in (DType.STRING, DType.BOOL):
        counted = Counter(present)
        out["top"] = sorted(counted.items(), key=lambda p: (-p[1], p[0]))[:TOP_VALUES]
        out["distinct"] = len(counted)
        return out
    finite = sorted(v for v in present if math.isfinite(v))
    out |= {
        "nan": sum(1 for v in present if v != v),
        "pos_inf": sum(1 for v in present if v == math.inf),
        "neg_inf": sum(1 for v in present if v == -math.inf),
        "finite": finite,
        "min": finite[0] if finite else None,
        "max": finite[-1] if finite else None,
        "mean": float(sum(map(Fraction, finite)) / len(finite)) if finite else None,
    }
    if len(finite) > 1:
        mean = sum(map(Fraction, finite)) / len(finite)
        variance = sum((Fraction(v) - mean) ** 2 for v in finite) / (len(finite) - 1)
        # A variance past float64's range is infinite (the engines' float64 moments overflow): documented.
        out["stddev"] = math.inf if variance > sys.float_info.max else math.sqrt(variance)
    else:
        out["stddev"] = None
    return out


def check(stats: FeatureStats, expected: dict[str, Any], rank_error: float, rsd: float) -> None:
    """``stats`` equals the oracle, but for the approximations within the bounds the engine states."""
    assert (stats.count, stats.nulls) == (expected["count"], expected["nulls"])
    if "distinct" in expected:
        assert [tuple(p) for p in stats.top] == [tuple(p) for p in expected["top"]]
        assert stats.distinct is not None
        assert abs(stats.distinct - expected["distinct"]) <= math.ceil(3 * rsd * expected["distinct"])
        return
    assert (stats.nan, stats.pos_inf, stats.neg_inf) == (expected["nan"], expected["pos_inf"], expected["neg_inf"])
    assert (stats.min, stats.max) == (expected["min"], expected["max"])
    for name in ("mean", "stddev"):
        got, want = getattr(stats, name), expected[name]
        assert (got is None) == (want is None), name
        if want is not None:
            assert math.isclose(got, want, rel_tol=1e-9), (name, got, want)
    finite = expected["finite"]
    if not finite:
        assert stats.quantiles == {}
        return
    n, slack = len(finite), math.ceil(len(finite) * rank_error)
    for name, p in QUANTILES:
        value = stats.quantiles[name]
        target = max(1, math.ceil(Fraction(str(p)) * n))  # the rank of the exact quantile, 1-based
        first = sum(1 for v in finite if v < value) + 1  # the ranks ``value`` holds in the data
        last = sum(1 for v in finite if v <= value)
        assert first <= last, f"{name} = {value} is not a value of the data"
        assert first - slack <= target <= last + slack, (name, value, target, first, last, slack)


def check_all(stats: dict[str, FeatureStats], columns: dict[str, list[Any]], view: Any, run: RunStats) -> None:
    assert set(stats) == set(view.feature_names)
    for feature in view.features:
        check(
            stats[feature.name], oracle(columns[feature.name], feature.dtype), run.quantile_rank_error, run.distinct_rsd
        )


def delta_columns(path: Path) -> dict[str, list[Any]]:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table().to_pydict()


@pytest.fixture(scope="module")
def engines_on_one_source(postgres_url: str, spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both engines materialize the same generated source (nulls, NaN, infinities, 1e300, non-ASCII text)."""
    from offline.arrow.engine import ArrowEngine
    from offline.spark.engine import SparkEngine

    rows = generated_rows(3)
    out = {}
    for name, engine in (("arrow", ArrowEngine), ("spark", SparkEngine)):
        root = Path(tmp_path_factory.mktemp(name))
        config, view, store, result = run(lambda c, e=engine: e(c), postgres_url, root, rows)
        out[name] = (view, result, delta_columns(table_path(config, view)), store.live(view.name).to_pydict())
    return out


@pytest.mark.parametrize("engine", ["arrow", "spark"])
def test_statistics_of_the_rows_written_and_published_equal_the_oracle(
    engines_on_one_source: dict[str, Any], engine: str
) -> None:
    view, result, written, published = engines_on_one_source[engine]
    stats = result.stats
    assert stats.engine == engine
    assert (stats.quantile_rank_error, stats.distinct_rsd) == ((0.0, 0.0) if engine == "arrow" else (1e-4, 0.0))
    assert len(written["user_id"]) == result.rows_written_offline  # the first run wrote every row of the table
    check_all(stats.written, written, view, stats)
    assert stats.published is not None
    check_all(stats.published, published, view, stats)
    assert RunStats.from_json(stats.to_json()) == stats  # what the registry stores reads back the same


def test_spark_and_arrow_agree_within_the_stated_bounds(engines_on_one_source: dict[str, Any]) -> None:
    (_, arrow, _, _), (_, spark, _, _) = engines_on_one_source["arrow"], engines_on_one_source["spark"]
    for side in ("written", "published"):
        exact, approximate = getattr(arrow.stats, side), getattr(spark.stats, side)
        for name, a in exact.items():
            s = approximate[name]
            same = ("count", "nulls", "nan", "pos_inf", "neg_inf", "min", "max", "top", "distinct")
            assert [getattr(s, f) for f in same] == [getattr(a, f) for f in same], name
            for moment in ("mean", "stddev"):
                x, y = getattr(a, moment), getattr(s, moment)
                assert (x is None and y is None) or math.isclose(x, y, rel_tol=1e-9), (name, moment, x, y)
            assert a.quantiles.keys() == s.quantiles.keys()


BASE = datetime(2024, 3, 1)


def test_single_row_all_null_and_empty_runs(offline_engine: Any, postgres_url: str, tmp_path: Path, spark: Any) -> None:
    """One row whose amount is null: one value, all-null floats, no stddev; the same window again writes and
    publishes nothing: every count 0, nothing else."""
    row = (1, "Shop", None, 3, BASE, None)
    config, view, store, result = run(offline_engine, postgres_url, tmp_path, [row])
    written = result.stats.written
    assert written["amount_x2"] == FeatureStats("float64", 1, 1)  # an all-null column: count and nulls only
    assert written["total"] == FeatureStats("float64", 1, 1)
    units = written["units"]
    assert (units.count, units.nulls, units.min, units.max, units.mean, units.stddev) == (1, 0, 3, 3, 3.0, None)
    assert units.quantiles == {name: 3 for name, _ in QUANTILES}
    assert written["merchant_lc"] == FeatureStats("string", 1, 0, top=(("shop", 1),), distinct=1)
    assert written["bulk"] == FeatureStats("bool", 1, 0, top=((True, 1),), distinct=1)
    assert result.stats.published == written

    engine = offline_engine(config)
    again = engine.materialize(Materialization(make_plan(view), view, None, None), store, None)
    assert again.rows_written_offline == 0 and again.online_current
    for feature in view.features:
        empty = again.stats.written[feature.name]
        assert (empty.count, empty.nulls, empty.min, empty.mean, empty.quantiles, empty.top) == (
            0,
            0,
            None,
            None,
            {},
            (),
        )
        assert empty.distinct == (0 if feature.dtype in (DType.STRING, DType.BOOL) else None)
    assert again.stats.published is None  # the online store already served the version: nothing published
    assert RunStats.from_json(again.stats.to_json()) == again.stats


def test_spark_counts_more_distinct_values_than_it_keeps_top_values(spark: Any) -> None:
    """The distinct count comes from the grouping that ranks the top values: it counts every value, not only the
    :data:`TOP_VALUES` kept (a limit of each column's groups to the top ranks would cap it). Oracle: Python's
    sets and Counter over the same values."""
    from offline.spark.stats import spark_stats

    texts = [None if i % 11 == 0 else f"v{i % 437}" for i in range(5_000)]
    flags = [None if i % 13 == 0 else i % 3 == 0 for i in range(5_000)]
    frame = spark.createDataFrame(list(zip(texts, flags, strict=True)), "s string, b boolean")
    stats = spark_stats(frame, [("s", DType.STRING), ("b", DType.BOOL)])
    for name, values in (("s", texts), ("b", flags)):
        present = [v for v in values if v is not None]
        counted = sorted(Counter(present).items(), key=lambda item: (-item[1], item[0]))[:TOP_VALUES]
        assert stats[name].distinct == len(set(present)) and stats[name].top == tuple(counted), name
        assert (stats[name].count, stats[name].nulls) == (len(values), len(values) - len(present))
