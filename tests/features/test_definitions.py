"""Definitions, discovery and compilation: good repositories compile, bad ones fail with file, line and choices."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from features import DefinitionError, Entity, Feature, FeatureView, Float64, Int64, SqlSource
from features.config import RepoConfig
from features.store import FeatureStore
from tests.features.conftest import ENTITIES, VIEWS

Repo = Callable[..., RepoConfig]


def test_names_come_from_module_variables(make_repo: Repo) -> None:
    plan = FeatureStore(config=make_repo()).compile()
    assert [v.name for v in plan.views] == ["card_txn"]
    assert [e.name for e in plan.entities] == ["card", "shop"]
    assert plan.services[0].name == "svc"
    assert [str(r) for r in plan.services[0].features] == ["card_txn:amount_eur"]
    view = plan.view("card_txn")
    assert view.ttl_seconds == 86400
    assert view.key_names == ("card_id",)
    assert [c.name for c in view.source.columns] == ["card_id", "ts", "created", "amount", "fx_rate"]
    assert view.location == "repo_defs/views.py:8"


def test_fingerprints_change_only_with_meaning(make_repo: Repo) -> None:
    config = make_repo()
    first = FeatureStore(config=config).compile()
    # Moving code down a line changes locations, not fingerprints.
    make_repo({"entities.py": ENTITIES, "views.py": "\n\n" + VIEWS})
    moved = FeatureStore(config=config).compile()
    assert moved.fingerprint == first.fingerprint
    assert moved.view("card_txn").location != first.view("card_txn").location
    make_repo({"entities.py": ENTITIES, "views.py": VIEWS.replace("amount * fx_rate", "amount / fx_rate")})
    changed = FeatureStore(config=config).compile()
    before = {f.name: f.fingerprint for f in first.view("card_txn").features}
    after = {f.name: f.fingerprint for f in changed.view("card_txn").features}
    assert before["amount"] == after["amount"]
    assert before["amount_eur"] != after["amount_eur"]


BAD_CASES = [
    # (replace in VIEWS, expected message, line of the error in views.py)
    ('Feature("amount", Float64)', 'Feature("amount", Float64, expr="amount * rate")', "unknown column 'rate'", 13),
    (
        'Feature("big", Bool, expr="amount > 100")',
        'Feature("big", Int64, expr="amount > 100")',
        "declared int64 but `amount > 100` is bool",
        15,
    ),
    ('timestamp="ts"', 'timestamp="when"', "unknown timestamp column 'when'; the source has: card_id, ts", 6),
    ('table="txns"', 'table="txn"', "table 'txn' not found; tables there: txns", 6),
    ('Feature("amount", Float64)', 'Feature("amount", "decimal")', "unknown dtype 'decimal'; valid choices: int64", 13),
    (
        'Feature("big", Bool, expr="amount > 100")',
        'Feature("amount", Bool, expr="amount > 100")',
        "duplicate feature name(s) ['amount']",
        8,
    ),
    (
        'card_txn["amount_eur"]',
        'card_txn["amount_usd"]',
        "unknown feature 'amount_usd'; known: amount, amount_eur, big",
        19,
    ),
    ('created="created"', 'created="label"', "created column 'label' has type string; it must be a timestamp", 6),
]


@pytest.mark.parametrize(("old", "new", "message", "line"), BAD_CASES)
def test_bad_definitions_name_file_line_and_choices(
    make_repo: Repo, old: str, new: str, message: str, line: int
) -> None:
    assert old in VIEWS
    config = make_repo({"entities.py": ENTITIES, "views.py": VIEWS.replace(old, new)})
    store = FeatureStore(config=config)
    with pytest.raises(DefinitionError) as info:
        store.apply()
    text = str(info.value)
    assert message in text
    assert f"views.py:{line}" in text, text
    assert store.registry.latest() is None  # nothing written


def test_import_error_stops_with_file_and_line(make_repo: Repo) -> None:
    broken = VIEWS + "\nfrom features import NoSuchThing\n"
    store = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": broken}))
    with pytest.raises(DefinitionError, match=r"views.py:21: importing this file failed: ImportError"):
        store.apply()


def test_syntax_error_stops_with_file_and_line(make_repo: Repo) -> None:
    store = FeatureStore(config=make_repo({"entities.py": ENTITIES + "\ncard = (\n", "views.py": VIEWS}))
    with pytest.raises(DefinitionError, match=r"entities.py:6"):
        store.compile()


def test_duplicate_names_across_files(make_repo: Repo) -> None:
    other = "from features import Entity, Int64\ncard = Entity(join_keys={'card_id': Int64})\n"
    store = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": VIEWS, "more.py": other}))
    with pytest.raises(DefinitionError, match=r"duplicate entity name 'card' \(also defined at .*entities.py:3\)"):
        store.compile()


def test_wrong_key_type_against_source(make_repo: Repo) -> None:
    views = VIEWS.replace(
        "from repo_defs.entities import card",
        "from features import Entity\ncard2 = Entity(join_keys={'card_id': String})",
    ).replace("entities=[card]", "entities=[card2]")
    store = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": views}))
    with pytest.raises(DefinitionError, match="join key 'card_id' is string on the entity but int64 in the source"):
        store.compile()


def test_objects_are_validated_when_built() -> None:
    with pytest.raises(DefinitionError, match="needs at least one join key"):
        Entity(join_keys={})
    with pytest.raises(DefinitionError, match="valid choices: int64, string, bool"):
        Entity(join_keys={"x": Float64})
    with pytest.raises(DefinitionError, match=r"exactly one of table=\.\.\. or query="):
        SqlSource(connection="c", timestamp="ts")
    card = Entity(join_keys={"id": Int64})
    source = SqlSource(connection="c", table="t", timestamp="ts")
    with pytest.raises(DefinitionError, match="ttl must be a positive timedelta"):
        FeatureView(entities=[card], source=source, features=[Feature("a", Int64)], ttl=timedelta(0))
    with pytest.raises(DefinitionError, match="must be a Python identifier without '__'"):
        Feature("a__b", Int64)
    # the error points at this test file, the line that built the object
    with pytest.raises(DefinitionError, match=r"test_definitions.py:\d+"):
        Feature("bad name", Int64)


def test_apply_twice_is_a_no_op_and_plan_shows_changes(make_repo: Repo) -> None:
    config = make_repo()
    store = FeatureStore(config=config)
    first = store.apply()
    assert first.created and first.version.version == 1
    assert {(c.kind, c.name, c.change) for c in first.diff.changes} >= {("feature view", "card_txn", "added")}
    again = store.apply()
    assert not again.created and again.version.version == 1 and again.diff.empty
    make_repo({"entities.py": ENTITIES, "views.py": VIEWS.replace("days=1", "days=2")})
    _, diff = store.plan()
    assert [(c.kind, c.name, c.change, c.breaking) for c in diff.changes] == [
        ("feature view", "card_txn", "changed", False)
    ]
    assert store.apply().version.version == 2


def test_breaking_change_is_flagged_once_data_is_materialized(make_repo: Repo) -> None:
    from datetime import UTC, datetime

    from features.registry import RunRecord

    config = make_repo()
    store = FeatureStore(config=config)
    view = store.apply().version.plan.view("card_txn")
    store.registry.record_run(
        RunRecord("card_txn", view.storage_fingerprint, 1, None, None, 1, 1, 0, 1, datetime.now(UTC))
    )
    make_repo({"entities.py": ENTITIES, "views.py": VIEWS.replace("amount * fx_rate", "amount * 2")})
    _, diff = store.plan()
    assert [(c.name, c.change, c.breaking) for c in diff.breaking] == [("card_txn:amount_eur", "changed", True)]


def test_example_definitions_compile_to_the_golden_plan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The plan of definitions/ is committed; a definition change shows up as a plain diff of that file."""
    from pathlib import Path

    from definitions._example_data import create_example_data

    root = Path(__file__).resolve().parents[2]
    url = f"sqlite:///{tmp_path / 'payments.db'}"
    create_example_data(url, cards=5, merchants=3, payments=20)
    config = RepoConfig.from_dict(root, {"connections": {"payments": url}})
    plan = FeatureStore(config=config).compile()
    golden = root / "tests" / "golden" / "definitions_plan.json"
    assert plan.to_json() == golden.read_text(), "definitions changed: run scripts/update_golden.py and review the diff"


ON_DEMAND = """
from features import Feature, Float64, OnDemandFeatureView, RequestSource, Bool
from repo_defs.views import card_txn

payment = RequestSource(schema={"amount": Float64})
checks = OnDemandFeatureView(
    sources=[payment, card_txn],
    features=[
        Feature("ratio", Float64, expr="payment.amount / card_txn.amount_eur"),
        Feature("big", Bool, expr="payment.amount > 100"),
    ],
)
"""


def test_on_demand_views_compile_with_their_inputs(make_repo: Repo) -> None:
    config = make_repo({"entities.py": ENTITIES, "views.py": VIEWS, "checks.py": ON_DEMAND})
    plan = FeatureStore(config=config).compile()
    checks = plan.on_demand_view("checks")
    assert [str(r) for r in checks.inputs] == ["card_txn:amount_eur"]
    assert [(s, f.name, f.dtype.value) for s, f in checks.request_fields()] == [("payment", "amount", "float64")]
    assert checks.location == "repo_defs/checks.py:6"
    assert [str(r) for r in plan.resolve_refs(["checks:*"])] == ["checks:ratio", "checks:big"]
    # A changed input definition changes the on-demand fingerprint too.
    make_repo({"entities.py": ENTITIES, "views.py": VIEWS.replace("amount * fx_rate", "amount * 2"),
               "checks.py": ON_DEMAND})  # fmt: skip
    changed = FeatureStore(config=config).compile().on_demand_view("checks")
    assert changed.feature("ratio").fingerprint != checks.feature("ratio").fingerprint
    assert changed.feature("big").fingerprint == checks.feature("big").fingerprint


@pytest.mark.parametrize(
    ("old", "new", "message", "line"),
    [
        (
            "card_txn.amount_eur",
            "card_txn.amount_usd",
            "unknown input 'card_txn.amount_usd'; known: card_txn.amount",
            9,
        ),
        ('Feature("big", Bool', 'Feature("big", Float64', "declared float64 but `payment.amount > 100` is bool", 10),
        ('expr="payment.amount > 100"', 'expr="amount > 100"', "unknown column 'amount'", 10),
    ],
)
def test_bad_on_demand_definitions(make_repo: Repo, old: str, new: str, message: str, line: int) -> None:
    config = make_repo({"entities.py": ENTITIES, "views.py": VIEWS, "checks.py": ON_DEMAND.replace(old, new)})
    with pytest.raises(DefinitionError) as info:
        FeatureStore(config=config).apply()
    assert message in str(info.value)
    assert f"checks.py:{line}" in str(info.value)


def test_late_rows_and_changed_at_are_checked_with_file_and_line(make_repo: Repo) -> None:
    for late, why in (("2x", "is not a duration"), ("unbounded", "cannot be unbounded"), ("0s", "positive")):
        with pytest.raises(DefinitionError, match=rf"test_definitions.py:\d+: late_rows.*{why}"):
            SqlSource(connection="c", table="t", timestamp="ts", late_rows=late)
    views = VIEWS.replace('created="created")', 'created="created", late_rows="2h", changed_at="label")')
    store = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": views}))
    with pytest.raises(DefinitionError, match=r"views.py:\d+: changed_at column 'label' has type string"):
        store.compile()
    good = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": views.replace("label", "created")}))
    source = good.compile().view("card_txn").source
    assert (source.late_rows_seconds, source.changed_column) == (7200, "created")
    # How runs find new rows changes no stored value: the table (storage fingerprint) stays the same.
    plain = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": VIEWS})).compile()
    assert plain.view("card_txn").storage_fingerprint == good.compile().view("card_txn").storage_fingerprint
