"""The whole path on real components: SQL source -> Spark -> Delta Lake -> Redis -> lookup and HTTP.

Every expected value comes from tests/integration/oracle.py (pandas over the source tables), never from
skewless itself.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from definitions._example_data import create_example_data
from features.store import FeatureStore
from offline.spark.session import get_spark
from offline.warm import client as daemon
from tests.integration import oracle

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TTL = {
    "card_profile": timedelta(days=90),
    "card_last_payment": timedelta(days=7),
    "merchant_risk": timedelta(days=2),
    "card_spend": timedelta(hours=6),  # windowed: checked in tests/integration/test_windows.py
}


def make_repo(path: Path, source_url: str, registry_url: str, online_url: str, *, arrow_join: bool = True) -> Path:
    """The example repository; ``arrow_join=False`` sends every training set to Spark (arrow_join_max_mb: 0)."""
    shutil.copytree(ROOT / "definitions", path / "definitions", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "skewless.yaml").write_text(
        f"project: e2e_{uuid.uuid4().hex[:8]}\n"
        f"registry: {registry_url}\n"
        "offline:\n  path: offline\n"
        + ("" if arrow_join else "  arrow_join_max_mb: 0\n")
        + f"online:\n  url: {online_url}\n"
        f"connections:\n  payments: {source_url}\n"
    )
    return path


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "warm engine", "redis cluster"],
)
def materialized(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, spark: Any, redis_url: str
) -> Iterator[tuple[FeatureStore, dict[str, pd.DataFrame]]]:
    """The example repository, materialized. "warm engine": every offline job of the module (those that take
    pandas rows) runs in the repository's warm engine (offline/warm/server.py) instead of this process, training sets
    included: they are joined in Spark there, while the other parameters join them in Arrow here. "redis cluster":
    the online store is a Redis Cluster (3 primaries, 3 replicas), published from the Spark executors."""
    tmp = tmp_path_factory.mktemp(f"e2e_{request.param.replace(' ', '_')}")
    if request.param == "postgres":
        source_url = registry_url = request.getfixturevalue("postgres_url")
    else:
        source_url = registry_url = f"sqlite:///{tmp / 'payments.db'}"
    create_example_data(source_url, cards=150, merchants=30, payments=2_500, days=20)
    warm = request.param == "warm engine"
    online_url = request.getfixturevalue("redis_cluster").url if request.param == "redis cluster" else redis_url
    store = FeatureStore(make_repo(tmp / "repo", source_url, registry_url, online_url, arrow_join=not warm))
    if warm:
        daemon.start_engine(store.config)
    store.apply()
    try:
        results = store.materialize()
        assert {r.view for r in results} == set(TTL)
        yield store, oracle.read_sources(source_url)
    finally:
        daemon.stop_engine(store.config)
        store.close()


def test_jobs_run_where_the_parameter_says(materialized: tuple[FeatureStore, Any]) -> None:
    store, _ = materialized
    info = daemon.engine_info(store.config)
    if "warm_engine" in str(store.config.root):
        assert info is not None and info["jobs"] >= len(TTL)  # one materialization per view, at least
    else:
        assert info is None


def equal(a: Any, b: Any) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b)) or b is pd.NA
    if isinstance(a, float) or isinstance(b, float):
        return b is not None and math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return bool(a == b)


def test_online_holds_the_latest_source_row_per_entity(materialized: tuple[FeatureStore, Any]) -> None:
    store, sources = materialized
    plan = store.plan_version().plan
    for view_name, (rows, keys, ts, created) in oracle.example_features(sources).items():
        view = plan.view(view_name)
        expected = oracle.latest_per_entity(rows, keys, ts, created)
        entity_keys = [[int(v) for v in row] for row in expected[keys].itertuples(index=False)]
        entity_keys.append([10_000_000])  # unknown entity
        columns = {key: [row[j] for row in entity_keys] for j, key in enumerate(view.key_names)}
        [found] = store.online_store().read([(view, view.feature_names)], columns)
        assert found.values[-1] is None
        for i, row in enumerate(expected.itertuples(index=False)):
            got = found.values[i]
            assert got is not None, f"{view_name}: no online row for {entity_keys[i]}"
            for name, value in zip(view.feature_names, got, strict=True):
                assert equal(getattr(row, name), value), (view_name, entity_keys[i], name, getattr(row, name), value)
            assert found.event_timestamps[i] == getattr(row, ts).to_pydatetime()


def test_training_set_matches_the_merge_asof_oracle(materialized: tuple[FeatureStore, Any]) -> None:
    store, sources = materialized
    views = oracle.example_features(sources)
    rng = np.random.default_rng(3)
    payments = sources["payments"]
    picks = payments.sample(300, random_state=1)
    entities = pd.DataFrame(
        {
            "card_id": picks["card_id"].to_numpy(),
            "merchant_id": picks["merchant_id"].to_numpy(),
            "ts": picks["paid_at"].to_numpy(),  # exactly at event times: ties must be included
        }
    )
    extra = pd.DataFrame(
        {
            "card_id": rng.integers(1, 160, 200),
            "merchant_id": rng.integers(1, 35, 200),
            "ts": payments["paid_at"].min() + pd.to_timedelta(rng.integers(-86_400, 86_400 * 21, 200), unit="s"),
        }
    )
    entities = pd.concat([entities, extra, entities.head(20)], ignore_index=True)  # duplicates on purpose
    refs = [f"{v}:*" for v in views]
    result = store.get_training_dataset(entities, features=refs, timestamp_column="ts")
    assert len(result) == len(entities)
    assert list(result.columns[:3]) == ["card_id", "merchant_id", "ts"]
    pd.testing.assert_frame_equal(
        result[["card_id", "merchant_id"]].reset_index(drop=True),
        entities[["card_id", "merchant_id"]],
        check_dtype=False,
    )
    for view_name, (rows, keys, ts, created) in views.items():
        features = [c for c in rows.columns if c not in (*keys, ts, created)]
        expected = oracle.point_in_time(entities, rows, keys, "ts", ts, created, TTL[view_name], features, view_name)
        for column in expected.columns:
            mismatches = [
                (i, expected[column][i], result[column][i])
                for i in range(len(entities))
                if not equal(_py(expected[column][i]), _py(result[column][i]))
            ]
            assert mismatches == [], f"{column}: {len(mismatches)} wrong, e.g. {mismatches[:3]}"


def _py(value: Any) -> Any:
    if value is pd.NA or value is pd.NaT or value is None:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def test_rematerializing_changes_nothing(materialized: tuple[FeatureStore, Any]) -> None:
    store, _ = materialized
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from offline.tables import read_through

    offline = store.config.resolved_offline_path()
    plan = store.plan_version().plan
    spark = get_spark(store.config)
    through = {}

    def rows(view: Any, path: str) -> list[tuple[Any, ...]]:
        frame = DeltaTable.forPath(spark, path).toDF().drop("published_at")
        if view.is_windowed:  # a rerun in a later hour adds the new ticks: compare the ticks computed before
            frame = frame.where(F.col("event_timestamp") <= F.lit(through[view.name]))
        return sorted(map(tuple, frame.collect()), key=repr)

    snapshots = {}
    for view in plan.views:
        path = str(offline / view.name / view.storage_fingerprint)
        through[view.name] = read_through(path)
        snapshots[view.name] = rows(view, path)
    results = {r.view: r for r in store.materialize()}
    for view in plan.views:
        path = str(offline / view.name / view.storage_fingerprint)
        assert rows(view, path) == snapshots[view.name], view.name
        if not view.is_windowed:  # Delta unchanged: Redis already serves that version, nothing is published
            assert results[view.name].online_current and results[view.name].rows_published == 0, view.name


def test_online_lookup_through_the_facade(materialized: tuple[FeatureStore, Any]) -> None:
    store, sources = materialized
    result = store.get_online_features(
        {"card_id": [1, 999_999], "merchant_id": [1, 2]},
        feature_service="fraud_model",
        request_data={"amount": [10.0, 20.0], "fx_rate": [1.0, 1.0]},
    ).to_dict()
    assert result["entities"] == {"card_id": [1, 999_999], "merchant_id": [1, 2]}
    assert set(result["features"]) == {
        "card_profile__credit_limit",
        "card_profile__card_tier",
        "card_profile__is_blocked",
        "card_profile__limit_utilisation",
        "card_last_payment__amount_eur",
        "card_last_payment__is_foreign",
        "merchant_risk__chargeback_rate",
        "merchant_risk__high_risk",
        "payment_checks__share_of_limit",
        "payment_checks__over_available",
        "card_spend__spend_eur_1d",
        "card_spend__count_1h",
        "card_spend__foreign_count_7d",
        "spend_checks__amount_vs_avg_30d",
        "payment_shape__is_round",
        "payment_shape__log10_amount",
        "payment_shape__digits",
        "payment_shape__digits_below_limit",
    }
    assert result["features"]["card_profile__card_tier"]["statuses"][1] == "missing"
    # Windowed: the values at the last tick computed, which the lookup reports as their event time.
    spend = result["features"]["card_spend__spend_eur_1d"]
    assert spend["statuses"] == ["present", "missing"]
    tick = pd.Timestamp(spend["event_timestamps"][0])
    paid = sources["payments"]
    mine = paid[(paid["card_id"] == 1) & (paid["paid_at"] <= tick)]
    day = mine[mine["paid_at"] > tick - pd.Timedelta(days=1)]
    expected = math.fsum(day["amount"] * day["fx_rate"]) if len(day) else None
    assert equal(expected, spend["values"][0]) or math.isclose(expected or 0, spend["values"][0] or 0, rel_tol=1e-9)
    week = mine[mine["paid_at"] > tick - pd.Timedelta(days=7)]
    foreign = int((week["country"] != week["home_country"]).sum())
    assert result["features"]["card_spend__foreign_count_7d"]["values"][0] == foreign
    hour = mine[mine["paid_at"] > tick - pd.Timedelta(hours=1)]
    assert result["features"]["card_spend__count_1h"]["values"][0] == len(hour)
    accounts = oracle.latest_per_entity(sources["card_accounts"], ["card_id"], "updated_at", "ingested_at")
    tier = accounts.loc[accounts["card_id"] == 1, "card_tier"].item()
    assert result["features"]["card_profile__card_tier"]["values"][0] == tier
    assert result["features"]["card_profile__card_tier"]["statuses"][0] == "present"


def payment_checks_oracle(amount: float | None, fx_rate: float | None, limit: Any, utilisation: Any) -> dict[str, Any]:
    """definitions/checks.py, by hand, with SQL null semantics."""
    amount_eur = None if amount is None or fx_rate is None else amount * fx_rate
    if limit is None or (isinstance(limit, float) and math.isnan(limit)):
        limit = None
    # if_else(null, a, b) is b: an unknown limit takes the else branch, like SQL's CASE WHEN.
    share = (None if amount_eur is None else amount_eur / limit) if limit is not None and limit > 0 else 0.0
    over = None
    if amount_eur is not None and limit is not None and utilisation is not None and not math.isnan(utilisation):
        over = amount_eur > limit * (1.0 - utilisation)
    return {"amount_eur": amount_eur, "share_of_limit": share, "over_available": over}


def test_on_demand_features_online_match_the_oracle(materialized: tuple[FeatureStore, Any]) -> None:
    store, sources = materialized
    accounts = oracle.latest_per_entity(sources["card_accounts"], ["card_id"], "updated_at", "ingested_at")
    accounts["limit_utilisation"] = np.where(
        accounts["credit_limit"] > 0, accounts["balance"] / accounts["credit_limit"], 0.0
    )
    cards = [int(c) for c in accounts["card_id"].head(40)] + [999_999]
    amounts = [float(i * 37.5) for i in range(len(cards))]
    rates = [None if i % 7 == 3 else 0.92 for i in range(len(cards))]
    result = store.get_online_features(
        {"card_id": cards},
        features=["payment_checks:*"],
        request_data={"amount": amounts, "fx_rate": rates},
    ).to_dict()["features"]
    by_card = accounts.set_index("card_id")
    for i, card in enumerate(cards):
        row = by_card.loc[card] if card in by_card.index else None
        expected = payment_checks_oracle(
            amounts[i],
            rates[i],
            None if row is None else float(row["credit_limit"]),
            None if row is None else float(row["limit_utilisation"]),
        )
        for name, value in expected.items():
            got = result[f"payment_checks__{name}"]
            assert equal(value, got["values"][i]), (card, name, value, got["values"][i])
            status = "present" if name == "amount_eur" or row is not None else "missing"
            assert got["statuses"][i] == status, (card, name)


def test_on_demand_features_in_training_sets_match_the_oracle(materialized: tuple[FeatureStore, Any]) -> None:
    store, sources = materialized
    payments = sources["payments"].sample(250, random_state=5)
    entities = pd.DataFrame(
        {
            "card_id": payments["card_id"].to_numpy(),
            "ts": payments["paid_at"].to_numpy(),
            "amount": payments["amount"].to_numpy(),
            "fx_rate": payments["fx_rate"].to_numpy(),
        }
    )
    result = store.get_training_dataset(entities, features=["payment_checks:*"], timestamp_column="ts")
    assert list(result.columns) == [
        "card_id", "ts", "amount", "fx_rate",
        "payment_checks__amount_eur", "payment_checks__share_of_limit", "payment_checks__over_available",
    ]  # fmt: skip
    rows, keys, ts, created = oracle.example_features(sources)["card_profile"]
    profile = oracle.point_in_time(
        entities, rows, keys, "ts", ts, created, TTL["card_profile"], ["credit_limit", "limit_utilisation"],
        "card_profile",
    )  # fmt: skip
    for i in range(len(entities)):
        expected = payment_checks_oracle(
            _py(entities["amount"][i]) if pd.notna(entities["amount"][i]) else None,
            _py(entities["fx_rate"][i]) if pd.notna(entities["fx_rate"][i]) else None,
            _py(profile["card_profile__credit_limit"][i]),
            _py(profile["card_profile__limit_utilisation"][i]),
        )
        for name, value in expected.items():
            got = _py(result[f"payment_checks__{name}"][i])
            assert equal(value, got), (i, name, value, got)


def payment_shape_oracle(amount: float | None, limit: float | None) -> dict[str, Any]:
    """definitions/checks.py:payment_shape, by hand in plain Python."""

    def usable(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) and value > 0 else None

    a, lim = usable(amount), usable(limit)
    digits = None if a is None else len(str(int(a)))
    return {
        "is_round": None if a is None else a == math.floor(a),
        "log10_amount": None if a is None else math.log10(a),
        "digits": digits,
        "digits_below_limit": None if digits is None or lim is None else len(str(int(lim))) - digits,
    }


def close(expected: Any, got: Any) -> bool:
    """Equal, same Python type, floats to the last bits or so (numpy's and libm's log10 may differ by an ulp)."""
    if expected is None or got is None:
        return expected is None and got is None
    if type(expected) is not type(got):
        return False
    if isinstance(expected, float):
        return math.isclose(expected, got, rel_tol=4e-16, abs_tol=0.0)
    return bool(expected == got)


AMOUNTS = [1234.5, 100.0, 0.5, 99.99, None, 0.0, -5.0, math.inf, 42.0]


def test_on_demand_function_online_matches_the_oracle(materialized: tuple[FeatureStore, Any]) -> None:
    store, sources = materialized
    accounts = oracle.latest_per_entity(sources["card_accounts"], ["card_id"], "updated_at", "ingested_at")
    cards = [int(c) for c in accounts["card_id"].head(len(AMOUNTS) - 1)] + [999_999]
    result = store.get_online_features(
        {"card_id": cards}, features=["payment_shape:*"], request_data={"amount": AMOUNTS}
    ).to_dict()["features"]
    limits = accounts.set_index("card_id")["credit_limit"]
    for i, card in enumerate(cards):
        limit = float(limits[card]) if card in limits.index else None
        for name, expected in payment_shape_oracle(AMOUNTS[i], limit).items():
            column = result[f"payment_shape__{name}"]
            got = column["values"][i]
            if isinstance(got, str):  # JSON's spelling of non-finite floats
                got = float(got)
            assert close(expected, got), (card, name, expected, got)
            assert column["statuses"][i] == ("missing" if limit is None else "present"), (card, name)


@pytest.mark.parametrize("output_format", ["pandas", "spark"])
def test_on_demand_function_in_training_sets_matches_the_oracle(
    materialized: tuple[FeatureStore, Any], output_format: str
) -> None:
    """The driver path (pandas) and the executors' mapInArrow path (spark) give the oracle's values and types."""
    store, sources = materialized
    payments = sources["payments"].sample(120, random_state=11).reset_index(drop=True)
    amounts = [float(a) for a in payments["amount"]]
    amounts[: len(AMOUNTS)] = AMOUNTS  # the edge cases, then real amounts
    entities = pd.DataFrame(
        {
            "row": range(len(amounts)),
            "card_id": payments["card_id"].to_numpy(),
            "ts": payments["paid_at"].to_numpy(),
            "amount": amounts,
        }
    )
    if output_format == "spark":
        spark = get_spark(store.config)
        frame = store.get_training_dataset(
            spark.createDataFrame(entities), features=["payment_shape:*"], timestamp_column="ts", output_format="spark"
        )
        types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
        assert types["payment_shape__is_round"] == "boolean" and types["payment_shape__digits"] == "bigint"
        assert types["payment_shape__log10_amount"] == "double"
        assert types["payment_shape__digits_below_limit"] == "bigint"
        result = frame.toPandas().sort_values("row").reset_index(drop=True)
    else:
        result = store.get_training_dataset(entities, features=["payment_shape:*"], timestamp_column="ts")
    assert list(result["row"]) == list(range(len(amounts)))
    assert [c for c in result.columns if c.startswith("payment_shape__")] == [
        "payment_shape__is_round", "payment_shape__log10_amount", "payment_shape__digits",
        "payment_shape__digits_below_limit",
    ]  # fmt: skip
    assert "card_profile__credit_limit" not in result.columns  # an input joined only to compute the function
    rows, keys, ts, created = oracle.example_features(sources)["card_profile"]
    profile = oracle.point_in_time(
        entities, rows, keys, "ts", ts, created, TTL["card_profile"], ["credit_limit"], "card_profile"
    )
    for i in range(len(entities)):
        limit = _py(profile["card_profile__credit_limit"][i])
        for name, expected in payment_shape_oracle(amounts[i], limit).items():
            got = _py(result[f"payment_shape__{name}"][i])
            if isinstance(got, float) and math.isnan(got):
                got = None  # pandas' spelling of a null read back from Arrow (the oracle never gives NaN)
            if name in ("digits", "digits_below_limit") and isinstance(got, float):
                got = int(got)
            assert close(expected, got), (i, name, amounts[i], limit, expected, got)


def test_a_training_set_with_a_function_is_reproduced_identically(
    materialized: tuple[FeatureStore, Any], tmp_path: Path
) -> None:
    """The manifest records the function view; reproduce imports the same code (checked) and gets the same set."""
    store, sources = materialized
    payments = sources["payments"].sample(60, random_state=2).reset_index(drop=True)
    entities = pd.DataFrame(
        {
            "card_id": payments["card_id"].to_numpy(),
            "ts": payments["paid_at"].to_numpy(),
            "amount": payments["amount"].to_numpy(),
        }
    )
    out = str(tmp_path / "shape.parquet")
    first = store.get_training_dataset(entities, features=["payment_shape:*"], timestamp_column="ts", output=out)
    again = store.reproduce_training_dataset(f"{out}.manifest.json", output=str(tmp_path / "again.parquet"))
    pd.testing.assert_frame_equal(again, first)
    joined_in = json.loads(Path(f"{out}.manifest.json").read_text())["joined_in"]
    assert joined_in == ("spark" if store.config.arrow_join_max_mb == 0 else "arrow")
