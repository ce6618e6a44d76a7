"""JDBC reads from SQLite and PostgreSQL: URL mapping, schema check, windowed and partitioned reads."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from features.dtypes import DType
from features.errors import ConfigError, SchemaMismatchError
from features.plan import ColumnSpec, SourcePlan
from features.sources import SourceUnavailableError
from offline.spark.jdbc import check_schema, jdbc_target, read_source

BASE = datetime(2024, 3, 1)
START, END = BASE + timedelta(days=2), BASE + timedelta(days=7)


def _rows() -> list[tuple[int, float, str, datetime]]:
    # One row every 6 hours over 10 days, so rows fall exactly on START (kept) and END (left out).
    return [(5_000_000_000 + i % 7, round(i * 1.25, 2), f"n{i % 3}", BASE + timedelta(hours=6 * i)) for i in range(40)]


def _source(columns: dict[str, DType], *, table: str | None = "events", query: str | None = None) -> SourcePlan:
    return SourcePlan("events", "db", table, query, "ts", None, tuple(ColumnSpec(c, t) for c, t in columns.items()))


COLUMNS = {"user_id": DType.INT64, "amount": DType.FLOAT64, "note": DType.STRING, "ts": DType.TIMESTAMP}


def _expected(start: datetime | None, end: datetime | None) -> set[tuple[Any, ...]]:
    return {r for r in _rows() if (start is None or r[3] >= start) and (end is None or r[3] < end)}


def _collected(frame: Any) -> set[tuple[Any, ...]]:
    return {(r["user_id"], r["amount"], r["note"], r["ts"]) for r in frame.collect()}


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = Path(tmp_path_factory.mktemp("jdbc")) / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (user_id INTEGER, amount REAL, note TEXT, extra TEXT, ts TIMESTAMP)")
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?, 'x', ?)",
            [(u, a, n, t.strftime("%Y-%m-%d %H:%M:%S")) for u, a, n, t in _rows()],
        )
    return f"sqlite:///{path}"


def test_sqlalchemy_urls_map_to_jdbc() -> None:
    assert jdbc_target("sqlite:////tmp/a b/shop.db").url == "jdbc:sqlite:/tmp/a b/shop.db"
    pg = jdbc_target("postgresql+psycopg2://me:s3cr%40t@db.example:5433/shop?sslmode=require")
    assert pg.url == "jdbc:postgresql://db.example:5433/shop?sslmode=require"
    assert pg.driver == "org.postgresql.Driver"
    assert pg.properties == {"prepareThreshold": "-1", "user": "me", "password": "s3cr@t"}  # binary transfer
    own = jdbc_target("postgresql://db/shop?prepareThreshold=0")  # e.g. behind PgBouncer: the URL's choice wins
    assert own.url == "jdbc:postgresql://db:5432/shop?prepareThreshold=0" and "prepareThreshold" not in own.properties
    assert jdbc_target("postgresql://db/shop").url == "jdbc:postgresql://db:5432/shop"
    with pytest.raises(ConfigError, match="valid choices: sqlite, postgresql"):
        jdbc_target("mysql://db/shop")
    with pytest.raises(ConfigError, match="in-memory"):
        jdbc_target("sqlite:///:memory:")


def test_schema_check_names_expected_and_found() -> None:
    source = _source({"user_id": DType.INT64, "gone": DType.FLOAT64, "note": DType.INT64, "ts": DType.TIMESTAMP})
    with pytest.raises(SchemaMismatchError) as info:
        check_schema(source, {"user_id": "IntegerType", "note": "StringType", "ts": "TimestampType"})
    message = str(info.value)
    assert "missing column(s) gone" in message
    assert "column 'note': expected int64, found StringType" in message
    check_schema(_source({"amount": DType.FLOAT64}), {"amount": "IntegerType"})  # int widens to float64


@pytest.mark.spark
def test_sqlite_windowed_partitioned_read(spark: Any, sqlite_url: str) -> None:
    frame = read_source(spark, _source(COLUMNS), sqlite_url, START, END)
    assert frame.rdd.getNumPartitions() == 4
    assert [f.name for f in frame.schema.fields] == list(COLUMNS)
    assert frame.schema["user_id"].dataType.typeName() == "long"  # SQLite's int32 would wrap 5_000_000_000
    assert _collected(frame) == _expected(START, END)


@pytest.mark.spark
def test_sqlite_unbounded_and_query_sources(spark: Any, sqlite_url: str) -> None:
    whole = read_source(spark, _source(COLUMNS), sqlite_url)
    assert whole.rdd.getNumPartitions() == 4  # bounds came from MIN/MAX
    assert _collected(whole) == _expected(None, None)
    query = _source(
        {"user_id": DType.INT64, "amount": DType.FLOAT64, "note": DType.STRING, "ts": DType.TIMESTAMP},
        table=None,
        query="SELECT user_id, amount, upper(note) AS note, ts FROM events WHERE note <> 'n1'",
    )
    rows = _collected(read_source(spark, query, sqlite_url, START, None))
    assert rows == {(u, a, n.upper(), t) for u, a, n, t in _expected(START, None) if n != "n1"}


@pytest.mark.spark
def test_sqlite_schema_mismatch(spark: Any, sqlite_url: str) -> None:
    with pytest.raises(SchemaMismatchError, match=r"missing column\(s\) vanished.*'note': expected bool"):
        read_source(spark, _source({**COLUMNS, "vanished": DType.STRING, "note": DType.BOOL}), sqlite_url)


@pytest.mark.spark
def test_missing_table_is_a_named_error(spark: Any, sqlite_url: str) -> None:
    with pytest.raises(SourceUnavailableError, match=r"cannot read source 'events' at jdbc:sqlite:.*no such table"):
        read_source(spark, _source(COLUMNS, table="nope"), sqlite_url)


@pytest.mark.spark
@pytest.mark.postgres
def test_postgres_windowed_partitioned_read(spark: Any, postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS pg_events")
        conn.exec_driver_sql(
            "CREATE TABLE pg_events (user_id BIGINT, amount NUMERIC(12, 2), note VARCHAR(20), ts TIMESTAMPTZ)"
        )
        conn.execute(
            sa.text("INSERT INTO pg_events VALUES (:u, :a, :n, :t)"),
            [{"u": u, "a": a, "n": n, "t": t.replace(tzinfo=UTC)} for u, a, n, t in _rows()],
        )
    engine.dispose()
    source = SourcePlan(
        "events", "db", "pg_events", None, "ts", None, tuple(ColumnSpec(c, t) for c, t in COLUMNS.items())
    )
    frame = read_source(spark, source, postgres_url, START.replace(tzinfo=UTC), END.replace(tzinfo=UTC))
    assert frame.rdd.getNumPartitions() == 4
    assert frame.schema["amount"].dataType.typeName() == "double"
    assert _collected(frame) == _expected(START, END)
    whole = read_source(spark, source, postgres_url)
    assert _collected(whole) == _expected(None, None)
