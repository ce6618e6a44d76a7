"""``skewless status`` against a real registry (PostgreSQL), real Delta tables and a real Redis: each case
compares what status reports with what the test set up (rows it inserted, versions it made, times it chose)."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from features.cli import main
from features.plan import ViewPlan
from features.protocols import LiveSnapshot
from features.status import _snapshot_reasons, age_text, grace_seconds, view_statuses
from features.store import FeatureStore
from tests.servers import fresh_database

pytestmark = pytest.mark.postgres

ROWS = 5  # source rows, one per card
TTL = timedelta(hours=6)
DEFINITIONS = """
from datetime import timedelta
from features import Entity, Feature, FeatureView, Float64, Int64, SqlSource

card = Entity(join_keys={"card_id": Int64})
txns = SqlSource(connection="main", table="txns", timestamp="ts", created="created")

card_txn = FeatureView(entities=[card], source=txns, ttl=timedelta(hours=6), features=[Feature("amount", Float64)])
card_txn_copy = FeatureView(entities=[card], source=txns, ttl=timedelta(hours=6), features=[Feature("amount", Float64)])
card_txn_offline = FeatureView(entities=[card], source=txns, online=False, features=[Feature("amount", Float64)])
"""


def _write_source(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE txns (card_id BIGINT, ts TIMESTAMP, created TIMESTAMP, amount DOUBLE PRECISION)")
        for card in range(ROWS):
            conn.execute("INSERT INTO txns VALUES (%s, '2024-01-01 00:00:00', '2024-01-01 00:00:01', %s)", (card, card))


@pytest.fixture(scope="module")
def repo(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A repository applied but never materialized."""
    root = tmp_path_factory.mktemp("status")
    database = fresh_database(postgres_url, f"status_{uuid.uuid4().hex[:10]}")
    _write_source(database)
    (root / "status_defs").mkdir()
    (root / "status_defs" / "views.py").write_text(textwrap.dedent(DEFINITIONS))
    (root / "skewless.yaml").write_text(
        f"project: st_{uuid.uuid4().hex[:8]}\nregistry: {database}\ndefinitions: status_defs\n"
        f"offline:\n  path: offline\nonline:\n  url: {redis_url}\nconnections:\n  main: {database}\n"
    )
    with FeatureStore(root) as store:
        store.apply()
    yield root


def _status(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict]]:
    code = main(["status", "--repo", str(root), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_status_of_a_repository_never_materialized_says_never(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--repo", str(repo)])
    out = capsys.readouterr().out
    assert code == 1
    assert "3 of 3 stale" in out
    assert out.count("never materialized") == 3
    code, statuses = _status(repo, capsys)
    assert code == 1
    assert {s["view"]: s["stale"] for s in statuses} == {
        "card_txn": ["never materialized", "never published"],
        "card_txn_copy": ["never materialized", "never published"],
        "card_txn_offline": ["never materialized"],
    }
    assert all(s["last_success"] is None and s["online_snapshot"] is None for s in statuses)
    assert all(s["checks"] == [] for s in statuses)


def test_status_follows_runs_snapshots_ttl_and_the_table(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = datetime.now(UTC)
    with FeatureStore(repo) as store:
        store.materialize(["card_txn", "card_txn_offline"])
    after = datetime.now(UTC)

    # Fresh: the materialized views; the copy was never materialized, so the command still exits 1.
    code, statuses = _status(repo, capsys)
    by_view = {s["view"]: s for s in statuses}
    assert code == 1
    assert by_view["card_txn"]["stale"] == [] and by_view["card_txn_offline"]["stale"] == []
    assert by_view["card_txn_copy"]["stale"] == ["never materialized", "never published"]
    run = by_view["card_txn"]["last_success"]
    assert (run["rows_read"], run["rows_written"], run["offline_version"], run["outcome"]) == (ROWS, ROWS, 0, "ok")
    assert by_view["card_txn"]["last_failure"] is None
    snapshot = by_view["card_txn"]["online_snapshot"]
    assert snapshot["offline_version"] == 0 and by_view["card_txn"]["table_version"] == 0
    published = datetime.fromisoformat(snapshot["published_at"])
    assert before - timedelta(seconds=1) <= published <= after
    assert main(["status", "--repo", str(repo), "card_txn", "card_txn_offline"]) == 0
    assert "0 of 2 stale" in capsys.readouterr().out

    with FeatureStore(repo) as store:
        live = store.online_store().live_snapshot(store.plan_version().plan.view("card_txn"))
        assert live is not None
        # Stale by the TTL exactly when the snapshot is older than it (the test's clock, not the machine's).
        just_in = view_statuses(store, ["card_txn"], now=live.published_at + TTL - timedelta(seconds=1))
        just_out = view_statuses(store, ["card_txn"], now=live.published_at + TTL + timedelta(seconds=1))
    assert just_in[0]["stale"] == []
    assert just_out[0]["stale"] == ["older than the TTL (6h 1s > 6h)"]
    assert just_out[0]["online_snapshot"]["age_seconds"] == TTL.total_seconds() + 1

    # Behind the table: a new Delta version the online store never got.
    import deltalake

    table = next((repo / "offline" / "card_txn").iterdir())
    rows = deltalake.DeltaTable(str(table)).to_pyarrow_table()
    deltalake.write_deltalake(str(table), rows.slice(0, 1), mode="append")
    code, statuses = _status(repo, capsys, "card_txn")
    assert code == 1
    assert statuses[0]["table_version"] == 1
    assert statuses[0]["stale"] == ["behind the table (Delta version 1, served 0)"]


def test_status_names_unknown_views(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--repo", str(repo), "nope"]) == 1
    out = capsys.readouterr().out
    assert "unknown feature view 'nope'" in out and "card_txn_offline" in out


def test_windowed_views_are_stale_after_a_missed_tick(repo: Path) -> None:
    with FeatureStore(repo) as store:
        view: ViewPlan = store.plan_version().plan.view("card_txn")
    hourly = dataclasses.replace(view, ttl_seconds=None, cadence_seconds=3600)
    live = LiveSnapshot(0, view.storage_fingerprint, (), datetime(2024, 1, 1, tzinfo=UTC))
    # Grace: half a cadence, at least 5 minutes (oracle: the rule as the docs state it).
    assert grace_seconds(3600) == 1800 and grace_seconds(60) == 300
    assert _snapshot_reasons(hourly, live, 3600 + 1800, 0) == []
    assert _snapshot_reasons(hourly, live, 3600 + 1801, 0) == ["no tick within cadence + grace (1h 30m > 1h 30m)"]
    assert _snapshot_reasons(hourly, dataclasses.replace(live, storage_fingerprint="x"), 0, 3) == [
        "snapshot of another definition"
    ]


def test_age_text() -> None:
    assert [age_text(s) for s in (0, 59, 60, 3661, 90000, 7 * 86400)] == ["0s", "59s", "1m", "1h 1m", "1d 1h", "7d"]
