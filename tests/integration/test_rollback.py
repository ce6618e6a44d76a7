"""``skewless rollback`` on the real components: PostgreSQL as the source, Delta tables, a real redis-server.

The expected values come from plain Python over the rows the test wrote (``features_of`` of the newest row per
card), and the rolled-back answer is compared with the answer recorded before the newer run, bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from features.cli import main
from offline import delta_rs
from offline.tables import table_path
from tests.integration.test_push import Repo, features_of, newest, payment

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CARDS = [1, 2, 3]


def expected(repo: Repo) -> dict[int, tuple[Any, ...]]:
    latest = newest(repo.source)
    return {card: features_of(latest[card]) for card in CARDS}


def same_bits(a: dict[int, Any], b: dict[int, Any]) -> bool:
    """Equal value for value, floats compared by their bits (``float.hex``)."""

    def bits(row: Any) -> Any:
        return None if row is None else tuple(v.hex() if isinstance(v, float) and math.isfinite(v) else v for v in row)

    return {k: bits(v) for k, v in a.items()} == {k: bits(v) for k, v in b.items()}


@pytest.fixture
def repo(tmp_path: Path, postgres_url: str, redis_url: str) -> Any:
    made = Repo(tmp_path / "repo", postgres_url, redis_url)
    yield made
    made.store.close()


def test_a_rollback_restores_the_previous_values_holds_runs_and_is_released(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(repo.store.config.root)
    repo.store.materialize(["last_payment"])
    first = repo.served(CARDS)
    assert first == expected(repo)

    repo.add_source([payment(1, hours=9, amount=777.0), payment(2, hours=9, amount=0.1)])
    repo.store.materialize(["last_payment"])
    assert repo.served(CARDS) == expected(repo)

    assert main(["rollback", "last_payment", "--repo", root]) == 0
    assert same_bits(repo.served(CARDS), first)
    assert "runs are not published until" in capsys.readouterr().out

    # Held: a run commits to Delta but publishes nothing; the rolled-back values stay served.
    path = table_path(repo.store.config, repo.view)
    before = delta_rs.latest_version(path)
    repo.add_source([payment(3, hours=12, amount=55.0)])
    repo.store.materialize(["last_payment"])
    assert delta_rs.latest_version(path) == (before or 0) + 1
    assert same_bits(repo.served(CARDS), first)

    # `status` says the view is rolled back (not stale for being behind its table, which the hold is for).
    capsys.readouterr()
    assert main(["status", "last_payment", "--json", "--repo", root]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["online_snapshot"]["held"].startswith("rolled back by ")
    assert status["table_version"] > status["online_snapshot"]["offline_version"] and status["stale"] == []

    (record,) = repo.store.registry.rollbacks("last_payment")
    assert record.action == "rollback" and record.who and record.to_snapshot != record.from_snapshot

    assert main(["rollback", "last_payment", "--release", "--repo", root]) == 0
    repo.store.materialize(["last_payment"])
    assert repo.served(CARDS) == expected(repo)
    assert [r.action for r in repo.store.registry.rollbacks("last_payment")] == ["rollback", "release"]


def test_a_rollback_to_a_snapshot_not_kept_fails_and_changes_nothing(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(repo.store.config.root)
    repo.store.materialize(["last_payment"])
    state = repo.redis_state()
    assert main(["rollback", "last_payment", "--to", "999", "--repo", root]) == 1
    err = capsys.readouterr().out
    assert "snapshot 999 is not kept" in err and "kept snapshots:" in err
    assert repo.redis_state() == state
    assert repo.store.registry.rollbacks() == []
    # Only one snapshot was ever published: nothing older to go back to.
    assert main(["rollback", "last_payment", "--repo", root]) == 1
    assert "no snapshot older than the live one" in capsys.readouterr().out
    assert repo.redis_state() == state


def test_a_snapshot_of_another_definition_is_not_rolled_back_to(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(repo.store.config.root)
    repo.store.materialize(["last_payment"])
    views = Path(root) / "definitions" / "views.py"
    views.write_text(views.read_text().replace('expr="amount * fx_rate"', 'expr="amount * fx_rate * 2"'))
    repo.store.apply()
    repo.store.materialize(["last_payment"])
    doubled = {card: (row[0] * 2, *row[1:]) for card, row in expected(repo).items()}
    assert repo.served(CARDS) == doubled
    state = repo.redis_state()
    assert main(["rollback", "last_payment", "--repo", root]) == 1
    assert "another definition of amount_eur" in capsys.readouterr().out
    assert repo.redis_state() == state
