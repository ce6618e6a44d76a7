"""``skewless import-feast`` on Feast's own example repository (``feast init``) and on a larger repository written
here (PostgreSQL sources by table and query, a compound key, a feature service, on-demand views that convert and
one that does not, a type skewless lacks). The oracle is what Feast's parser says about each repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest
import sqlalchemy as sa

from features.discovery import discover
from features.dtypes import DType
from features.feast_import import export_feast_repo
from features.plan import Plan
from features.store import FeatureStore
from tests.feast.venv import feast_python

pytestmark = pytest.mark.slow

SKEWLESS = Path(sys.executable).parent / "skewless"
# Feast's types and the skewless type each must become: written here, independently of the importer's table.
EXPECTED_TYPES = {
    "Int32": DType.INT64,
    "Int64": DType.INT64,
    "Float32": DType.FLOAT64,
    "Float64": DType.FLOAT64,
    "String": DType.STRING,
    "Bool": DType.BOOL,
    "UnixTimestamp": DType.TIMESTAMP,
}


def import_feast(feast_repo: Path, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the command as a user would; its --json answer."""
    done = subprocess.run(
        [str(SKEWLESS), "import-feast", str(feast_repo), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def skewless_plan(repo: Path, env: dict[str, str] | None = None) -> Plan:
    done = subprocess.run(
        [str(SKEWLESS), "plan"], cwd=repo, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    store = FeatureStore(repo)
    try:
        return store.compile()
    finally:
        store.close()


def check_against_feast(plan: Plan, exported: dict[str, Any], not_converted: set[str]) -> None:
    """Every view, feature, key, TTL and service Feast defines is in the plan with its type, unless listed."""
    for feast_view in exported["feature_views"]:
        label = f"feature view {feast_view['name']}"
        if label in not_converted:
            assert feast_view["name"] not in {v.name for v in plan.views}
            continue
        view = plan.view(feast_view["name"])
        assert view.ttl_seconds == (feast_view["ttl_seconds"] or None)
        assert view.online == feast_view["online"]
        assert {k.name: k.dtype for k in view.join_keys} == {
            c["name"]: EXPECTED_TYPES[c["dtype"]] for c in feast_view["entity_columns"]
        }
        for feature in feast_view["features"]:
            if f"{label}: feature {feature['name']}" in not_converted:
                assert feature["name"] not in {f.name for f in view.features}
            else:
                assert view.feature(feature["name"]).dtype is EXPECTED_TYPES[feature["dtype"]]
    for feast_view in exported["on_demand_feature_views"]:
        label = f"on-demand view {feast_view['name']}"
        if label in not_converted:
            assert feast_view["name"] not in {v.name for v in plan.on_demand_views}
            continue
        view = plan.on_demand_view(feast_view["name"])
        assert {f.name: f.dtype for f in view.features} == {
            f["name"]: EXPECTED_TYPES[f["dtype"]] for f in feast_view["features"]
        }
    for feast_service in exported["feature_services"]:
        service = next(s for s in plan.services if s.name == feast_service["name"])
        wanted = [
            f"{p['view']}:{f}"
            for p in feast_service["projections"]
            for f in p["features"]
            if f"feature service {feast_service['name']}: {p['view']}:{f}" not in not_converted
        ]
        assert sorted(str(r) for r in service.features) == sorted(wanted)


def test_feast_init_example(tmp_path: Path) -> None:
    python = feast_python()
    done = subprocess.run([str(python), "-m", "feast.cli.cli", "init", "demo"], cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    feast_repo = tmp_path / "demo" / "feature_repo"
    out = tmp_path / "skewless"
    answer = import_feast(feast_repo, out)
    not_converted = {n["item"] for n in answer["not_converted"]}
    unsupported = ["driver_metadata", "driver_config", "driver_profile"]  # Map, Json, Struct
    assert not_converted == {
        "source driver_hourly_stats_source",
        "feature view driver_hourly_stats_fresh: source driver_stats_push_source",
        "feature view driver_quality_labels",
        *(
            f"feature view {view}: feature {f}"
            for view in ("driver_hourly_stats", "driver_hourly_stats_fresh")
            for f in unsupported
        ),
        *(f"feature service driver_activity_v2: driver_hourly_stats:{f}" for f in unsupported),
        *(f"feature service driver_activity_v3: driver_hourly_stats_fresh:{f}" for f in unsupported),
    }
    # The file source needs its data in a SQL table, as the report says: load the example's Parquet file there.
    rows = pd.read_parquet(feast_repo / "data" / "driver_stats.parquet")
    rows["event_timestamp"] = rows["event_timestamp"].dt.tz_convert(None)
    columns = ["driver_id", "event_timestamp", "created", "conv_rate", "acc_rate", "avg_daily_trips"]
    (out / ".skewless" / "data").mkdir(parents=True)
    engine = sa.create_engine(f"sqlite:///{out}/.skewless/data/feast_sources.db")
    rows[columns].to_sql("driver_hourly_stats_source", engine, index=False)
    engine.dispose()
    plan = skewless_plan(out)
    check_against_feast(plan, export_feast_repo(feast_repo, str(python)), not_converted)

    # The carried function computes what Feast's does: conv_rate plus each request value.
    view = dict(discover(out / "definitions").objects)["transformed_conv_rate"]
    frame = pd.DataFrame(
        {
            "vals_to_add.val_to_add": [1, 2],
            "vals_to_add.val_to_add_2": [10, 20],
            "driver_hourly_stats.conv_rate": [0.5, 0.25],
            "driver_hourly_stats.acc_rate": [0.1, 0.2],
            "driver_hourly_stats.avg_daily_trips": [3, 4],
        }
    )
    result = view.function(frame)  # type: ignore[union-attr]
    assert result.to_dict("list") == {"conv_rate_plus_val1": [1.5, 2.25], "conv_rate_plus_val2": [10.5, 20.25]}


LARGER_REPO = """
from datetime import timedelta

import numpy as np
import pandas as pd
from numpy import log1p
from feast import Entity, FeatureService, FeatureView, Field, RequestSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp
from feast.value_type import ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A customer.")
merchant = Entity(name="merchant", join_keys=["merchant_code"], value_type=ValueType.STRING)

users_source = PostgreSQLSource(
    name="users_source", table="users", timestamp_field="ts", created_timestamp_column="created"
)
pairs_source = PostgreSQLSource(
    name="pairs_source",
    query="SELECT user_id, merchant_code, ts, n FROM pairs WHERE n >= 0",
    timestamp_field="ts",
)

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="user_id", dtype=Int64),
        Field(name="spend", dtype=Float64, description="Spend in EUR."),
        Field(name="visits", dtype=Int32),
        Field(name="score", dtype=Float32),
        Field(name="tier", dtype=String),
        Field(name="vip", dtype=Bool),
        Field(name="last_seen", dtype=UnixTimestamp),
        Field(name="tags", dtype=Array(String)),
    ],
    source=users_source,
    online=True,
)

user_merchant = FeatureView(
    name="user_merchant",
    entities=[user, merchant],
    ttl=timedelta(0),
    schema=[
        Field(name="user_id", dtype=Int64),
        Field(name="merchant_code", dtype=String),
        Field(name="n", dtype=Int64),
    ],
    source=pairs_source,
    online=False,
)

txn = RequestSource(name="txn", schema=[Field(name="amount", dtype=Float64)])


@on_demand_feature_view(
    sources=[user_stats, txn],
    schema=[Field(name="amount_vs_spend", dtype=Float64), Field(name="log_amount", dtype=Float64)],
)
def spend_checks(inputs: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame()
    out["amount_vs_spend"] = inputs["amount"] / inputs["spend"]
    out["log_amount"] = log1p(inputs["amount"]) + np.zeros(len(inputs))
    return out


def _scale(values):
    return values * 100.0


@on_demand_feature_view(sources=[txn], schema=[Field(name="amount_cents", dtype=Float64)])
def scaled(inputs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"amount_cents": _scale(inputs["amount"])})


risk_model = FeatureService(
    name="risk_model",
    features=[user_stats[["spend", "tier", "tags"]], user_merchant, spend_checks],
    description="The risk model's features.",
)
"""


@pytest.mark.postgres
def test_a_larger_repository_over_postgresql(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        for table in ("users", "pairs"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        conn.exec_driver_sql(
            "CREATE TABLE users (user_id BIGINT, ts TIMESTAMP, created TIMESTAMP, spend DOUBLE PRECISION, "
            "visits INTEGER, score REAL, tier TEXT, vip BOOLEAN, last_seen TIMESTAMP, tags TEXT[])"
        )
        conn.exec_driver_sql("CREATE TABLE pairs (user_id BIGINT, merchant_code TEXT, ts TIMESTAMP, n BIGINT)")
        conn.exec_driver_sql(
            "INSERT INTO users VALUES (1, %s, %s, 10.5, 3, 0.5, 'gold', true, %s, ARRAY['a'])",
            (datetime(2024, 1, 1), datetime(2024, 1, 1), datetime(2024, 1, 1)),
        )
    engine.dispose()
    where = urlsplit(postgres_url)
    feast_repo = tmp_path / "feast_repo"
    (feast_repo / "data").mkdir(parents=True)
    (feast_repo / "features.py").write_text(textwrap.dedent(LARGER_REPO))
    (feast_repo / "feature_store.yaml").write_text(
        "project: larger\nregistry: data/registry.db\nprovider: local\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        f"offline_store:\n  type: postgres\n  host: {where.hostname}\n  port: {where.port}\n"
        f"  database: {where.path.lstrip('/')}\n  user: {where.username}\n  password: unused\n  sslmode: disable\n"
        "entity_key_serialization_version: 3\n"
    )
    out = tmp_path / "skewless"
    answer = import_feast(feast_repo, out)
    not_converted = {n["item"] for n in answer["not_converted"]}
    assert not_converted == {
        "feature view user_stats: feature tags",
        "feature service risk_model: user_stats:tags",
        "on-demand view scaled",
    }
    reasons = {n["item"]: n["reason"] for n in answer["not_converted"]}
    assert "Array(String)" in reasons["feature view user_stats: feature tags"]
    assert "_scale" in reasons["on-demand view scaled"]
    config = (out / "skewless.yaml").read_text()
    assert "unused" not in config and "${FEAST_POSTGRES_PASSWORD}" in config  # the password stays out of files

    monkeypatch.setenv("FEAST_POSTGRES_PASSWORD", "unused")
    plan = skewless_plan(out)
    exported = export_feast_repo(feast_repo, str(feast_python()))
    check_against_feast(plan, exported, not_converted)
    pairs = plan.view("user_merchant")
    assert [k.name for k in pairs.join_keys] == ["user_id", "merchant_code"]
    assert pairs.source.query is not None and "FROM pairs" in pairs.source.query
    assert plan.view("user_stats").source.table == "users"
    assert plan.view("user_stats").source.created_column == "created"

    # The carried function on the frame skewless hands it gives what Feast's would: amount / spend, log1p(amount).
    view = dict(discover(out / "definitions").objects)["spend_checks"]
    frame = pd.DataFrame({"txn.amount": [5.0, 0.0], "user_stats.spend": [10.0, 4.0]})
    frame = frame.assign(**{f"user_stats.{c}": [None, None] for c in ("visits", "score", "tier", "vip", "last_seen")})
    result = view.function(frame)  # type: ignore[union-attr]
    assert result["amount_vs_spend"].tolist() == [0.5, 0.0]
    assert result["log_amount"].tolist() == pytest.approx([1.791759469228055, 0.0])
