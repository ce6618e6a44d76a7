"""The command line as a user meets it: init, plan, apply, and clean errors (no tracebacks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from definitions._example_data import create_example_data
from features.cli import main
from features.config import RepoConfig


def test_init_plan_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYMENTS_DB_URL", raising=False)
    repo = tmp_path / "fraud"
    assert main(["init", "--example", str(repo)]) == 0
    assert sorted(p.name for p in (repo / "definitions").glob("*.py")) == [
        "_example_data.py",
        "cards.py",
        "checks.py",
        "entities.py",
        "merchants.py",
        "services.py",
        "spend.py",
    ]
    assert (repo / "skewless.yaml").exists()
    config = RepoConfig.load(repo)
    create_example_data(config.connection_url("payments"), cards=5, merchants=3, payments=20)

    capsys.readouterr()
    assert main(["plan", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "card_last_payment" in out and "added" in out

    assert main(["apply", "--repo", str(repo)]) == 0
    assert "applied plan version 1" in capsys.readouterr().out
    assert main(["apply", "--repo", str(repo)]) == 0
    assert "plan version 1 is current; nothing written" in capsys.readouterr().out

    cards = repo / "definitions" / "cards.py"
    cards.write_text(cards.read_text().replace('expr="amount * fx_rate"', 'expr="amount * fx"'))
    assert main(["apply", "--repo", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "error:" in out and "definitions/cards.py:44" in out and "unknown column 'fx'" in out
    assert "Traceback" not in out


def test_missing_config_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--repo", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "no skewless.yaml" in out and "skewless init" in out


def test_bad_window_argument_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["materialize", "--start", "yesterday"])
    assert info.value.code == 2
    assert "not an ISO date or time: 'yesterday'" in capsys.readouterr().err


def test_the_cli_has_every_command() -> None:
    from features.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    expected = {"init", "plan", "apply", "materialize", "dataset", "serve", "demo", "stop", "prune", "teardown"}
    assert expected <= set(commands)
