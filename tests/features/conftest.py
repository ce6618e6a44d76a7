"""Helpers to build small feature repositories on disk for the definitions tests."""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from features.config import RepoConfig

ENTITIES = """
from features import Entity, Int64, String
card = Entity(join_keys={"card_id": Int64})
shop = Entity(join_keys={"country": String, "shop_id": Int64})
"""

VIEWS = """
from datetime import timedelta
from features import Feature, FeatureService, FeatureView, Float64, Int64, SqlSource, String, Bool
from repo_defs.entities import card

txns = SqlSource(connection="main", table="txns", timestamp="ts", created="created")

card_txn = FeatureView(
    entities=[card],
    source=txns,
    ttl=timedelta(days=1),
    features=[
        Feature("amount", Float64),
        Feature("amount_eur", Float64, expr="amount * fx_rate"),
        Feature("big", Bool, expr="amount > 100"),
    ],
)

svc = FeatureService(features=[card_txn["amount_eur"]])
"""


def make_db(path: Path) -> str:
    con = sqlite3.connect(path)
    con.execute("DROP TABLE IF EXISTS txns")
    con.execute(
        "CREATE TABLE txns (card_id BIGINT, ts TIMESTAMP, created TIMESTAMP, amount REAL, "
        "fx_rate REAL, label TEXT, n INTEGER)"
    )
    con.execute("INSERT INTO txns VALUES (1, '2024-01-01 00:00:00', '2024-01-01 00:00:01', 10.0, 1.1, 'a', 3)")
    con.commit()
    con.close()
    return f"sqlite:///{path}"


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., RepoConfig]:
    """Write definition files (name -> source) into a fresh repository and return its config."""

    def build(files: dict[str, str] | None = None) -> RepoConfig:
        url = make_db(tmp_path / "data.db")
        defs = tmp_path / "repo_defs"
        defs.mkdir(exist_ok=True)
        for name, text in (files if files is not None else {"entities.py": ENTITIES, "views.py": VIEWS}).items():
            (defs / name).write_text(textwrap.dedent(text))
        (tmp_path / "skewless.yaml").write_text(
            f"project: t\nregistry: sqlite:///registry.db\nconnections:\n  main: {url}\ndefinitions: repo_defs\n"
        )
        return RepoConfig.load(tmp_path)

    return build
