"""Feast's own client against ``skewless serve``: a Feast repository whose online store is Feast's ``remote`` type,
pointed at skewless, gets the values skewless's own API serves (issue 26, "a door for Feast users")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.registry import Registry
from online.redis_store import RedisOnlineStore
from tests.feast.venv import run_feast
from tests.serving.conftest import publish_rows
from tests.serving.test_on_demand import ODFV_PLAN
from tests.serving.test_uvicorn import service  # noqa: F401 (the fixture: skewless serve on ``repo``)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# The Feast side: the same entities, views, request source and service as ODFV_PLAN (tests/serving), in Feast's
# own terms. Feast's remote online store sends every lookup to the server: the views' source and the on-demand
# view's function are never run here, the registry only gives the feature service.
FEAST_SIDE = """
import json, sys
from datetime import timedelta
import pandas as pd
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Bool, Float64, Int64, String
from feast.value_type import ValueType

card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64)
merchant = Entity(name="merchant", join_keys=["merchant"], value_type=ValueType.STRING)
source = FileSource(path="rows.parquet", timestamp_field="ts")
card_view = FeatureView(
    name="card", entities=[card], ttl=timedelta(days=1), source=source,
    schema=[Field(name="card_id", dtype=Int64), Field(name="limit", dtype=Float64), Field(name="tier", dtype=String)],
)
merchant_view = FeatureView(
    name="merchant", entities=[merchant], source=source,
    schema=[Field(name="merchant", dtype=String), Field(name="risk", dtype=Int64)],
)
req = RequestSource(name="req", schema=[Field(name="amount", dtype=Float64)])

@on_demand_feature_view(
    sources=[card_view, req], schema=[Field(name="ratio", dtype=Float64), Field(name="big", dtype=Bool)]
)
def check(inputs: pd.DataFrame) -> pd.DataFrame:
    # Run by Feast at apply only (to check the schema): lookups through the remote store are skewless's.
    return pd.DataFrame({"ratio": inputs["amount"] / inputs["limit"], "big": inputs["amount"] > 100.0})

fraud = FeatureService(name="fraud", features=[card_view[["limit"]], merchant_view[["risk"]]])

store = FeatureStore(repo_path=".")
store.apply([card, merchant, card_view, merchant_view, req, check, fraud])
rows = json.loads(sys.argv[1])
answers = {
    "by_name": store.get_online_features(
        features=["card:limit", "card:tier", "merchant:risk"], entity_rows=rows["stored"]
    ).to_dict(),
    "service": store.get_online_features(
        features=store.get_feature_service("fraud"), entity_rows=rows["stored"], full_feature_names=True
    ).to_dict(),
    "on_demand": store.get_online_features(
        features=["check:ratio", "check:big", "card:limit"], entity_rows=rows["on_demand"], full_feature_names=True
    ).to_dict(),
}
print(json.dumps(answers))
"""

STORED = [
    {"card_id": 1, "merchant": "acme"},
    {"card_id": 2, "merchant": "acme"},
    {"card_id": 3, "merchant": "nope"},
    {"card_id": 9, "merchant": "acme"},
]
ON_DEMAND = [{"card_id": 1, "amount": 250.0}, {"card_id": 9, "amount": 50.0}, {"card_id": 1, "amount": 120.0}]


@pytest.fixture
def repo(tmp_path: Path, redis_url: str, project: str) -> Path:
    """A repository holding ODFV_PLAN and the conftest's rows, for test_uvicorn's ``service`` (skewless serve)."""
    repo = tmp_path / "skewless"
    repo.mkdir()
    (repo / "skewless.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///.skewless/registry.db\nonline:\n  url: {redis_url}\n"
    )
    registry = Registry(f"sqlite:///{repo}/.skewless/registry.db")
    registry.apply(ODFV_PLAN)
    registry.close()
    with RedisOnlineStore(redis_url, project=project) as store:
        publish_rows(store)
    return repo


def native(url: str, body: dict[str, Any]) -> dict[str, list[Any]]:
    """skewless's own API: the entity columns and the values of each feature, by column name."""
    response = httpx.post(f"{url}/v1/features", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    return {**answer["entities"], **{name: column["values"] for name, column in answer["features"].items()}}


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row[key] for row in rows] for key in rows[0]}


@pytest.mark.parametrize("service", [1], indirect=True)  # one worker: the two-worker case is test_uvicorn's
def test_feast_client_gets_what_skewless_serves(tmp_path: Path, service: str) -> None:  # noqa: F811 (the fixture)
    feast_repo = tmp_path / "feast_repo"
    (feast_repo / "data").mkdir(parents=True)
    (feast_repo / "feature_store.yaml").write_text(
        "project: feast_door\nregistry: data/registry.db\nprovider: local\n"
        f"online_store:\n  type: remote\n  path: {service}\nentity_key_serialization_version: 3\n"
    )
    feast = run_feast(FEAST_SIDE, json.dumps({"stored": STORED, "on_demand": ON_DEMAND}), cwd=feast_repo)

    stored = columns(STORED)
    by_name = native(service, {"features": ["card:limit", "card:tier", "merchant:risk"], "entities": stored})
    # Without full_feature_names Feast names a feature by its own name; skewless's columns are view__feature.
    assert feast["by_name"] == {name.rpartition("__")[2]: values for name, values in by_name.items()}
    assert feast["by_name"]["limit"] == [1000.0, None, "NaN", None]  # fresh, expired, NaN, absent

    service_answer = native(service, {"feature_service": "fraud", "entities": stored})
    assert feast["service"] == service_answer

    on_demand = columns(ON_DEMAND)
    computed = native(
        service,
        {
            "features": ["check:ratio", "check:big", "card:limit"],
            "entities": {"card_id": on_demand["card_id"]},
            "request_data": {"amount": on_demand["amount"]},
        },
    )
    assert feast["on_demand"] == computed
    assert feast["on_demand"]["check__ratio"] == [0.25, None, 0.12]  # amount / the card's limit of 1000
