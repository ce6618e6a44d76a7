"""A Spark run that creates a table (offline/spark/first_write.py), on real Spark and Delta: the entities Spark's
grouping sees (float keys), and what a failure leaves (nothing), each against plain Python."""

from __future__ import annotations

import logging
import math
import uuid
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


# -- a first run that reads its PostgreSQL source in the tasks (first_write.source_slices) -------------------------


def _pg_table(url: str, key_type: str, keys: list[Any]) -> str:
    import psycopg

    table = f"slices_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k {key_type}, n BIGINT, ts TIMESTAMP)")
        with conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", [(k, n, BASE) for n, k in enumerate(keys)])
    return table


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("dtype", "key_type", "keys"),
    [
        # ids sharing a stride of 4, negatives, the extremes of int64, and no key
        (DType.INT64, "BIGINT", [4 * i for i in range(50)] + [-7, -1009, 2**63 - 1, -(2**63), None, None, 13, 13]),
        (DType.STRING, "TEXT", ["", "a", "A", "ß", "日本", "x" * 300, None, "a", *(f"user-{i}" for i in range(40))]),
    ],
)
def test_entity_slices_split_a_source_into_disjoint_entities(
    postgres_url: str, dtype: DType, key_type: str, keys: list[Any]
) -> None:
    from offline import adbc_source

    table = _pg_table(postgres_url, key_type, keys)
    view = make_view(
        "sliced",
        connection="shop",
        table=table,
        keys={"k": dtype},
        columns={"n": DType.INT64, "ts": DType.TIMESTAMP},
        features={"n": "n"},
    )
    uri = adbc_source.libpq_uri(postgres_url)
    count = 7 if dtype is DType.STRING else 4  # any count splits alike
    slices = [
        adbc_source.read_source(view.source, uri, None, None, where=adbc_source.entity_slice("k", dtype, i, count))
        for i in range(count)
    ]
    read = [sorted(zip(s.column("k").to_pylist(), s.column("n").to_pylist(), strict=True), key=repr) for s in slices]
    # Every row in exactly one slice (plain Python: the rows inserted), one entity's rows in one slice, no key in 0.
    assert sorted((row for rows in read for row in rows), key=repr) == sorted(
        ((k, n) for n, k in enumerate(keys)), key=repr
    )
    owners: dict[Any, set[int]] = {}
    for index, rows in enumerate(read):
        for key, _ in rows:
            owners.setdefault(key, set()).add(index)
    assert all(len(slices_of) == 1 for slices_of in owners.values())
    assert owners[None] == {0}
    assert all(rows for rows in read)  # even ids in a stride of 4 spread over every slice


@pytest.mark.postgres
def test_a_first_run_reads_a_postgres_source_in_its_tasks_and_records_its_cursor(
    spark: Any, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tasks' read (integer key) and Spark's JDBC read (a float key, which does not split in SQL) create the
    table plain Python expects, and both record the latest event time read as the next run's cursor."""
    import dataclasses

    from features.config import RepoConfig
    from features.plan import ColumnSpec
    from offline import incremental
    from offline.spark.materialize import materialize
    from offline.tables import table_path
    from tests.offline.support import FileOnlineStore, make_plan
    from tests.offline.test_arrow_materialize import pg_view, write_pg_source
    from tests.offline.test_materialize import delta_rows, expected_table, source_rows

    table = f"first_{uuid.uuid4().hex[:8]}"
    rows = source_rows()
    write_pg_source(postgres_url, table, rows)
    by_int = pg_view(table, "sliced_txn")
    by_float = dataclasses.replace(pg_view(table, "jdbc_txn"), join_keys=(ColumnSpec("user_id", DType.FLOAT64),))
    latest_event = max(r[4] for r in rows if r[4] is not None)
    for view, read_by in ((by_int, "4 task(s) read the source with ADBC"), (by_float, "Spark's JDBC read reads")):
        config = RepoConfig(root=tmp_path / view.name, connections={"shop": postgres_url})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="offline.spark.materialize"):
            result = materialize(
                spark, config, make_plan(view), view, start=None, end=None, online=FileOnlineStore(tmp_path / "o")
            )
        assert read_by in caplog.text
        assert result.rows_read == len(rows)
        path = table_path(config, view)
        assert delta_rows(spark, path) == expected_table(rows, None, None)
        assert incremental.read_cursor(path) == latest_event.replace(tzinfo=UTC)


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["spark", "arrow"])
def test_a_later_run_removes_staged_rows_a_killed_first_run_left(
    spark: Any, postgres_url: str, tmp_path: Path, engine: str
) -> None:
    """Staged latest rows older than an hour are a dead process's (a run still publishing staged them since):
    the next run of the table removes them, in either engine, and leaves younger ones and the table alone."""
    import os
    import time

    from features.config import RepoConfig
    from offline.arrow.materialize import materialize as arrow_materialize
    from offline.spark.materialize import materialize as spark_materialize
    from offline.tables import ABANDONED_AFTER_SECONDS, table_path
    from tests.offline.support import FileOnlineStore, make_plan
    from tests.offline.test_arrow_materialize import pg_view, write_pg_source
    from tests.offline.test_materialize import delta_rows, expected_table, source_rows

    table = f"staged_{uuid.uuid4().hex[:8]}"
    write_pg_source(postgres_url, table, source_rows())
    view = pg_view(table, "staged_txn")
    config = RepoConfig(root=tmp_path, connections={"shop": postgres_url})
    store = FileOnlineStore(tmp_path / "online")

    def run() -> None:
        if engine == "spark":
            spark_materialize(spark, config, make_plan(view), view, start=None, end=None, online=store)
        else:
            arrow_materialize(config, view, start=None, end=None, online=store)

    run()
    path = table_path(config, view)
    abandoned, recent = path / f"{LATEST_DIR_PREFIX}dead", path / f"{LATEST_DIR_PREFIX}busy"
    for staged in (abandoned, recent):
        staged.mkdir()
        (staged / "rows.parquet").write_bytes(b"x")
    old = time.time() - ABANDONED_AFTER_SECONDS - 60
    os.utime(abandoned, (old, old))
    run()
    assert not abandoned.exists() and recent.exists()
    assert delta_rows(spark, path) == expected_table(source_rows(), None, None)


@pytest.mark.postgres
def test_the_slices_grow_with_the_estimated_rows_of_a_table(
    spark: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's estimate (after ANALYZE) is the table's row count here; none before, none for a query; the
    slices: the configured count, or enough for SLICE_VALUES values each (plain arithmetic)."""
    import dataclasses

    import psycopg

    from offline import adbc_source
    from offline.spark import first_write
    from offline.spark.first_write import SLICE_VALUES, slice_count

    keys = list(range(3_000))
    table = _pg_table(postgres_url, "BIGINT", keys)
    view = make_view(
        "sized",
        connection="shop",
        table=table,
        keys={"k": DType.INT64},
        columns={"n": DType.INT64, "ts": DType.TIMESTAMP},
        features={"n": "n", "n2": "n * 2"},
    )
    uri = adbc_source.libpq_uri(postgres_url)
    assert adbc_source.estimated_rows(view.source, uri) is None  # never analyzed
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ANALYZE {table}")
    assert adbc_source.estimated_rows(view.source, uri) == len(keys)
    as_query = dataclasses.replace(view.source, table=None, query=f"SELECT * FROM {table}")
    assert adbc_source.estimated_rows(as_query, uri) is None
    columns = 1 + 2 + 2  # key, two features, event and created time
    assert slice_count(view, 4, None) == 4
    assert slice_count(view, 4, 1_000) == 4
    rows = 100 * SLICE_VALUES // columns + 1  # just over 100 slices' worth
    assert slice_count(view, 4, rows) == 101
    # A run asks the estimate: 3,000 rows of 5 columns over 1,000 values a slice are 15 slices.
    monkeypatch.setattr(first_write, "SLICE_VALUES", 1_000)
    slices = first_write.source_slices(spark, postgres_url, view, None, None)
    assert isinstance(slices, first_write.SourceSlices) and slices.count == 15
