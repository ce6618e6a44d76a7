"""Materialization from a SQLite source into Delta and a file-backed online store, against plain Python."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from features.config import RepoConfig
from features.dtypes import DType
from features.errors import MaterializationError, SchemaMismatchError
from features.plan import ViewPlan
from features.protocols import LiveSnapshot
from offline.publication import already_live
from offline.spark import tables as spark_tables
from offline.spark.materialize import materialize
from offline.spark.tables import read_table, table_version
from offline.tables import commit_time, table_path
from tests.offline.support import FileOnlineStore, make_plan, make_view

BASE = datetime(2024, 5, 1)
MID = BASE + timedelta(days=3)
END = BASE + timedelta(days=6)
Row = tuple[Any, ...]  # (user_id, merchant, amount, qty, ts, created)


def source_rows() -> list[Row]:
    rows: list[Row] = []
    for i in range(60):
        user = 1 + i % 5
        ts = BASE + timedelta(hours=2 * (i // 2))  # pairs of rows share an event time (ties)
        created = None if i % 4 == 0 else ts + timedelta(minutes=i)
        rows.append((user, ["Shop", "CAFE", None][i % 3], round(1.5 * i, 2) if i % 7 else None, i % 4, ts, created))
    rows.append((2, "dup", 1.0, 1, BASE + timedelta(hours=5), None))  # duplicates of one key, other values
    rows.append((2, "dup", 9.0, 1, BASE + timedelta(hours=5), None))
    rows.append((None, "nokey", 1.0, 1, BASE + timedelta(hours=7), None))
    rows.append((3, "notime", 1.0, 1, None, None))
    return rows


def features_of(row: Row) -> tuple[Any, ...]:
    """The view's features in plain Python: amount * 2, amount * qty, lower(merchant), qty > 2."""
    _, merchant, amount, qty, _, _ = row
    return (
        None if amount is None else amount * 2,
        None if amount is None else amount * qty,
        None if merchant is None else merchant.lower(),
        qty > 2,
    )


def expected_table(rows: list[Row], start: datetime | None, end: datetime | None) -> set[Row]:
    """Rows (keys, features, event, created) the Delta table should hold; duplicates keep the smallest features."""
    kept: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        user, ts, created = row[0], row[4], row[5]
        if user is None or ts is None or (start and ts < start) or (end and ts >= end):
            continue
        feats = features_of(row)
        key = (user, ts, created)
        if key not in kept or _sort_key(feats) < _sort_key(kept[key]):
            kept[key] = feats
    return {(k[0], *f, k[1], k[2]) for k, f in kept.items()}


def _sort_key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is not None, v) for v in values)


def expected_latest(table: set[Row]) -> set[Row]:
    latest: dict[Any, Row] = {}
    for row in table:
        rank = (row[5], row[6] or datetime.min)
        if row[0] not in latest or rank > (latest[row[0]][5], latest[row[0]][6] or datetime.min):
            latest[row[0]] = row
    return set(latest.values())


def write_source(path: Path, rows: list[Row], *, amount_type: str = "REAL", with_qty: bool = True) -> None:
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        qty = ", qty INTEGER" if with_qty else ""
        conn.execute(
            f"CREATE TABLE txns (user_id INTEGER, merchant TEXT, amount {amount_type}{qty}, "
            f"ts TIMESTAMP, created TIMESTAMP)"
        )
        text = [
            (u, m, a, q, _text(t), _text(c)) if with_qty else (u, m, a, _text(t), _text(c)) for u, m, a, q, t, c in rows
        ]
        conn.executemany(f"INSERT INTO txns VALUES ({', '.join('?' * len(text[0]))})", text)


def _text(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def the_view(name: str = "user_txn", table: str = "txns") -> ViewPlan:
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
        features={
            "amount_x2": "amount * 2",
            "total": "amount * qty",
            "merchant_lc": "lower(merchant)",
            "bulk": "qty > 2",
        },
        created="created",
        ttl_seconds=86400,
    )


def delta_rows(spark: Any, path: Path, version: int | None = None) -> set[Row]:
    columns = ["user_id", "amount_x2", "total", "merchant_lc", "bulk", "event_timestamp", "created_timestamp"]
    return {tuple(r) for r in read_table(spark, path, version).select(*columns).collect()}


def live_rows(store: FileOnlineStore, view: str) -> set[Row]:
    table = store.live(view)
    if table is None:
        return set()
    # The batches carry UTC-aware timestamps; the oracle uses naive UTC.
    return {
        tuple(v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in r.values()) for r in table.to_pylist()
    }


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def start(self, task: str, total: int | None = None) -> None:
        self.calls.append(("start", task, total))

    def advance(self, task: str, amount: int = 1) -> None:
        self.calls.append(("advance", task, amount))

    def finish(self, task: str) -> None:
        self.calls.append(("finish", task, None))


@pytest.fixture(scope="module")
def world(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = Path(tmp_path_factory.mktemp("repo"))
    write_source(root / "shop.db", source_rows())
    config = RepoConfig(root=root, connections={"shop": "sqlite:///shop.db"})
    view = the_view()
    plan = make_plan(view)
    store = FileOnlineStore(root / "online")
    recorder = Recorder()
    first = materialize(spark, config, plan, view, start=BASE, end=MID, online=store, progress=recorder)
    after_first = delta_rows(spark, table_path(config, view))
    second = materialize(spark, config, plan, view, start=MID, end=END, online=store)
    return {
        "root": root,
        "config": config,
        "view": view,
        "plan": plan,
        "store": store,
        "first": first,
        "second": second,
        "after_first": after_first,
        "recorder": recorder,
    }


@pytest.mark.spark
def test_windows_fill_the_table_as_plain_python_says(spark: Any, world: dict[str, Any]) -> None:
    rows = source_rows()
    assert world["after_first"] == expected_table(rows, BASE, MID)
    path = table_path(world["config"], world["view"])
    assert delta_rows(spark, path) == expected_table(rows, None, None)
    assert world["first"].rows_read == sum(1 for r in rows if r[4] is not None and BASE <= r[4] < MID)
    assert world["second"].offline_version == table_version(spark, path)
    from delta.tables import DeltaTable

    history = {r["version"]: r["operation"] for r in DeltaTable.forPath(spark, str(path)).history().collect()}
    assert world["first"].offline_version == min(history)  # the version the first run created
    assert history[min(history)] == "CREATE TABLE"  # from the files its tasks wrote (offline.spark.first_write)
    schema = read_table(spark, path).schema.names
    assert schema == [
        "user_id",
        "amount_x2",
        "total",
        "merchant_lc",
        "bulk",
        "event_timestamp",
        "created_timestamp",
        "published_at",
    ]
    # One bar per phase: rows read, then keys published (counted when the executors have written them).
    calls, first = world["recorder"].calls, world["first"]
    assert ("advance", "user_txn: source rows read", first.rows_read) in calls
    assert ("advance", "user_txn: keys published", first.rows_published) in calls
    assert calls[-1] == ("finish", "user_txn: keys published", None)


@pytest.mark.spark
def test_online_gets_the_latest_row_per_entity(world: dict[str, Any]) -> None:
    store = world["store"]
    table = store.live("user_txn")
    assert table.column_names == [
        "user_id",
        "amount_x2",
        "total",
        "merchant_lc",
        "bulk",
        "event_timestamp",
        "created_timestamp",
    ]
    assert live_rows(store, "user_txn") == expected_latest(expected_table(source_rows(), None, None))
    assert world["first"].rows_published == 5 and world["first"].online_committed
    # The second window holds no source rows: Delta is unchanged, and so is what the store serves.
    assert world["second"].rows_published == 0 and world["second"].online_current


@pytest.mark.spark
def test_a_first_run_over_an_empty_window_creates_an_empty_table(spark: Any, world: dict[str, Any]) -> None:
    """Its row counts are observed in a shuffle stage that turns out empty; Spark must still report them (when
    it did not, the run waited for them and failed with MaterializationError)."""
    view = dataclasses.replace(world["view"], name="empty_window")
    store = FileOnlineStore(world["root"] / "online-empty")
    result = materialize(spark, world["config"], make_plan(view), view, start=MID, end=END, online=store)
    assert (result.rows_read, result.rows_written_offline, result.rows_published) == (0, 0, 0)
    assert result.offline_version == 0 and delta_rows(spark, table_path(world["config"], view)) == set()


@pytest.mark.spark
def test_rerunning_a_window_changes_nothing(spark: Any, world: dict[str, Any]) -> None:
    path = table_path(world["config"], world["view"])
    version = table_version(spark, path)
    before = {tuple(r) for r in read_table(spark, path).collect()}  # published_at included
    result = materialize(spark, world["config"], world["plan"], world["view"], start=MID, end=END, online=None)
    assert result.rows_written_offline == 0
    assert table_version(spark, path) == version
    assert {tuple(r) for r in read_table(spark, path).collect()} == before


@pytest.mark.spark
def test_tables_hold_int64_timestamps_and_statistics_of_keys_and_times(world: dict[str, Any]) -> None:
    """Read with pyarrow and json, not Spark: the Parquet files hold INT64 microsecond timestamps, and Delta's
    statistics cover the key and the three times."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = table_path(world["config"], world["view"])
    times = ["event_timestamp", "created_timestamp", "published_at"]
    actions = [
        json.loads(line) for f in sorted((path / "_delta_log").glob("*.json")) for line in f.read_text().splitlines()
    ]
    configuration = next(a["metaData"]["configuration"] for a in actions if "metaData" in a)
    assert configuration["delta.dataSkippingStatsColumns"] == ",".join(f"`{c}`" for c in ["user_id", *times])
    added = [a["add"] for a in actions if "add" in a]
    assert added
    for add in added:
        assert set(json.loads(add["stats"])["minValues"]) <= {"user_id", *times}
        file = pq.ParquetFile(path / add["path"])
        arrow = file.schema_arrow
        for name in times:
            assert file.schema.column(file.schema.names.index(name)).physical_type == "INT64"
            assert arrow.field(name).type == pa.timestamp("us", tz="UTC")


@pytest.mark.spark
@pytest.mark.parametrize("change", ["column dropped", "type changed"])
def test_schema_mismatch_stops_before_any_write(spark: Any, world: dict[str, Any], change: str) -> None:
    root: Path = world["root"]
    altered = root / f"altered-{change.replace(' ', '_')}.db"
    write_source(
        altered,
        source_rows(),
        amount_type="REAL" if change == "column dropped" else "TEXT",
        with_qty=change != "column dropped",
    )
    config = RepoConfig(root=root, connections={"shop": f"sqlite:///{altered}"})
    path = table_path(config, world["view"])
    version = table_version(spark, path)
    store = FileOnlineStore(root / "online-mismatch")
    pattern = "missing column\\(s\\) qty" if change == "column dropped" else "'amount': expected float64, found"
    with pytest.raises(SchemaMismatchError, match=pattern):
        materialize(spark, config, world["plan"], world["view"], start=None, end=None, online=store)
    assert table_version(spark, path) == version
    assert store.started == [] and store.live("user_txn") is None


def small_repo(root: Path, name: str, rows: list[Row]) -> tuple[RepoConfig, ViewPlan, Any, FileOnlineStore]:
    """A repository of one view named ``name`` over ``rows`` (SQLite), and an empty file online store."""
    write_source(root / "shop.db", rows)
    view = the_view(name)
    return (
        RepoConfig(root=root, connections={"shop": "sqlite:///shop.db"}),
        view,
        make_plan(view),
        FileOnlineStore(root / "online"),
    )


@pytest.mark.spark
def test_failed_publication_keeps_old_values_and_rerun_completes(
    spark: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = source_rows()
    config, view, plan, store = small_repo(tmp_path, "fail_txn", rows)
    with caplog.at_level(logging.INFO, logger="offline"):
        materialize(spark, config, plan, view, start=None, end=None, online=store)
    assert f"read {len(rows)} source row(s)" in caplog.text
    assert "dropped 2 source row(s) with a null join key or event time" in caplog.text
    assert "dropped 1 duplicate source row(s)" in caplog.text
    old_live = live_rows(store, "fail_txn")
    assert old_live == expected_latest(expected_table(rows, None, None))

    # New and corrected data: a later event for user 1, and user 4's latest amount restated.
    later = BASE + timedelta(days=9)
    latest4 = max((r for r in rows if r[0] == 4 and r[4] is not None), key=lambda r: (r[4], r[5] or datetime.min))
    rows = [*rows, (1, "Late", 100.0, 3, later, None)]
    rows = [(*r[:2], 77.0, *r[3:]) if r == latest4 else r for r in rows]
    write_source(tmp_path / "shop.db", rows)
    path = table_path(config, view)
    published_before = {r["user_id"]: r["published_at"] for r in read_table(spark, path).collect() if r["user_id"] != 4}

    failing = FileOnlineStore(tmp_path / "online", fail_on_write=True)
    with pytest.raises(MaterializationError, match=r"previous values are still served.*injected failure") as info:
        materialize(spark, config, plan, view, start=None, end=None, online=failing)
    assert info.value.__cause__ is not None
    assert live_rows(store, "fail_txn") == old_live  # readers still see the old values
    assert failing.staged_dirs() == []  # the publication was aborted
    assert delta_rows(spark, path) == expected_table(rows, None, None)  # the offline commit is complete

    result = materialize(spark, config, plan, view, start=None, end=None, online=store)
    assert result.rows_written_offline == 0 and result.online_committed
    assert live_rows(store, "fail_txn") == expected_latest(expected_table(rows, None, None))
    assert store.started[-1] == table_version(spark, path)
    # Only the restated row got a new published_at.
    changed = {
        r["user_id"]
        for r in read_table(spark, path).collect()
        if r["user_id"] != 4 and r["published_at"] != published_before.get(r["user_id"])
    }
    assert changed == {1}  # user 1's new row is new; nobody else's rows were rewritten


@pytest.mark.spark
def test_a_rerun_that_changes_nothing_publishes_nothing_unless_asked(spark: Any, tmp_path: Path) -> None:
    rows = source_rows()
    config, view, plan, store = small_repo(tmp_path, "rerun_txn", rows)
    first = materialize(spark, config, plan, view, start=None, end=None, online=store)
    assert first.online_committed and store.started == [0]

    again = materialize(spark, config, plan, view, start=None, end=None, online=store)
    assert (again.rows_written_offline, again.rows_published, again.online_committed) == (0, 0, False)
    assert again.online_current
    assert store.started == [0]  # no publication even started
    assert live_rows(store, "rerun_txn") == expected_latest(expected_table(rows, None, None))

    forced = materialize(spark, config, plan, view, start=None, end=None, online=store, republish=True)
    assert forced.online_committed and not forced.online_current and store.started == [0, 0]

    # The offline table is deleted and built again from changed rows, so its versions start over at 0, the
    # watermark the online store still holds from the old table. The first run fails to publish (no store);
    # the rerun commits nothing new to Delta, but it must still publish: the old snapshot predates this table.
    rows = [(*r[:2], 123.0, *r[3:]) if r[0] == 2 else r for r in rows]
    write_source(tmp_path / "shop.db", rows)
    shutil.rmtree(table_path(config, view))
    rebuilt = materialize(spark, config, plan, view, start=None, end=None, online=None)
    assert rebuilt.offline_version == 0 and rebuilt.rows_written_offline > 0
    rerun = materialize(spark, config, plan, view, start=None, end=None, online=store)
    assert rerun.rows_written_offline == 0 and rerun.online_committed and not rerun.online_current
    assert live_rows(store, "rerun_txn") == expected_latest(expected_table(rows, None, None))


@pytest.mark.spark
@pytest.mark.parametrize("differs", ["watermark", "storage fingerprint", "feature fingerprint", "published before"])
def test_the_live_snapshot_counts_as_current_only_when_everything_matches(world: dict[str, Any], differs: str) -> None:
    view: ViewPlan = world["view"]
    path = table_path(world["config"], view)
    version = world["second"].offline_version
    committed = commit_time(path, version)
    assert committed is not None
    live = LiveSnapshot(
        watermark=version,
        storage_fingerprint=view.storage_fingerprint,
        feature_fingerprints=tuple((f.name, f.fingerprint) for f in view.features),
        published_at=committed + timedelta(seconds=1),
    )

    class Holding(FileOnlineStore):
        def __init__(self, snapshot: LiveSnapshot) -> None:
            self.snapshot = snapshot

        def live_snapshot(self, view: ViewPlan) -> LiveSnapshot | None:
            return self.snapshot

    assert already_live(Holding(live), view, path, version)
    changed = {
        "watermark": dataclasses.replace(live, watermark=version - 1),
        "storage fingerprint": dataclasses.replace(live, storage_fingerprint="another"),
        "feature fingerprint": dataclasses.replace(live, feature_fingerprints=(("amount_x2", "another"),)),
        "published before": dataclasses.replace(live, published_at=committed - timedelta(seconds=1)),
    }[differs]
    assert not already_live(Holding(changed), view, path, version)


def _commit_once_while_merging(table: Path, marker: Path) -> Any:
    """A pass-through Spark UDF that, the first time it runs (as MERGE reads its rows, after the MERGE took its
    snapshot of the table), rewrites some of ``table``'s rows unchanged through delta-rs: another writer's commit."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    def passthrough(value: Any) -> Any:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return value
        from deltalake import DeltaTable

        # Rewrites user 1's rows with the values they hold: not a blind append, which Delta lets pass.
        DeltaTable(str(table)).update(updates={"amount_x2": "amount_x2"}, predicate="user_id = 1")
        return value

    return F.udf(passthrough, LongType())


@pytest.mark.spark
@pytest.mark.parametrize("commit", ["spark_merge", "driver_append"])
def test_a_concurrent_commit_fails_the_run_in_one_line_and_changes_nothing(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit: str
) -> None:
    """Another writer commits to the view's table between this run's read and its commit; the run fails with one
    readable line, nothing of it is in the table or online, and the rerun it asks for completes. Both ways a
    Spark run commits: Spark's MERGE (a change too large for the driver), where Delta refuses the commit
    (ConcurrentAppendException); and new rows few enough to commit from the driver (delta-rs), whose commit must
    be the version right after the one compared with."""
    from deltalake import DeltaTable

    from offline import delta_rs

    rows = source_rows()
    split = BASE + timedelta(days=1)  # the source's rows span 2.5 days
    name = f"race_{commit}"
    config, view, plan, store = small_repo(tmp_path, name, rows)
    materialize(spark, config, plan, view, start=BASE, end=split, online=store)
    path = table_path(config, view)
    version_before, live_before = table_version(spark, path), live_rows(store, name)
    if commit == "spark_merge":
        monkeypatch.setattr(spark_tables, "DRIVER_MAX_VALUES", 0)
        merge = spark_tables.merge_rows
        udf = _commit_once_while_merging(path, tmp_path / "raced")

        def merge_while_another_commits(
            spark: Any, path: Any, view: ViewPlan, rows: Any, published_at: Any, **options: Any
        ) -> int:
            return merge(spark, path, view, rows.withColumn("user_id", udf(rows["user_id"])), published_at, **options)

        monkeypatch.setattr(spark_tables, "merge_rows", merge_while_another_commits)
    else:
        append = delta_rs.append

        def append_after_another_commit(snapshot: Any, data: Any, **options: Any) -> int:
            DeltaTable(str(path)).update(updates={"amount_x2": "amount_x2"}, predicate="user_id = 1")
            return append(snapshot, data, **options)

        monkeypatch.setattr(delta_rs, "append", append_after_another_commit)
    with pytest.raises(MaterializationError) as info:
        materialize(spark, config, plan, view, start=split, end=None, online=store)
    assert str(info.value) == (
        f"view '{name}': another run committed to its table at the same time; nothing of this run was written; "
        "run again"
    )
    if commit == "spark_merge":
        assert "Concurrent" in type(info.value.__cause__).__name__ + str(info.value.__cause__)  # Delta's refusal
    assert table_version(spark, path) == version_before + 1  # the other writer's commit, nothing of this run
    assert delta_rows(spark, path) == expected_table(rows, BASE, split)  # it changed no value
    assert live_rows(store, name) == live_before
    monkeypatch.undo()
    if commit == "spark_merge":
        monkeypatch.setattr(spark_tables, "DRIVER_MAX_VALUES", 0)
    again = materialize(spark, config, plan, view, start=split, end=None, online=store)
    assert again.offline_version == version_before + 2
    info_again = delta_rs.commit_info(path, version_before + 2)
    assert info_again is not None and info_again["operation"] == ("MERGE" if commit == "spark_merge" else "WRITE")
    assert delta_rows(spark, path) == expected_table(rows, None, None)
    assert live_rows(store, name) == expected_latest(expected_table(rows, None, None))
