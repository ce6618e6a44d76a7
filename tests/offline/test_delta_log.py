"""The Delta log read in Python against Spark's own reading of the same tables: every version, across a
checkpoint and updates that remove files, and a clear refusal of the tables it does not read."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline import delta_log
from offline.arrow.join import read_snapshot
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
    assert delta_log.latest_version(history) == table_version(spark, history) == 13
    for version in range(14):
        snapshot = delta_log.snapshot(history, version)
        ours = read_snapshot(snapshot, COLUMNS)
        theirs = read_table(spark, history, version).select(*COLUMNS).toArrow()
        assert ours.schema == theirs.schema, version
        assert _sorted(ours) == _sorted(theirs), f"version {version}"
    latest = delta_log.snapshot(history, 13)
    assert latest.size == sum(f.path.stat().st_size for f in latest.files) > 0

    def timestamp_types(version: int) -> set[str]:
        files = (pq.ParquetFile(f.path).schema for f in delta_log.snapshot(history, version).files)
        return {schema.column(schema.names.index("event_timestamp")).physical_type for schema in files}

    # Versions compared above that mixed both kinds of file.
    assert {"INT96", "INT64"} in [timestamp_types(v) for v in range(14)]


@pytest.mark.spark
def test_user_metadata_is_the_newest_at_or_before_a_version(spark: Any, history: Path) -> None:
    from delta.tables import DeltaTable

    rows = DeltaTable.forPath(spark, str(history)).history().select("version", "userMetadata").collect()
    spark_view = {int(r["version"]): r["userMetadata"] for r in rows}
    for version in range(14):
        newest = [spark_view[v] for v in sorted(spark_view) if v <= version and spark_view[v] is not None]
        assert delta_log.user_metadata(history, version) == (newest[-1] if newest else None), version
    assert read_through(history) is None  # metadata without skewless's key is not a coverage


@pytest.mark.spark
def test_tables_it_cannot_read_are_refused_with_the_reason(spark: Any, tmp_path: Path) -> None:
    rows = _frame(spark, _rows(0, 5, 0))
    partitioned = tmp_path / "partitioned"
    rows.write.format("delta").partitionBy("flag").save(str(partitioned))
    with pytest.raises(delta_log.UnsupportedTableError, match="partitioned by"):
        delta_log.snapshot(partitioned, 0)
    vectors = tmp_path / "vectors"
    rows.write.format("delta").option("delta.enableDeletionVectors", "true").save(str(vectors))
    with pytest.raises(delta_log.UnsupportedTableError, match="reader version 3"):
        delta_log.snapshot(vectors, 0)
    with pytest.raises(FileNotFoundError, match="version 1"):
        delta_log.snapshot(partitioned, 1)
    assert delta_log.latest_version(tmp_path / "nothing") is None
