"""Delta from Python (offline/delta_rs.py, delta-rs) against Spark's own Delta on the same tables: delta-rs
reads every version Spark wrote (a checkpoint, MERGEs that remove files, INT96 and INT64 timestamps), Spark
reads every version delta-rs wrote (creates, appends, a MERGE, a checkpoint) and the two keep writing to each
other's tables, a stale delta-rs commit racing a Spark commit fails cleanly with nothing lost, and tables it does
not read are refused with the reason."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import CommitConflictError
from offline import delta_rs
from offline.delta_rs import read_snapshot
from offline.spark.tables import read_table, table_version
from offline.tables import read_through

BASE = datetime(2024, 3, 1)
COLUMNS = ["id", "name", "score", "flag", "event_timestamp"]


def _rows(start: int, count: int, version: int) -> list[tuple[Any, ...]]:
    return [
        (i, None if i % 7 == 0 else f"n{i}-{version}", i * 0.5 + version, i % 3 == 0, BASE + timedelta(minutes=i))
        for i in range(start, start + count)
    ]


def _frame(spark: Any, rows: list[tuple[Any, ...]]) -> Any:
    schema = "id LONG, name STRING, score DOUBLE, flag BOOLEAN, event_timestamp TIMESTAMP"
    return spark.createDataFrame(rows, schema)


def files(snapshot: delta_rs.Snapshot) -> list[str]:
    """The local paths of the snapshot's data files."""
    return [unquote(urlparse(uri).path) for uri in snapshot.table.file_uris()]


def _sorted(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def history(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A table of 14 versions: a create, then MERGEs that update existing rows (files removed and re-added) and
    insert new ones, with a checkpoint at version 10 (Delta's default interval) and user metadata on some.
    The create writes Spark's legacy INT96 timestamps (tables written before skewless chose INT64), the
    MERGEs INT64 ones, so later versions mix both."""
    from delta.tables import DeltaTable

    path = Path(tmp_path_factory.mktemp("delta")) / "table"
    session_type = spark.conf.get("spark.sql.parquet.outputTimestampType")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "INT96")
    try:
        # Two files by id range: the early MERGEs rewrite the first only, so INT96 and INT64 files coexist.
        _frame(spark, _rows(0, 40, 0)).repartitionByRange(2, "id").write.format("delta").save(str(path))
    finally:
        spark.conf.set("spark.sql.parquet.outputTimestampType", session_type)
    for version in range(1, 14):
        changes = _frame(spark, _rows(version * 3, 10, version))
        merge = (
            DeltaTable.forPath(spark, str(path))
            .alias("t")
            .merge(changes.alias("s"), "t.id = s.id")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
        )
        if version % 4 == 0:
            spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", f'{{"v": {version}}}')
        try:
            merge.execute()
        finally:
            spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
    assert (path / "_delta_log" / f"{10:020d}.checkpoint.parquet").exists()
    return path


@pytest.mark.spark
def test_every_version_reads_as_spark_reads_it(spark: Any, history: Path) -> None:
    assert delta_rs.latest_version(history) == table_version(spark, history) == 13
    for version in range(14):
        snapshot = delta_rs.snapshot(history, version)
        ours = read_snapshot(snapshot, COLUMNS)
        theirs = read_table(spark, history, version).select(*COLUMNS).toArrow()
        assert ours.schema == theirs.schema, version
        assert _sorted(ours) == _sorted(theirs), f"version {version}"
    latest = delta_rs.snapshot(history, 13)
    assert latest.size == sum(Path(f).stat().st_size for f in files(latest)) > 0

    def timestamp_types(version: int) -> set[str]:
        schemas = (pq.ParquetFile(f).schema for f in files(delta_rs.snapshot(history, version)))
        return {schema.column(schema.names.index("event_timestamp")).physical_type for schema in schemas}

    # Versions compared above that mixed both kinds of file.
    assert {"INT96", "INT64"} in [timestamp_types(v) for v in range(14)]


@pytest.mark.spark
def test_user_metadata_is_the_newest_at_or_before_a_version(spark: Any, history: Path) -> None:
    from delta.tables import DeltaTable

    rows = DeltaTable.forPath(spark, str(history)).history().select("version", "userMetadata").collect()
    spark_view = {int(r["version"]): r["userMetadata"] for r in rows}
    for version in range(14):
        newest = [spark_view[v] for v in sorted(spark_view) if v <= version and spark_view[v] is not None]
        assert delta_rs.user_metadata(history, version) == (newest[-1] if newest else None), version
    assert read_through(history) is None  # metadata without skewless's key is not a coverage


@pytest.mark.spark
def test_tables_it_cannot_read_are_refused_with_the_reason(spark: Any, tmp_path: Path) -> None:
    rows = _frame(spark, _rows(0, 5, 0))
    partitioned = tmp_path / "partitioned"
    rows.write.format("delta").partitionBy("flag").save(str(partitioned))
    with pytest.raises(delta_rs.UnsupportedTableError, match="partitioned by"):
        delta_rs.snapshot(partitioned, 0)
    vectors = tmp_path / "vectors"
    rows.write.format("delta").option("delta.enableDeletionVectors", "true").save(str(vectors))
    with pytest.raises(delta_rs.UnsupportedTableError, match="reader version 3"):
        delta_rs.snapshot(vectors, 0)
    with pytest.raises(FileNotFoundError, match="version 1 "):
        delta_rs.snapshot(partitioned, 1)
    assert delta_rs.latest_version(tmp_path / "nothing") is None


UTC_MICROS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema(
    [("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()), ("flag", pa.bool_()),
     ("event_timestamp", UTC_MICROS)]
)  # fmt: skip


def _arrow(rows: list[tuple[Any, ...]]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table(
        {name: pa.array(values, SCHEMA.field(name).type) for name, values in zip(COLUMNS, columns, strict=True)}
    )


def _with_times(table: pa.Table) -> pa.Table:
    """With the created_timestamp (null) and published_at columns of a feature table."""
    nulls = pa.nulls(table.num_rows, UTC_MICROS)
    return table.append_column("created_timestamp", nulls).append_column(
        "published_at", pa.array([BASE] * table.num_rows, UTC_MICROS)
    )


@pytest.mark.spark
def test_spark_reads_every_version_delta_rs_writes_and_both_keep_writing(spark: Any, tmp_path: Path) -> None:
    from delta.tables import DeltaTable

    path = tmp_path / "written-by-delta-rs"
    expected: dict[int, list[dict[str, Any]]] = {}
    assert delta_rs.create(path, _arrow(_rows(0, 20, 0)), configuration={"delta.dataSkippingStatsColumns": "id"}) == 0
    expected[0] = _sorted(_arrow(_rows(0, 20, 0)))
    for version in (1, 2, 3):  # appends
        rows = _rows(20 * version, 20, version)
        assert delta_rs.append(delta_rs.snapshot(path, version - 1), _arrow(rows)) == version
        expected[version] = sorted(expected[version - 1] + _sorted(_arrow(rows)), key=lambda r: r["id"])
    # A MERGE by skewless's rule: ids 10-29 restated with other scores (updates), 80-84 new (inserts).
    restated = [(i, f"n{i}-0", -1.0, i % 3 == 0, BASE + timedelta(minutes=i)) for i in range(10, 30)]
    new = _rows(80, 5, 4)
    source = _with_times(_arrow(restated + new))
    merged = tmp_path / "merged"  # a table with published_at, as the feature tables have
    base = _with_times(_arrow(_rows(0, 40, 0)))
    delta_rs.create(merged, base, configuration={})
    assert delta_rs.merge(delta_rs.snapshot(merged, 0), source, keys=("id",), features=("name", "score", "flag")) == 1
    spark_merged = {r["id"]: r["score"] for r in read_table(spark, merged).collect()}
    assert {i: spark_merged[i] for i in range(10, 30)} == dict.fromkeys(range(10, 30), -1.0)
    assert set(spark_merged) == set(range(40)) | set(range(80, 85))
    delta_rs.snapshot(path, 3).table.create_checkpoint()  # delta-rs's checkpoint at version 3: Spark reads past it
    assert (path / "_delta_log" / f"{3:020d}.checkpoint.parquet").exists()
    for version, rows in expected.items():
        theirs = read_table(spark, path, version).select(*COLUMNS).toArrow()
        assert theirs.schema == SCHEMA and _sorted(theirs) == rows, version
    # Spark appends and MERGEs into the table delta-rs created; delta-rs reads every version after.
    _frame(spark, _rows(100, 5, 9)).write.format("delta").mode("append").save(str(path))
    changes = _frame(spark, [(i, "spark", 9.5, True, BASE) for i in (0, 101)])
    DeltaTable.forPath(spark, str(path)).alias("t").merge(
        changes.alias("s"), "t.id = s.id"
    ).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    for version in (4, 5):
        ours = read_snapshot(delta_rs.snapshot(path, version), COLUMNS)
        assert _sorted(ours) == _sorted(read_table(spark, path, version).select(*COLUMNS).toArrow()), version
    actions = [json.loads(line) for line in (path / "_delta_log" / f"{0:020d}.json").read_text().splitlines()]
    assert {"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}} in actions  # Spark's own protocol


@pytest.mark.spark
def test_a_stale_commit_racing_spark_fails_cleanly_and_loses_nothing(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "race"
    delta_rs.create(path, _arrow(_rows(0, 10, 0)), configuration={})
    stale = delta_rs.snapshot(path, 0)
    _frame(spark, _rows(10, 5, 1)).write.format("delta").mode("append").save(str(path))  # Spark commits version 1
    with pytest.raises(CommitConflictError, match=r"version 1 of .* was committed by another writer first"):
        delta_rs.append(stale, _arrow(_rows(50, 5, 2)))
    assert delta_rs.latest_version(path) == table_version(spark, path) == 1
    assert sorted(r["id"] for r in read_table(spark, path).collect()) == list(range(15))  # Spark's rows, not ours
    # From the current version, the same write goes through.
    assert delta_rs.append(delta_rs.snapshot(path, 1), _arrow(_rows(50, 5, 2))) == 2
    assert sorted(r["id"] for r in read_table(spark, path).collect()) == [*range(15), *range(50, 55)]
