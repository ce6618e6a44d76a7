"""``plan`` only reads (issue 24): a query source is one SELECT statement, and reflection runs in a read-only
transaction (PostgreSQL) or on a database opened read-only (SQLite), on the real databases."""

from __future__ import annotations

import hashlib
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import features.sources
from features.cli import main
from features.dtypes import DType
from features.sources import reflect_columns
from tests.servers import fresh_database

DEFINITIONS = """
from features import Entity, Feature, FeatureView, Float64, Int64, SqlSource

card = Entity(join_keys={{"card_id": Int64}})
txns = SqlSource(
    connection="main",
    query={query!r},
    timestamp="ts",
)
card_txn = FeatureView(entities=[card], source=txns, features=[Feature("amount", Float64)])
"""
SOURCE_LINE = 5  # the SqlSource(...) call above

# Crafted to close the wrapping SELECT that plan used to paste the query into, then run what follows.
CRAFTED = [
    "SELECT 1; DROP TABLE victim; --",
    "SELECT * FROM txns) AS a; DROP TABLE victim; SELECT * FROM (SELECT 1",
    "SELECT * FROM txns /* ; */ ; DROP TABLE victim",
    "WITH gone AS (DELETE FROM victim RETURNING 1) SELECT * FROM txns",
]


@pytest.fixture(scope="module")
def pg_source(postgres_url: str) -> Iterator[str]:
    url = fresh_database(postgres_url, "plan_reads_only")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE txns (card_id BIGINT, ts TIMESTAMP, amount DOUBLE PRECISION)")
        conn.exec_driver_sql("INSERT INTO txns VALUES (1, '2024-01-01', 10.0)")
        conn.exec_driver_sql("CREATE TABLE victim (n INT)")
        conn.exec_driver_sql("INSERT INTO victim VALUES (1), (2)")
        conn.exec_driver_sql("CREATE TABLE audit (n INT)")
        # A function with a side effect, as a query source might call one.
        conn.exec_driver_sql(
            "CREATE FUNCTION bump() RETURNS INT LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO audit VALUES (1); RETURN 1; END $$"
        )
    engine.dispose()
    yield url


@pytest.fixture
def sqlite_source(tmp_path: Path) -> str:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE txns (card_id BIGINT, ts TIMESTAMP, amount REAL)")
        conn.execute("INSERT INTO txns VALUES (1, '2024-01-01 00:00:00', 10.0)")
        conn.execute("CREATE TABLE victim (n INT)")
        conn.execute("INSERT INTO victim VALUES (1), (2)")
    return f"sqlite:///{path}"


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    finally:
        engine.dispose()


def _plan(tmp_path: Path, url: str, query: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    repo = tmp_path / "repo"
    (repo / "definitions").mkdir(parents=True, exist_ok=True)
    (repo / "definitions" / "views.py").write_text(textwrap.dedent(DEFINITIONS.format(query=query)))
    (repo / "skewless.yaml").write_text(
        f"project: t\nregistry: sqlite:///registry.db\nconnections:\n  main: {url}\ndefinitions: definitions\n"
    )
    code = main(["plan", "--repo", str(repo)])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


@pytest.mark.parametrize("database", ["pg_source", "sqlite_source"])
@pytest.mark.parametrize("query", CRAFTED)
def test_plan_refuses_a_crafted_query_and_drops_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], database: str, query: str
) -> None:
    url = request.getfixturevalue(database)
    code, out = _plan(tmp_path, url, query, capsys)
    assert code == 1, out
    assert f"definitions/views.py:{SOURCE_LINE}: query source: " in out, out
    assert "exactly one SELECT statement" in out or "could not be read as one SELECT" in out, out
    assert _count(url, "victim") == 2


def test_select_statements_of_every_form_are_accepted(pg_source: str) -> None:
    expected = {"card_id": DType.INT64, "ts": DType.TIMESTAMP, "amount": DType.FLOAT64}
    for query in (
        "SELECT card_id, ts, amount FROM txns;",  # one trailing ';' is no second statement
        "SELECT card_id, ts, amount FROM txns -- a comment; DROP TABLE victim",
        "SELECT card_id, ts, amount FROM txns WHERE amount::text <> ';DROP TABLE victim'",
        "WITH recent AS (SELECT * FROM txns) SELECT card_id, ts, amount FROM recent",
        "SELECT card_id, ts, amount FROM txns UNION ALL SELECT card_id, ts, amount FROM txns",
    ):
        assert reflect_columns(pg_source, table=None, query=query) == expected, query
    assert _count(pg_source, "victim") == 2


@pytest.fixture
def without_the_statement_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database's own guarantee, tested alone: as if the statement check had let the query through."""
    monkeypatch.setattr(features.sources, "check_select", lambda query, dialect: None)


@pytest.mark.usefixtures("without_the_statement_check")
@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM txns) AS a; SELECT bump(); SELECT * FROM (SELECT 1",
        "SELECT * FROM txns) AS a; DROP TABLE victim; SELECT * FROM (SELECT 1",
    ],
)
def test_a_function_with_side_effects_fails_in_the_read_only_transaction(pg_source: str, query: str) -> None:
    with pytest.raises(features.sources.SourceUnavailableError, match="read-only transaction"):
        reflect_columns(pg_source, table=None, query=query)
    assert _count(pg_source, "audit") == 0
    assert _count(pg_source, "victim") == 2


def test_sqlite_sources_are_opened_read_only(sqlite_source: str, tmp_path: Path) -> None:
    path = Path(sqlite_source.removeprefix("sqlite:///"))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert reflect_columns(sqlite_source, table=None, query="SELECT card_id, ts, amount FROM txns") == {
        "card_id": DType.INT64,
        "ts": DType.TIMESTAMP,
        "amount": DType.FLOAT64,
    }
    # No SQL reaches SQLite's probe that could write (one statement at a time, no side-effect functions):
    # the connection reflection uses is tried directly.
    engine = features.sources._read_only_engine(sqlite_source)
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly database"):
        conn.exec_driver_sql("DELETE FROM victim")
    engine.dispose()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert _count(sqlite_source, "victim") == 2
    # Reading a missing file used to create an empty database there.
    missing = tmp_path / "missing.db"
    with pytest.raises(features.sources.SourceUnavailableError, match="does not exist"):
        reflect_columns(f"sqlite:///{missing}", table="txns", query=None)
    assert not missing.exists()
