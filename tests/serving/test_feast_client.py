"""Feast's own client against ``skewless serve``: a Feast repository whose online store is Feast's ``remote`` type,
pointed at skewless, gets the values skewless's own API serves (issue 26, "a door for Feast users")."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.plan import Plan
from tests import servers
from tests.feast.venv import feast_python, run_feast
from tests.serving.conftest import RECENT
from tests.serving.test_on_demand import ODFV_PLAN
from tests.serving.test_uvicorn import repo, service  # noqa: F401 (fixtures: skewless serve on a repository)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# The Feast side: the same entities, views, request source and service as ODFV_PLAN (tests/serving), in Feast's
# own terms. Through Feast's remote online store every lookup goes to the server: the views' source is never read
# and the on-demand function runs only in Feast's own server (and at apply, where Feast checks its schema).
FEAST_DEFINITIONS = """
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
    return pd.DataFrame({"ratio": inputs["amount"] / inputs["limit"], "big": inputs["amount"] > 100.0})

fraud = FeatureService(name="fraud", features=[card_view[["limit"]], merchant_view[["risk"]]])

store = FeatureStore(repo_path=".")
store.apply([card, merchant, card_view, merchant_view, req, check, fraud])
"""

FEAST_CLIENT = (
    FEAST_DEFINITIONS
    + """
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
)

# Feast's own feature server over the conftest's rows, written to its SQLite online store.
FEAST_FILL = (
    FEAST_DEFINITIONS
    + """
rows = json.loads(sys.argv[1])
for view, table in rows.items():
    frame = pd.DataFrame(table)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    store.write_to_online_store(view, frame)
print(json.dumps("written"))
"""
)

STORED = [
    {"card_id": 1, "merchant": "acme"},
    {"card_id": 2, "merchant": "acme"},
    {"card_id": 3, "merchant": "nope"},
    {"card_id": 9, "merchant": "acme"},
]
ON_DEMAND = [{"card_id": 1, "amount": 250.0}, {"card_id": 9, "amount": 50.0}, {"card_id": 1, "amount": 120.0}]


@pytest.fixture
def served_plan() -> Plan:
    """What test_uvicorn's ``repo`` applies for its ``service`` (skewless serve): ODFV_PLAN, on the conftest's rows."""
    return ODFV_PLAN


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
    feast = run_feast(FEAST_CLIENT, json.dumps({"stored": STORED, "on_demand": ON_DEMAND}), cwd=feast_repo)

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


# The conftest's rows (publish_rows) as Feast's server stores them, but for card 2: thirty days old, it is expired
# in skewless and served by Feast 0.67, whose online read applies no TTL (the one difference, left out here).
FEAST_ROWS = {
    "card": [
        {"card_id": 1, "limit": 1000.0, "tier": "gold", "ts": RECENT.isoformat()},
        {"card_id": 3, "limit": math.nan, "tier": None, "ts": RECENT.isoformat()},
    ],
    "merchant": [{"merchant": "acme", "risk": 7, "ts": RECENT.isoformat()}],
}
# Feast stores a NaN as null when it writes (skewless keeps NaN apart from null), so no NaN is compared.
BODIES = [
    {"features": ["card:tier"], "entities": {"card_id": [3, 1]}},
    {
        "features": ["card:limit", "card:tier", "merchant:risk"],
        "entities": {"card_id": [1, 9, 1], "merchant": ["acme", "nope", "acme"]},
    },
    {
        "features": ["merchant:risk", "card:limit"],
        "entities": {"merchant": ["acme", "x"], "card_id": [9, 1]},
        "full_feature_names": True,
    },
    {"feature_service": "fraud", "entities": {"card_id": [1, 9], "merchant": ["acme", "acme"]}},
    {
        "features": ["check:ratio", "check:big", "card:tier"],
        "entities": {"card_id": [1, 1], "amount": [250.0, 50.0]},
        "full_feature_names": True,
    },
]


@pytest.mark.parametrize("service", [1], indirect=True)
def test_the_answer_is_what_feasts_own_server_writes(tmp_path: Path, service: str) -> None:  # noqa: F811 (the fixture)
    feast_repo = tmp_path / "feast_server"
    (feast_repo / "data").mkdir(parents=True)
    (feast_repo / "feature_store.yaml").write_text(
        "project: feast_door\nregistry: data/registry.db\nprovider: local\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\nentity_key_serialization_version: 3\n"
    )
    run_feast(FEAST_FILL, json.dumps(FEAST_ROWS), cwd=feast_repo)
    port = servers.free_port()
    feast_server = subprocess.Popen(
        [str(feast_python()), "-m", "feast.cli.cli", "serve", "--port", str(port), "--no-access-log"],
        cwd=feast_repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        servers.wait_for_port(port, timeout=120)
        for body in BODIES:
            feast = httpx.post(f"http://127.0.0.1:{port}/get-online-features", json=body, timeout=30)
            ours = httpx.post(f"{service}/get-online-features", json=body, timeout=10)
            assert feast.status_code == ours.status_code == 200, feast.text + ours.text
            feast_answer, our_answer = feast.json(), ours.json()
            assert set(our_answer) <= set(feast_answer) and set(our_answer["metadata"]) == {"feature_names"}
            # Join keys first, in the request's order, in both; Feast orders a view's features by a Python set.
            keys = len([k for k in body["entities"] if k in ("card_id", "merchant")])
            feast_names, our_names = feast_answer["metadata"]["feature_names"], our_answer["metadata"]["feature_names"]
            assert our_names[:keys] == feast_names[:keys] and sorted(our_names) == sorted(feast_names)
            assert dict(zip(our_names, our_answer["results"], strict=True)) == dict(
                zip(feast_names, feast_answer["results"], strict=True)
            )
    finally:
        feast_server.terminate()
        feast_server.wait(30)
