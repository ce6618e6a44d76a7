"""``skewless init``: the configuration reference it writes (one source of truth with the reader), a skeleton that
plans, applies and lists as it is; and ``skewless plan`` on removed and renamed views."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from features.cli import main
from features.config import SETTINGS, RepoConfig, reference_yaml
from features.errors import ConfigError
from features.registry import RunRecord
from features.store import FeatureStore
from tests.features.conftest import ENTITIES, VIEWS


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"offline": {"path": x}}`` -> ``{"offline.path": x}`` (the sections only: offline, online, serving and
    serving.log)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and prefix + key in ("offline", "online", "serving", "serving.log"):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def explained(text: str) -> dict[str, str]:
    """Each key of the file (dotted) -> the comment lines right above it, joined."""
    out: dict[str, str] = {}
    comment: list[str] = []
    sections: list[str] = []  # the enclosing keys, one per two spaces of indentation
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
            continue
        if ":" in stripped:
            name = stripped.split(":", 1)[0]
            depth = (len(line) - len(line.lstrip(" "))) // 2
            sections = [*sections[:depth], name]
            out[".".join(sections)] = " ".join(comment)
        comment = []
    return out


# Every key RepoConfig reads, with a value other than its default and the attribute it lands in: written here by
# hand, from the reader's code, as the oracle the generated reference is held to.
READER_KEYS = {
    "project": ("other", "project"),
    "registry": ("sqlite:///elsewhere.db", "registry_url"),
    "definitions": ("defs", "definitions"),
    "offline.path": ("tables", "offline_path"),
    "offline.engine": ("auto", "offline_engine"),
    "offline.spark": ({"spark.master": "local[1]"}, "spark"),
    "offline.concurrent_views": (3, "concurrent_views"),
    "offline.arrow_join_max_mb": (0, "arrow_join_max_mb"),
    "offline.arrow_materialize_max_rows": (7, "arrow_materialize_max_rows"),
    "online.url": ("redis://localhost:6379/0", "online_url"),
    "online.store": ("other", "online_store"),
    "online.keep_snapshots": (5, "keep_snapshots"),
    "online.contract_versions": (0, "contract_versions"),
    "online.update_in_place": (False, "update_in_place"),
    "connections": ({"db": "sqlite:///x.db"}, "connections"),
    "serving.tokens": ({"model": {"hash": "sha256:" + "0" * 64, "services": ["fraud"]}}, "serving_tokens"),
    "serving.max_body_bytes": (2048, "max_body_bytes"),
    "serving.max_entities": (5, "max_entities"),
    "serving.max_request_fields": (3, "max_request_fields"),
    "serving.log.sample_rate": (0.25, "log_sample_rate"),
    "serving.log.services": ({"fraud": 1.0}, "log_services"),
    "serving.log.flush_seconds": (0.5, "log_flush_seconds"),
    "serving.log.queue_size": (7, "log_queue_size"),
    "serving.log.retention_days": (3, "log_retention_days"),
    "serving.metrics": (False, "metrics"),
}


def test_the_reference_holds_every_key_the_reader_reads_at_its_default(tmp_path: Path) -> None:
    text = reference_yaml("shop")
    written = leaves(yaml.safe_load(text))
    assert set(written) == set(READER_KEYS)
    defaults = RepoConfig(root=tmp_path)
    comments = explained(text)
    for key, (_, attribute) in READER_KEYS.items():
        default = getattr(defaults, attribute)
        assert written[key] == ("shop" if key == "project" else default), key
        shown = "{}" if default == {} else str(default).lower() if isinstance(default, bool) else default  # YAML's
        assert f"Default: {shown}" in comments[key], (key, comments[key])
    # read back, the file is the defaults (the project aside)
    assert RepoConfig.from_dict(tmp_path, yaml.safe_load(text)) == RepoConfig(root=tmp_path, project="shop")


@pytest.mark.parametrize("key", sorted(READER_KEYS))
def test_the_reader_reads_every_key_and_the_settings_list_them(tmp_path: Path, key: str) -> None:
    value, attribute = READER_KEYS[key]

    def nested(dotted: str, leaf: Any) -> dict[str, Any]:
        first, _, rest = dotted.partition(".")
        return {first: nested(rest, leaf) if rest else leaf}

    assert getattr(RepoConfig.from_dict(tmp_path, nested(key, value)), attribute) == value
    assert key in {s.key for s in SETTINGS}
    misspelt = nested(key + "x", value)
    with pytest.raises(ConfigError, match=r"unknown key\(s\)"):
        RepoConfig.from_dict(tmp_path, misspelt)


def test_init_writes_a_skeleton_that_plans_applies_and_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "shop_features"
    assert main(["init", str(repo)]) == 0
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == [
        "definitions/entities.py",
        "skewless.yaml",
    ]
    config = RepoConfig.load(repo)
    assert config == RepoConfig(root=repo.resolve(), project="shop_features")
    for command in ("plan", "apply"):
        assert main([command, "--repo", str(repo)]) == 0
    capsys.readouterr()
    assert main(["list", "entities", "--repo", str(repo), "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["customer"]
    assert main(["list", "--repo", str(repo)]) == 0
    # a second init writes nothing over the repository
    assert main(["init", str(repo)]) == 1
    assert "already holds a skewless.yaml" in capsys.readouterr().out


def test_the_commented_example_of_the_skeleton_works_once_uncommented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "shop"
    assert main(["init", str(repo)]) == 0
    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as con:
        con.execute("CREATE TABLE orders (customer_id BIGINT, ordered_at TIMESTAMP, amount REAL)")
    config = repo / "skewless.yaml"
    config.write_text(config.read_text().replace("connections: {}", f"connections:\n  shop: sqlite:///{database}"))
    starter = repo / "definitions" / "entities.py"
    starter.write_text(re.sub(r"(?m)^# (?!An |A )", "", starter.read_text()))  # code lines, not the prose
    capsys.readouterr()
    assert main(["apply", "--repo", str(repo)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert main(["list", "features", "--repo", str(repo), "--json"]) == 0
    listed = {f["name"]: f["definition"] for f in json.loads(capsys.readouterr().out)}
    assert listed == {"customer_orders:amount": "amount", "customer_orders:amount_with_tax": "(amount * 1.2)"}


def test_init_example_copies_the_example_repository(tmp_path: Path) -> None:
    repo = tmp_path / "fraud"
    assert main(["init", "--example", str(repo)]) == 0
    assert RepoConfig.load(repo).project == "card_fraud"
    assert (repo / "definitions" / "cards.py").exists()


RENAMED_AND_CHANGED = (
    VIEWS
    + """
card_n = FeatureView(entities=[card], source=txns, features=[Feature("n", Int64)])
card_label = FeatureView(entities=[card], source=txns, features=[Feature("label", String)])
"""
)


def test_plan_says_removed_views_orphan_their_data_and_renamed_ones_start_empty(
    make_repo: Callable[..., RepoConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_repo({"entities.py": ENTITIES, "views.py": RENAMED_AND_CHANGED})
    store = FeatureStore(config=config)
    plan = store.apply().version.plan
    for view in plan.views:  # every view has data
        store.registry.record_run(
            RunRecord(view.name, view.storage_fingerprint, 1, None, None, 1, 1, 0, 1, datetime.now(UTC))
        )
    edited = (
        RENAMED_AND_CHANGED.replace("card_n = ", "card_count = ")  # renamed
        .replace('card_label = FeatureView(entities=[card], source=txns, features=[Feature("label", String)])\n', "")
        .replace("amount * fx_rate", "amount * 2")  # changed
    )
    make_repo({"entities.py": ENTITIES, "views.py": edited})
    _, diff = store.plan()
    rows = [(c.kind, c.name, c.change, c.detail, c.after_apply) for c in diff.changes]
    orphaned = "its materialized data becomes orphaned; 'skewless prune' can remove it"
    assert rows == [
        (
            "feature view",
            "card_count",
            "added",
            "1 feature(s); renamed from 'card_n': starts empty, the old name's data is not carried over",
            "materialize (starts empty)",
        ),
        ("feature view", "card_label", "removed", orphaned, "orphaned: prune"),
        ("feature view", "card_n", "removed", f"renamed to 'card_count'; {orphaned}", "orphaned: prune"),
        ("feature", "card_txn:amount_eur", "changed", rows[3][3], "re-materialize"),
    ]
    assert rows[3][3].startswith("fingerprint ")
    capsys.readouterr()
    assert main(["plan", "--repo", str(config.root)]) == 0
    out = capsys.readouterr().out
    assert "re-materialize" in out and out.count("orphaned: prune") == 2
    assert "2 removed view(s) leave orphaned data" in out and "1 change(s) make materialized data stale" in out
    store.close()
