"""Materialization in Arrow (offline/arrow/materialize.py) from a real PostgreSQL into real Delta tables,
against the plain-Python oracle of test_materialize.py and against Spark's materialization of the same rows."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from features.config import RepoConfig
from features.dtypes import DType
from features.errors import CommitConflictError, MaterializationError
from features.plan import ColumnSpec, ViewPlan
from offline import delta_rs
from offline.arrow import materialize as arrow_materialize
from offline.arrow.engine import ArrowEngine
from offline.delta_rs import read_snapshot
from offline.jobs import Materialization
from offline.router import Router
from offline.spark.materialize import materialize as spark_materialize
from offline.spark.tables import read_table, table_version
from offline.tables import table_path
from tests.offline.support import FileOnlineStore, make_plan
from tests.offline.test_materialize import (
    BASE,
    END,
    Recorder,
    Row,
    delta_rows,
    expected_latest,
    expected_table,
    live_rows,
    source_rows,
    the_view,
)

pytestmark = [pytest.mark.postgres, pytest.mark.spark]
SPLIT = BASE + timedelta(days=1)  # source_rows() has rows on both sides


def write_pg_source(url: str, table: str, rows: list[Row]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (user_id BIGINT, merchant TEXT, amount DOUBLE PRECISION, qty INTEGER, "
            "ts TIMESTAMP, created TIMESTAMP)"
        )
        with conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)", rows)


def pg_view(table: str, name: str = "user_txn") -> ViewPlan:
    """test_materialize's view (amount * 2, amount * qty, lower(merchant), qty > 2) over a PostgreSQL table."""
    return the_view(name, table)


def repo(root: Path, postgres_url: str, **settings: Any) -> RepoConfig:
    return RepoConfig(root=root, connections={"shop": postgres_url}, **settings)


def in_arrow(config: RepoConfig, view: ViewPlan, store: Any, start: Any = None, end: Any = None, **kw: Any) -> Any:
    return arrow_materialize.materialize(config, view, start=start, end=end, online=store, **kw)


@pytest.fixture(scope="module")
def both(spark: Any, postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same source materialized in two windows by Arrow (repository a) and by Spark (repository b)."""
    table = f"txns_{uuid.uuid4().hex[:8]}"
    write_pg_source(postgres_url, table, source_rows())
    view = pg_view(table)
    out: dict[str, Any] = {"view": view}
    for side in ("arrow", "spark"):
        config = repo(Path(tmp_path_factory.mktemp(side)), postgres_url)
        store = FileOnlineStore(config.root / "online")
        runs = []
        for start, end in ((BASE, SPLIT), (SPLIT, END)):
            if side == "arrow":
                runs.append(in_arrow(config, view, store, start, end))
            else:
                runs.append(spark_materialize(spark, config, make_plan(view), view, start=start, end=end, online=store))
            if not out.get(f"{side}_first"):
                out[f"{side}_first"] = delta_rows(spark, table_path(config, view))
        out[side] = {"config": config, "store": store, "runs": runs, "path": table_path(config, view)}
    return out


def test_arrow_writes_the_table_plain_python_expects_and_spark_writes(spark: Any, both: dict[str, Any]) -> None:
    rows = source_rows()
    arrow, by_spark = both["arrow"], both["spark"]
    assert [r.engine for r in arrow["runs"]] == ["arrow", "arrow"]
    assert both["arrow_first"] == expected_table(rows, BASE, SPLIT) == both["spark_first"]
    assert delta_rows(spark, arrow["path"]) == expected_table(rows, None, None) == delta_rows(spark, by_spark["path"])
    assert [r.offline_version for r in arrow["runs"]] == [0, 1]
    assert table_version(spark, arrow["path"]) == 1
    assert [r.rows_read for r in arrow["runs"]] == [r.rows_read for r in by_spark["runs"]]
    assert [r.rows_written_offline for r in arrow["runs"]] == [r.rows_written_offline for r in by_spark["runs"]]
    # Spark reads the Arrow table with the same schema, and filters on its statistics to the same rows.
    assert read_table(spark, arrow["path"]).schema == read_table(spark, by_spark["path"]).schema
    expected = expected_table(rows, None, None)
    for condition, keep in (
        ("event_timestamp >= '2024-05-02 10:00:00'", lambda r: r[5] >= datetime(2024, 5, 2, 10)),
        ("user_id >= 3", lambda r: r[0] >= 3),
    ):
        counts = [read_table(spark, p).where(condition).count() for p in (arrow["path"], by_spark["path"])]
        assert counts == [sum(1 for r in expected if keep(r))] * 2


def test_arrow_publishes_the_latest_row_per_entity(both: dict[str, Any]) -> None:
    arrow = both["arrow"]
    expected = expected_latest(expected_table(source_rows(), None, None))
    assert live_rows(arrow["store"], "user_txn") == expected == live_rows(both["spark"]["store"], "user_txn")
    first, second = arrow["runs"]
    assert first.online_committed and first.rows_published == len(
        {r[0] for r in expected_table(source_rows(), BASE, SPLIT)}
    )
    assert second.online_committed  # the second window added rows: version 1 is published


def test_the_log_and_files_are_what_spark_writes(both: dict[str, Any]) -> None:
    """Read with json and pyarrow: protocol, properties and statistics as Spark's own commit of the same table."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def actions(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (path / "_delta_log" / f"{0:020d}.json").read_text().splitlines()]

    ours, theirs = actions(both["arrow"]["path"]), actions(both["spark"]["path"])
    for kind in ("protocol", "metaData"):
        mine, spark_s = next(a[kind] for a in ours if kind in a), next(a[kind] for a in theirs if kind in a)
        for field in ("minReaderVersion", "minWriterVersion", "schemaString", "configuration", "partitionColumns"):
            assert mine.get(field) == spark_s.get(field), field
    (add,) = [a["add"] for a in ours if "add" in a]
    stats = json.loads(add["stats"])
    table = pq.read_table(both["arrow"]["path"] / add["path"])
    assert stats["numRecords"] == table.num_rows
    assert stats["minValues"]["user_id"] == pc.min(table.column("user_id")).as_py()
    assert stats["maxValues"]["user_id"] == pc.max(table.column("user_id")).as_py()
    latest = pc.max(table.column("event_timestamp")).as_py()
    # The same instant (delta-rs leaves out a zero fraction, Spark writes ".000"; Spark's reader parses both).
    assert datetime.fromisoformat(stats["maxValues"]["event_timestamp"]) == latest.replace(
        microsecond=latest.microsecond // 1000 * 1000
    )
    assert stats["nullCount"]["created_timestamp"] == table.column("created_timestamp").null_count > 0


def test_the_arrow_join_reader_reads_the_arrow_table(spark: Any, both: dict[str, Any]) -> None:
    path = both["arrow"]["path"]
    columns = ["user_id", "amount_x2", "total", "merchant_lc", "bulk", "event_timestamp", "created_timestamp"]
    table = read_snapshot(delta_rs.snapshot(path, 1), columns)
    naive = {
        tuple(v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in r.values()) for r in table.to_pylist()
    }
    assert naive == delta_rows(spark, path)


def test_a_rerun_commits_nothing_and_republish_publishes_again(spark: Any, both: dict[str, Any]) -> None:
    arrow, view = both["arrow"], both["view"]
    before = {tuple(r) for r in read_table(spark, arrow["path"]).collect()}
    again = in_arrow(arrow["config"], view, arrow["store"])
    assert (again.rows_written_offline, again.offline_version, again.rows_published) == (0, 1, 0)
    assert again.online_current and again.engine == "arrow"
    republished = in_arrow(arrow["config"], view, arrow["store"], republish=True)
    assert republished.rows_published == len(expected_latest(expected_table(source_rows(), None, None)))
    assert {tuple(r) for r in read_table(spark, arrow["path"]).collect()} == before  # published_at included


def test_duplicates_keep_the_row_spark_keeps(spark: Any, postgres_url: str, tmp_path: Path) -> None:
    """Rows sharing keys, event and created time: nulls sort first, NaN after every number (Spark's order)."""
    ts = BASE + timedelta(hours=1)
    rows: list[Row] = [
        (1, "b", math.nan, 1, ts, None),
        (1, "b", 2.0, 1, ts, None),
        (1, "a", math.nan, 1, ts, None),
        (2, "x", math.nan, 1, ts, ts),
        (2, "x", 5.0, 1, ts, ts),
        (3, "y", None, 5, ts, ts),
        (3, "y", 1.0, 5, ts, ts),
    ]
    table = f"dups_{uuid.uuid4().hex[:8]}"
    write_pg_source(postgres_url, table, rows)
    view = pg_view(table, "dup_txn")
    arrow_config, spark_config = repo(tmp_path / "a", postgres_url), repo(tmp_path / "s", postgres_url)
    result = in_arrow(arrow_config, view, None)
    assert result.engine == "arrow" and result.rows_written_offline == 3
    spark_materialize(spark, spark_config, make_plan(view), view, start=None, end=None, online=None)
    # The features in plan order: amount_x2 (amount * 2) decides first. 2.0*2 < NaN; 5.0*2 < NaN; null < 2.0.
    kept = {r[0]: r for r in delta_rows(spark, table_path(arrow_config, view))}
    assert kept[1][1] == 4.0 and kept[2][1] == 10.0 and kept[3][1] is None
    by_spark = {r[0]: r for r in delta_rows(spark, table_path(spark_config, view))}
    assert {k: r[1:4] for k, r in kept.items()} == {k: r[1:4] for k, r in by_spark.items()}


def test_a_source_that_changed_stored_values_is_merged_in_arrow_as_spark_merges(
    spark: Any, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = source_rows()
    table = f"upd_{uuid.uuid4().hex[:8]}"
    write_pg_source(postgres_url, table, rows)
    view = pg_view(table, "upd_txn")
    config = repo(tmp_path, postgres_url)
    store = FileOnlineStore(tmp_path / "online")
    engine = Router(config, in_process=True)
    assert engine.materialize(make_plan(view), view, start=None, end=None, online=store).engine == "arrow"
    # User 4's latest amount is restated, and a new row arrives.
    latest4 = max((r for r in rows if r[0] == 4 and r[4] is not None), key=lambda r: (r[4], r[5] or datetime.min))
    rows = [(*r[:2], 77.0, *r[3:]) if r == latest4 else r for r in rows]
    rows.append((1, "Late", 100.0, 3, BASE + timedelta(days=5), None))
    write_pg_source(postgres_url, table, rows)
    with caplog.at_level(logging.INFO, logger="offline"):
        result = engine.materialize(make_plan(view), view, start=None, end=None, online=store)
    assert "1 row(s) inserted and 1 updated" in caplog.text
    assert result.engine == "arrow" and result.rows_written_offline == 2
    assert delta_rows(spark, table_path(config, view)) == expected_table(rows, None, None)
    assert live_rows(store, "upd_txn") == expected_latest(expected_table(rows, None, None))
    # A MERGE, as Spark's: Spark reads both versions.
    assert read_table(spark, table_path(config, view), 0).count() == len(expected_table(source_rows(), None, None))
    (first_published,) = {r["published_at"] for r in read_table(spark, table_path(config, view), 0).collect()}
    moved = [
        r for r in read_table(spark, table_path(config, view), 1).collect() if r["published_at"] != first_published
    ]
    # The restated row and the new one were published by this run; the rewritten file's other rows keep their
    # published_at, as Spark's MERGE keeps it.
    assert sorted((r["user_id"], r["event_timestamp"]) for r in moved) == sorted(
        [(4, latest4[4]), (1, BASE + timedelta(days=5))]
    )
    # Spark MERGEs into the table Arrow merged, and Arrow appends after Spark's commit.
    rows.append((3, "Spark", 5.0, 2, BASE + timedelta(days=5, hours=2), None))
    write_pg_source(postgres_url, table, rows)
    by_spark = engine.materialize(make_plan(view), view, start=None, end=None, online=store, engine="spark")
    assert (by_spark.engine, by_spark.rows_written_offline) == ("spark", 1)
    assert delta_rows(spark, table_path(config, view)) == expected_table(rows, None, None)
    # After the watermark Spark's run recorded (its latest row, 2h): a row before it would be a late row, not read
    # without a lookback (late_rows).
    rows.append((2, "Later", 1.0, 1, BASE + timedelta(days=5, hours=3), None))
    write_pg_source(postgres_url, table, rows)
    after = engine.materialize(make_plan(view), view, start=None, end=None, online=store)
    assert (after.engine, after.rows_written_offline) == ("arrow", 1)
    assert delta_rows(spark, table_path(config, view)) == expected_table(rows, None, None)
    assert live_rows(store, "upd_txn") == expected_latest(expected_table(rows, None, None))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("sqlite source", "only PostgreSQL sources are read in Arrow"),
        ("over the row limit", "more than 5 (offline.arrow_materialize_max_rows)"),
        ("limit 0", "offline.arrow_materialize_max_rows is 0"),
        ("numeric column", "column 'amount' arrives as extension<arrow.opaque"),
    ],
)
def test_runs_arrow_leaves_to_spark_say_why_and_write_nothing(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, reason: str
) -> None:
    import psycopg

    table = f"left_{uuid.uuid4().hex[:8]}"
    write_pg_source(postgres_url, table, source_rows())
    view = pg_view(table, "left_txn")
    settings: dict[str, Any] = {
        "over the row limit": {"arrow_materialize_max_rows": 5},
        "limit 0": {"arrow_materialize_max_rows": 0},
    }.get(case, {})
    config = repo(tmp_path, postgres_url, **settings)
    if case == "sqlite source":
        config = dataclasses.replace(config, connections={"shop": "sqlite:///shop.db"})
    if case == "numeric column":
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN amount TYPE NUMERIC(12, 2)")
    refusal = ArrowEngine(config).refusal(Materialization(make_plan(view), view, None, None))
    assert refusal is not None and reason in refusal
    with caplog.at_level(logging.INFO, logger="offline.router"):
        router = Router(config, in_process=True)
        assert router.route(Materialization(make_plan(view), view, None, None))[0].name == "spark"
    assert f"view 'left_txn': runs in spark (not arrow: {refusal})" in caplog.text
    assert not table_path(config, view).exists()


def test_windowed_and_float_keyed_views_are_left_to_spark(tmp_path: Path, postgres_url: str) -> None:
    config = repo(tmp_path, postgres_url)
    windowed = dataclasses.replace(pg_view("never_read", "win_txn"), cadence_seconds=3600)
    assert arrow_materialize._problem(config, windowed) == "its aggregations are computed only in Spark"
    view = pg_view("never_read", "float_txn")
    float_keyed = dataclasses.replace(view, join_keys=(ColumnSpec("user_id", DType.FLOAT64),))
    assert "keyed by a float" in str(arrow_materialize._problem(config, float_keyed))
    assert arrow_materialize._problem(config, view) is None


def test_a_concurrent_commit_fails_the_run_and_changes_nothing(
    spark: Any, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = f"race_{uuid.uuid4().hex[:8]}"
    rows = source_rows()
    write_pg_source(postgres_url, table, rows)
    view = pg_view(table, "race_txn")
    config = repo(tmp_path, postgres_url)
    store = FileOnlineStore(tmp_path / "online")
    in_arrow(config, view, store, BASE, SPLIT)
    path = table_path(config, view)
    live_before = live_rows(store, "race_txn")
    append = delta_rs.append

    def spark_commits_first(snapshot: Any, data: Any, **options: Any) -> int:
        # Another writer (Spark, appending one more row) commits the version this run computed against.
        read_table(spark, path).limit(1).write.format("delta").mode("append").save(str(path))
        return append(snapshot, data, **options)

    monkeypatch.setattr(delta_rs, "append", spark_commits_first)
    with pytest.raises(MaterializationError) as info:
        in_arrow(config, view, store, SPLIT, END)
    assert str(info.value) == (
        "view 'race_txn': another run committed to its table at the same time; nothing of this run was written; "
        "run again"
    )
    assert isinstance(info.value.__cause__, CommitConflictError)  # delta-rs's refusal, kept for the details
    assert live_rows(store, "race_txn") == live_before
    assert table_version(spark, path) == 1  # Spark's commit, and nothing of this run
    assert delta_rows(spark, path) == expected_table(rows, BASE, SPLIT)
    monkeypatch.undo()
    again = in_arrow(config, view, store, SPLIT, END)  # the rerun the error asks for
    assert (again.offline_version, again.engine) == (2, "arrow")
    assert delta_rows(spark, path) == expected_table(rows, None, None)


def test_progress_shows_each_phase_with_its_own_count(postgres_url: str, tmp_path: Path) -> None:
    """Rows read and keys published are separate bars; the publishing bar has its total up front (an ETA)."""
    table = f"txns_{uuid.uuid4().hex[:8]}"
    rows = source_rows()
    write_pg_source(postgres_url, table, rows)
    config = repo(tmp_path, postgres_url)
    recorder = Recorder()
    result = in_arrow(config, pg_view(table), FileOnlineStore(tmp_path / "online"), progress=recorder)
    reading, publishing = "user_txn: source rows read", "user_txn: keys published"
    assert {task for _, task, _ in recorder.calls} == {reading, publishing}
    users = {r[0] for r in expected_table(rows, None, None)}  # oracle: one key per user with a valid row
    assert ("start", publishing, len(users)) in recorder.calls
    advanced = {
        t: sum(n for kind, task, n in recorder.calls if kind == "advance" and task == t) for t in (reading, publishing)
    }
    assert advanced == {reading: result.rows_read, publishing: len(users)} and result.rows_published == len(users)
    assert result.rows_read == len(rows)
    assert [c for c in recorder.calls if c[0] == "finish"] == [("finish", reading, None), ("finish", publishing, None)]
