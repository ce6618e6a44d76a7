"""``skewless audit`` and ``FeatureStore.audit`` on the real components: PostgreSQL as the source, Delta tables,
a real redis-server; a seeded-skew suite.

Lookups are logged exactly as the server logs them (``get_online_features`` or ``lookup(now=...)``, then
``write_batch(to_rows(...))``), then landed by the audit. Each kind of skew is injected on purpose after a
clean run; the oracle is what the test injected (which entity, which feature), never the audit's own output.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.audit import (
    CAUSE_FUNCTION,
    CAUSE_LATE_ROW,
    CAUSE_OVERWRITTEN,
    CAUSE_REAPPLIED,
    CAUSE_SNAPSHOT,
    CAUSE_SOURCE_CHANGED,
    DRIFTED,
    MISMATCHED,
    ONLINE_ONLY,
    AuditResult,
)
from features.cli import main
from features.served_log import LoggedLookup, decode_value, to_rows, write_batch
from features.store import FeatureStore
from offline import delta_rs, served_log
from offline.tables import table_path

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

NOW = datetime.now(UTC).replace(microsecond=0)
BASE = NOW - timedelta(days=20)  # event times: recent enough to be served within the TTL
TTL_DAYS = 30
CARDS = (1, 2, 3, 4, 5)
FEATURES = ("last_payment__amount_eur", "last_payment__merchant_lower", "last_payment__big", "basket__per_item")
COLUMNS = ("card_id", "amount", "fx_rate", "merchant", "paid_at", "recorded_at")

DEFINITIONS = """
from datetime import timedelta

import pandas as pd

from features import Aggregation, Bool, Entity, Feature, FeatureService, FeatureView, Float64, Int64, RequestSource
from features import SqlSource, String, on_demand_function

card = Entity(join_keys={{"card_id": Int64}})
payments = SqlSource(connection="shop", table="{table}", timestamp="paid_at", created="recorded_at")

last_payment = FeatureView(
    entities=[card],
    source=payments,
    ttl=timedelta(days={ttl}),
    features=[
        Feature("amount_eur", Float64, expr="{amount_expr}"),
        Feature("merchant_lower", String, expr="lower(merchant)"),
        Feature("big", Bool, expr="amount > 100"),
    ],
)

order = RequestSource(schema={{"quantity": Float64}})


@on_demand_function(
    sources=[order, last_payment],
    inputs=["order.quantity", "last_payment.amount_eur"],
    outputs={{"per_item": Float64}},
    mode="pandas",
)
def basket(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({{"per_item": frame["last_payment.amount_eur"] / frame["order.quantity"] * {factor}}})


scoring = FeatureService(features=[last_payment, basket])
{extra}"""

WINDOWED = """
spend = FeatureView(
    entities=[card],
    source=payments,
    cadence="1d",
    ttl=timedelta(days=30),
    aggregations=[Aggregation("sum", "amount", windows=["30d"])],
)
"""


def payment(card: int, hours: float, amount: float, merchant: str = "Shop") -> dict[str, Any]:
    paid = BASE + timedelta(hours=hours)
    return {
        "card_id": card,
        "amount": amount,
        "fx_rate": 1.5,
        "merchant": merchant,
        "paid_at": paid,
        "recorded_at": paid,
    }


class Repo:
    """A repository over its own PostgreSQL table and Redis project, materialized once (a clean run)."""

    def __init__(self, root: Path, postgres_url: str, redis_url: str, extra: str = "") -> None:
        import psycopg

        self.root = root
        self.extra = extra
        self.table = f"audit_{uuid.uuid4().hex[:8]}"
        self.postgres_url = postgres_url
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {self.table} (card_id BIGINT, amount DOUBLE PRECISION, fx_rate DOUBLE PRECISION, "
                "merchant TEXT, paid_at TIMESTAMP, recorded_at TIMESTAMP)"
            )
        self.insert([payment(card, hours=h, amount=10.0 * card + h + 0.1) for card in CARDS for h in (0, 5)])
        (root / "definitions").mkdir(parents=True)
        self.define()
        (root / "skewless.yaml").write_text(
            f"project: audit_{uuid.uuid4().hex[:8]}\nregistry: sqlite:///{root / 'registry.db'}\n"
            f"offline:\n  path: offline\nonline:\n  url: {redis_url}\nconnections:\n  shop: {postgres_url}\n"
        )
        self.store = FeatureStore(root)
        self.store.apply()
        self.store.materialize()
        self.served = 0

    def define(self, amount_expr: str = "amount * fx_rate", factor: float = 1.0) -> None:
        text = DEFINITIONS.format(
            table=self.table, ttl=TTL_DAYS, amount_expr=amount_expr, factor=factor, extra=self.extra
        )
        (self.root / "definitions" / "views.py").write_text(text)

    def reapply(self, **definitions: Any) -> None:
        self.define(**definitions)
        self.store.apply()

    def insert(self, rows: list[dict[str, Any]]) -> None:
        import psycopg

        with psycopg.connect(self.postgres_url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {self.table} VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    tuple(r[c].replace(tzinfo=None) if isinstance(r[c], datetime) else r[c] for c in COLUMNS)
                    for r in rows
                ],
            )

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            conn.execute(sql.format(table=self.table))

    def serve(self, cards: tuple[int, ...] = CARDS) -> None:
        """Look ``cards`` up as the server does, and log the lookup as the server does."""
        result = self.store.get_online_features(
            {"card_id": list(cards)},
            feature_service="scoring",
            request_data={"quantity": [2.0] * len(cards)},
        )
        self.log(result, {"quantity": [2.0] * len(cards)})

    def log(self, result: Any, request_data: dict[str, list[Any]] | None) -> None:
        self.served += 1
        logged = LoggedLookup(f"req-{self.served}", result.at_micros, "scoring", result, request_data)
        write_batch(self.store.config, to_rows([logged]))

    def audit(self, *names: str) -> AuditResult:
        return self.store.audit(list(names))

    def state(self) -> tuple[Any, ...]:
        """The Delta tables' latest versions, every Redis key and value, the registry's rows."""
        import redis

        plan = self.store.plan_version().plan
        versions = {v.name: delta_rs.latest_version(table_path(self.store.config, v)) for v in plan.views}
        client = redis.Redis.from_url(self.store.config.resolved_online_url())
        keys = sorted(client.keys(f"{self.store.config.project}:*"))
        values = {k: client.dump(k) for k in keys}
        client.close()
        registry = (
            [v.version for v in self.store.registry.versions()],
            len(self.store.registry.runs()),
            len(self.store.registry.training_sets()),
        )
        return versions, values, registry


@pytest.fixture
def repo(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Repo]:
    made = Repo(tmp_path / "repo", postgres_url, redis_url)
    try:
        yield made
    finally:
        made.store.close()


def card_of(entity: str) -> int:
    return int(json.loads(entity)["card_id"])


def disagreeing(result: AuditResult) -> dict[str, dict[str, set[int]]]:
    """feature -> kind of disagreement -> the cards of its examples (only features with any)."""
    out: dict[str, dict[str, set[int]]] = {}
    for f in result.features:
        for kind, examples in f.examples.items():
            if kind != "freshness_lag":
                out.setdefault(f.feature, {})[kind] = {card_of(e.entity) for e in examples}
    return out


def assert_only(result: AuditResult, kind_counts: dict[str, tuple[str, int]]) -> None:
    """Exactly the features of ``kind_counts`` disagree, each in that kind with that many values."""
    for f in result.features:
        if f.feature in kind_counts:
            kind, count = kind_counts[f.feature]
            found = f.drifted if kind == DRIFTED else f.disagreements
            assert found == count, (f.feature, f.to_json())
            other = f.disagreements if kind == DRIFTED else f.drifted
            assert other == 0, (f.feature, f.to_json())
        else:
            assert (f.disagreements, f.drifted) == (0, 0), (f.feature, f.to_json())


# -- clean ------------------------------------------------------------------------------------------------------------


def test_a_clean_run_has_no_mismatch_and_the_audit_changes_nothing(repo: Repo, tmp_path: Path) -> None:
    repo.serve()
    repo.serve((2, 4))
    before = repo.state()
    code = main(
        ["audit", "--repo", str(repo.root), "--json", str(tmp_path / "a.json"), "--html", str(tmp_path / "a.html")]
    )
    assert code == 0
    assert repo.state() == before  # no Delta version, Redis key or registry row changed
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["lookups"] == 2
    assert report["values"] == (len(CARDS) + 2) * len(FEATURES)
    by_feature = {f["feature"]: f for f in report["features"]}
    assert sorted(by_feature) == sorted(FEATURES)
    for feature in FEATURES:
        f = by_feature[feature]
        assert (f["total"], f["equal"], f["mismatch_rate"], f["drifted"]) == (len(CARDS) + 2, len(CARDS) + 2, 0, 0)
    assert "<img" in (tmp_path / "a.html").read_text()


# -- seeded skews ------------------------------------------------------------------------------------------------------


def test_a_source_row_updated_after_publication_is_drift_of_that_entity(repo: Repo) -> None:
    repo.execute("UPDATE {table} SET amount = 999.5 WHERE card_id = 2 AND paid_at = (SELECT max(paid_at) FROM {table})")
    repo.serve()
    result = repo.audit()
    changed = {
        "last_payment__amount_eur": (DRIFTED, 1),
        "last_payment__big": (DRIFTED, 1),
        "basket__per_item": (DRIFTED, 1),
    }
    assert_only(result, changed)
    for feature in changed:
        assert disagreeing(result)[feature] == {DRIFTED: {2}}
        assert result.feature(feature).causes[DRIFTED] == CAUSE_SOURCE_CHANGED
    assert main(["audit", "--repo", str(repo.root)]) == 1


def test_a_late_row_the_run_did_not_take_is_drift_with_its_cause(repo: Repo) -> None:
    repo.insert([payment(4, hours=7, amount=501.0, merchant="Late Kiosk")])  # after the run, before its end
    repo.serve()
    result = repo.audit()
    changed = {f: (DRIFTED, 1) for f in FEATURES}
    assert_only(result, changed)
    for feature in FEATURES:
        assert disagreeing(result)[feature] == {DRIFTED: {4}}
        assert result.feature(feature).causes[DRIFTED] == CAUSE_LATE_ROW


def test_a_redis_value_overwritten_by_hand_is_skew_of_that_entity(repo: Repo) -> None:
    import redis

    from online.encoding import encode_entity_key
    from online.redis_layout import ViewKeys

    live = repo.store.online_store().live_version("last_payment")  # type: ignore[attr-defined]
    assert live is not None
    key = ViewKeys.of(repo.store.config.project, "last_payment").version_prefix(int(live["version"]))
    key += encode_entity_key([3])
    client = redis.Redis.from_url(repo.store.config.resolved_online_url())
    row = client.get(key)
    served = repr((10.0 * 3 + 5.1) * 1.5).encode()  # card 3's newest amount_eur (plain Python)
    assert row is not None and row.count(served) == 1
    overwritten = served.replace(b"52.6", b"52.7")  # one byte
    client.set(key, row.replace(served, overwritten))
    client.close()
    repo.serve()
    result = repo.audit()
    changed = {"last_payment__amount_eur": (MISMATCHED, 1), "basket__per_item": (MISMATCHED, 1)}
    assert_only(result, changed)
    for feature in changed:
        assert disagreeing(result)[feature] == {MISMATCHED: {3}}
        assert result.feature(feature).causes[MISMATCHED] == CAUSE_OVERWRITTEN
    example = result.feature("last_payment__amount_eur").examples[MISMATCHED][0]
    assert (example.online, example.offline) == (float(overwritten), (10.0 * 3 + 5.1) * 1.5)
    out = repo.root / "audit.json"
    assert main(["audit", "--repo", str(repo.root), "--json", str(out)]) == 1  # above --max-mismatch 0
    assert main(["audit", "--repo", str(repo.root), "--max-mismatch", "0.25"]) == 0  # 1 value of 5 per feature
    report = {f["feature"]: f for f in json.loads(out.read_text())["features"]}
    shown = report["last_payment__amount_eur"]["examples"][MISMATCHED]
    assert [(json.loads(e["entity"]), e["online"], e["offline"]) for e in shown] == [
        ({"card_id": 3}, float(overwritten), (10.0 * 3 + 5.1) * 1.5)
    ]


def test_a_definition_applied_while_redis_serves_the_old_values_names_the_view(repo: Repo) -> None:
    repo.serve()  # by the plan the server still runs
    repo.reapply(amount_expr="amount * fx_rate * 2")
    result = repo.audit()
    affected = {"last_payment__amount_eur", "basket__per_item"}  # per_item is computed from amount_eur
    for f in result.features:
        if f.feature in affected:
            assert f.disagreements == len(CARDS), f.to_json()
            assert {k for k in f.examples if k != DRIFTED} == {ONLINE_ONLY}
            assert f.causes[ONLINE_ONLY] == CAUSE_REAPPLIED
        else:
            assert (f.disagreements, f.drifted) == (0, 0), f.to_json()


def test_a_request_time_function_changed_since_serving_names_the_function(repo: Repo) -> None:
    repo.serve()
    repo.reapply(factor=3.0)
    result = repo.audit("scoring")
    assert_only(result, {"basket__per_item": (MISMATCHED, len(CARDS))})
    f = result.feature("basket__per_item")
    assert f.causes[MISMATCHED] == CAUSE_FUNCTION
    newest = {card: (10.0 * card + 5.1) * 1.5 for card in CARDS}  # plain Python: the newest row per card
    for example in f.examples[MISMATCHED]:
        card = card_of(example.entity)
        assert example.online == newest[card] / 2.0
        assert example.offline == newest[card] / 2.0 * 3.0


def test_values_served_exactly_at_and_just_past_the_ttl_are_not_mismatches(repo: Repo) -> None:
    from features.lookup import lookup

    plan = repo.store.plan_version().plan
    refs = plan.select(feature_service="scoring")
    newest_event = BASE + timedelta(hours=5)
    functions = repo.store.function_loader.functions_for(plan)
    for now, expected in (
        (newest_event + timedelta(days=TTL_DAYS), "present"),
        (newest_event + timedelta(days=TTL_DAYS, microseconds=1), "expired"),
    ):
        result = lookup(
            plan,
            repo.store.online_store(),
            refs,
            {"card_id": [1, 2]},
            now=now,
            plan_version=repo.store.plan_version().version,
            request_data={"quantity": [2.0, 2.0]},
            functions=functions,
        )
        assert result.features["last_payment__amount_eur"].statuses == [expected, expected]
        repo.log(result, {"quantity": [2.0, 2.0]})
    result = repo.audit()
    for f in result.features:
        assert (f.total, f.disagreements, f.drifted) == (4, 0, 0), f.to_json()
        assert f.by_status["present"].equal == 2 and f.by_status["expired"].equal == 2


# -- bad input ---------------------------------------------------------------------------------------------------------


def test_bad_input_exits_2_and_writes_nothing(repo: Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    root = str(repo.root)
    assert main(["audit", "--repo", root, "--json", str(out)]) == 2  # no log yet
    assert "no logged lookups" in capsys.readouterr().out
    repo.serve()
    assert main(["audit", "--repo", root, "nope", "--json", str(out)]) == 2
    said = capsys.readouterr().out
    assert "unknown feature service or view 'nope'" in said and "scoring" in said
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert main(["audit", "--repo", root, "--since", future, "--json", str(out)]) == 2
    assert "in the future" in capsys.readouterr().out
    # a lookup logged under a plan version the registry does not hold
    result = repo.store.get_online_features({"card_id": [1]}, features=["last_payment:big"])
    stranger = to_rows([LoggedLookup("r-x", result.at_micros, None, result)])
    import pyarrow as pa

    stranger = stranger.set_column(
        stranger.schema.get_field_index("plan_version"), "plan_version", pa.array([99] * stranger.num_rows, pa.int64())
    )
    write_batch(repo.store.config, stranger)
    assert main(["audit", "--repo", root, "--json", str(out)]) == 2
    assert "plan version(s) 99" in capsys.readouterr().out
    assert not out.exists()


# -- freshness, sampling ----------------------------------------------------------------------------------------------


def test_a_newer_row_published_after_the_lookup_is_freshness_lag_not_skew(repo: Repo) -> None:
    repo.serve()
    repo.insert([payment(1, hours=10, amount=11.0)])  # event time before the lookup, published after it
    repo.store.materialize(start=BASE)
    result = repo.audit()
    for f in result.features:
        assert (f.disagreements, f.drifted) == (0, 0), f.to_json()
        lagged = f.feature in ("last_payment__amount_eur", "basket__per_item")  # merchant and big unchanged
        assert f.lagged == (1 if lagged else 0), f.to_json()
        if lagged:
            assert f.lag_max_seconds == 5 * 3600  # the newer row's event time minus the served one's
            assert {card_of(e.entity) for e in f.examples["freshness_lag"]} == {1}


def test_without_a_log_a_sample_of_online_keys_is_audited(repo: Repo, tmp_path: Path) -> None:
    result = repo.store.audit(sample=3)
    assert result.origin == "sample"
    stored = [f for f in FEATURES if not f.startswith("basket__")]  # on-demand features need request data
    assert sorted(f.feature for f in result.features) == sorted(stored)
    for f in result.features:
        assert (f.total, f.equal, f.disagreements, f.drifted) == (3, 3, 0, 0), f.to_json()
    assert main(["audit", "--repo", str(repo.root), "--sample", "2", "last_payment"]) == 0


# -- a windowed view, in Spark ----------------------------------------------------------------------------------------


@pytest.mark.spark
@pytest.mark.slow
def test_a_windowed_view_audits_clean_then_finds_a_changed_source_row(
    tmp_path: Path, postgres_url: str, redis_url: str, spark: Any
) -> None:
    repo = Repo(tmp_path / "repo", postgres_url, redis_url, extra=WINDOWED)
    try:
        result = repo.store.get_online_features({"card_id": list(CARDS)}, features=["spend:amount_sum_30d"])
        # the oracle: the 30-day sum of each card's two rows (both within 30 days of the last tick), plain Python
        assert result.features["spend__amount_sum_30d"].values == [2 * 10.0 * c + 5 + 0.2 for c in CARDS]
        repo.log(result, None)
        clean = repo.audit()
        assert [(f.feature, f.total, f.equal, f.drifted) for f in clean.features] == [
            ("spend__amount_sum_30d", len(CARDS), len(CARDS), 0)
        ]
        repo.execute(
            "UPDATE {table} SET amount = 999.5 WHERE card_id = 2 AND paid_at = (SELECT min(paid_at) FROM {table})"
        )
        seeded = repo.audit("spend")
        f = seeded.feature("spend__amount_sum_30d")
        assert (f.disagreements, f.drifted) == (0, 1), f.to_json()
        assert {card_of(e.entity) for e in f.examples[DRIFTED]} == {2}
        assert f.examples[DRIFTED][0].offline == 999.5 + 25.1  # the recomputed sum, plain Python
    finally:
        repo.store.close()


def test_a_table_version_never_published_online_names_the_snapshot(repo: Repo) -> None:
    repo.insert([payment(5, hours=9, amount=77.0)])
    plan = repo.store.plan_version().plan
    # a run that committed to Delta but never published (its online step lost): Redis serves the older snapshot
    repo.store.offline.materialize(plan, plan.view("last_payment"), start=BASE, end=None, online=None)
    repo.serve()
    result = repo.audit()
    changed = {"last_payment__amount_eur": (MISMATCHED, 1), "basket__per_item": (MISMATCHED, 1)}
    assert_only(result, changed)
    for feature in changed:
        assert disagreeing(result)[feature] == {MISMATCHED: {5}}
        assert result.feature(feature).causes[MISMATCHED] == CAUSE_SNAPSHOT


def test_values_served_from_a_rollback_are_reported_as_the_rollback_not_skew(repo: Repo) -> None:
    repo.insert([payment(1, hours=10, amount=999.0)])
    repo.store.materialize(start=BASE)  # card 1's newer row: a second snapshot
    repo.store.rollback("last_payment")  # serve the first snapshot again (card 1's older row)
    repo.serve()
    result = repo.audit()
    for f in result.features:
        assert (f.disagreements, f.drifted) == (0, 0), f.to_json()
        rolled = f.feature.startswith(("last_payment__", "basket__"))  # basket reads last_payment's amount
        assert f.rolled_back == (len(CARDS) if rolled else 0), f.to_json()
        if rolled:
            assert f.causes["rolled back"].startswith("rolled back by ")
            assert f.lagged == 0  # the rollback's version, not a freshness lag
    assert repo.store.get_online_features({"card_id": [1]}, features=["last_payment:amount_eur"]).features[
        "last_payment__amount_eur"
    ].values == [(10.0 + 5 + 0.1) * 1.5]  # the older row, as audited


def test_the_log_is_a_training_sets_entity_rows_and_gives_back_what_was_served(repo: Repo) -> None:
    repo.serve()
    repo.serve((2, 4))
    rows = repo.store.served_lookups()
    assert sorted(rows.columns) == sorted(["request_id", "served_at", "service", "plan_version", "card_id", "quantity"])
    assert len(rows) == len(CARDS) + 2
    training = repo.store.get_training_dataset(rows, feature_service="scoring", timestamp_column="served_at")
    # The oracle: the values the lookups returned, as the log recorded them (decoded by their plan types).
    plan = repo.store.plan_version().plan
    logged = served_log.read(repo.store.config).to_pylist()
    for feature in FEATURES:
        view, _, name = feature.partition("__")
        dtype = (plan.on_demand_view(view) if plan.is_on_demand(view) else plan.view(view)).feature(name).dtype
        served = {
            (r["request_id"], card_of(r["entity"])): decode_value(dtype, r["value"])
            for r in logged
            if r["feature"] == feature
        }
        joined = {
            (request_id, card): None if pd.isna(value) else value
            for request_id, card, value in zip(
                training["request_id"], training["card_id"], training[feature], strict=True
            )
        }
        assert joined == served, feature
