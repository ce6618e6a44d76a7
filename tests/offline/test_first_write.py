"""A Spark run that creates a table (offline/spark/first_write.py), on real Spark and Delta: the entities Spark's
grouping sees (float keys), and what a failure leaves (nothing), each against plain Python."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from features.dtypes import DType
from features.errors import ChecksFailedError, CommitConflictError
from offline import delta_rs
from offline.spark.first_write import LATEST_DIR_PREFIX, create_table
from offline.spark.tables import read_table
from offline.tables import table_arrow_schema
from tests.offline.support import make_view

BASE = datetime(2024, 5, 1)
VIEW = make_view(
    "floaty",
    connection="shop",
    table="t",
    keys={"k": DType.FLOAT64},
    columns={"v": DType.FLOAT64, "ts": DType.TIMESTAMP},
    features={"v2": "v * 2"},
)


def _rows() -> list[tuple[Any, ...]]:
    """(k, v2, event time, created time): -0.0 and 0.0, and NaNs, are one entity each for Spark's grouping."""
    rows: list[tuple[Any, ...]] = []
    for i in range(40):
        key = [0.0, -0.0, math.nan, 1.5, None][i % 5]
        rows.append((key, float(40 - i), BASE + timedelta(hours=i // 10), None))
    rows.append((2.5, 1.0, None, None))  # no event time: dropped
    return rows


def _spark_key(key: float | None) -> Any:
    """A key as Spark's grouping compares it."""
    if key is None:
        return None
    return "nan" if math.isnan(key) else (0.0 if key == 0 else key)


def _expected(rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """One row per (key, event, created): the one with the smallest feature value (plain Python)."""
    kept: dict[tuple[Any, ...], float] = {}
    for key, value, ts, created in rows:
        if key is None or ts is None:
            continue
        identity = (_spark_key(key), ts, created)
        kept[identity] = min(value, kept.get(identity, math.inf))
    return {(k, v, ts, created) for (k, ts, created), v in kept.items()}


def _computed(spark: Any, rows: list[tuple[Any, ...]]) -> Any:
    return spark.createDataFrame(
        rows, "k double, v2 double, event_timestamp timestamp, created_timestamp timestamp"
    ).repartition(3)


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


@pytest.mark.spark
def test_float_keys_group_as_in_spark_and_the_table_holds_one_row_each(spark: Any, tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "table"
    created = create_table(spark, path, VIEW, _computed(spark, rows), datetime.now(UTC))
    stored = {
        (_spark_key(r["k"]), r["v2"], r["event_timestamp"], r["created_timestamp"])
        for r in read_table(spark, path).collect()
    }
    assert stored == _expected(rows)
    assert created.counts.read == len(rows) and created.counts.null_keys_or_time == 9
    assert created.counts.kept == len(_expected(rows))
    assert sum(1 for _ in read_table(spark, path).collect()) == created.counts.kept
    # The staged latest rows: one per entity, its latest event time.
    latest = spark.read.parquet(*created.latest_files).collect()
    assert sorted((_spark_key(r["k"]) for r in latest), key=str) == sorted([0.0, "nan", 1.5], key=str)
    assert all(r["event_timestamp"] == BASE + timedelta(hours=3) for r in latest)
    created.discard()
    assert not any(name.startswith(LATEST_DIR_PREFIX) for name in _leftovers(path))


@pytest.mark.spark
def test_a_failing_check_leaves_no_table_and_no_file(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "table"

    def refuse(*_: Any) -> None:
        raise ChecksFailedError("a check failed", {})

    with pytest.raises(ChecksFailedError):
        create_table(spark, path, VIEW, _computed(spark, _rows()), datetime.now(UTC), before_commit=refuse)
    assert delta_rs.latest_version(path) is None
    assert _leftovers(path) == []


@pytest.mark.spark
def test_a_concurrent_creator_wins_and_this_run_removes_its_files(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "table"

    def create_first(*_: Any) -> None:  # another writer creates the table while this run checks its rows
        delta_rs.create(path, table_arrow_schema(VIEW).empty_table(), configuration={})

    with pytest.raises(CommitConflictError):
        create_table(spark, path, VIEW, _computed(spark, _rows()), datetime.now(UTC), before_commit=create_first)
    assert delta_rs.latest_version(path) == 0
    assert _leftovers(path) == ["_delta_log"]  # the other writer's table, and nothing of this run


@pytest.mark.spark
def test_a_task_that_fails_leaves_no_file_of_the_tasks_that_wrote(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "table"
    # One entity's value cannot be stored as the view's float feature: its task fails, the others write first.
    rows = [(float(i % 8), "1.5" if i != 5 else "not a number", BASE + timedelta(hours=i), None) for i in range(64)]
    computed = spark.createDataFrame(
        rows, "k double, v2 string, event_timestamp timestamp, created_timestamp timestamp"
    ).repartition(1)
    with pytest.raises(Exception, match=r"not a number|Failed to parse"):
        create_table(spark, path, VIEW, computed, datetime.now(UTC))
    assert delta_rs.latest_version(path) is None
    assert _leftovers(path) == []
