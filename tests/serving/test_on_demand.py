"""On-demand features over HTTP: computed from request_data and stored features, with clean 422s."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from features.dtypes import DType
from features.expressions import parse_expression
from features.plan import ColumnSpec, FeaturePlan, FeatureRefPlan, OnDemandViewPlan, RequestSourcePlan
from online.redis_store import RedisOnlineStore
from serving_api.app import create_app
from tests.serving.conftest import PLAN, plan_version

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.redis

INPUTS = {"req.amount": DType.FLOAT64, "card.limit": DType.FLOAT64}


def feature(name: str, dtype: DType, text: str) -> FeaturePlan:
    return FeaturePlan(name, dtype, parse_expression(text, INPUTS), name, "test")


CHECK = OnDemandViewPlan(
    name="check",
    request_sources=(RequestSourcePlan("req", (ColumnSpec("amount", DType.FLOAT64),), "test"),),
    inputs=(FeatureRefPlan("card", "limit"),),
    features=(
        feature("ratio", DType.FLOAT64, "req.amount / card.limit"),
        feature("big", DType.BOOL, "req.amount > 100.0"),
    ),
    location="test",
)
ODFV_PLAN = dataclasses.replace(PLAN, on_demand_views=(CHECK,))


@pytest.fixture
def client(online: RedisOnlineStore) -> Iterator[TestClient]:
    app = create_app(plan_provider=lambda: plan_version(ODFV_PLAN), store=online)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, body: Any) -> Any:
    return client.post("/v1/features", json=body)


def test_values_and_statuses(client: TestClient) -> None:
    # card 1: limit 1000, fresh; card 2: expired (30 days old, TTL 1 day); card 9: not published.
    answer = post(
        client,
        {
            "features": ["check:ratio", "check:big", "card:limit"],
            "entities": {"card_id": [1, 2, 9]},
            "request_data": {"amount": [250.0, 50.0, None]},
        },
    )
    assert answer.status_code == 200, answer.text
    features = answer.json()["features"]
    assert list(features) == ["check__ratio", "check__big", "card__limit"]
    assert features["check__ratio"]["values"] == [0.25, None, None]
    assert features["check__ratio"]["statuses"] == ["present", "expired", "missing"]
    # big reads only the request: it is present whatever the card's row.
    assert features["check__big"]["values"] == [True, False, None]
    assert features["check__big"]["statuses"] == ["present", "present", "present"]


@pytest.mark.parametrize(
    ("request_data", "message"),
    [
        (None, "request_data lacks the field 'amount' (float64)"),
        ({"amont": [1.0]}, "request_data lacks the field 'amount' (float64); it has: amont"),
        ({"amount": ["abc"]}, "request_data field 'amount' is float64: value 0 ('abc', str) is not a number"),
        ({"amount": [1.0, 2.0]}, "request_data field 'amount' has 2 values for 1 entities"),
        ({"amount": 3.0}, "must be a list with one value per entity"),
    ],
)
def test_bad_request_data_is_a_422_naming_the_field(client: TestClient, request_data: Any, message: str) -> None:
    body: dict[str, Any] = {"features": ["check:ratio"], "entities": {"card_id": [1]}}
    if request_data is not None:
        body["request_data"] = request_data
    answer = post(client, body)
    assert answer.status_code == 422, answer.text
    assert message in answer.text
    assert "Traceback" not in answer.text


def test_a_request_field_among_the_entities_says_where_it_belongs(client: TestClient) -> None:
    answer = post(client, {"features": ["check:ratio"], "entities": {"card_id": [1], "amount": [250.0]}})
    assert answer.status_code == 422, answer.text
    assert "unknown entity column(s) amount" in answer.text
    assert "amount is a request field of the on-demand features: pass it in request_data" in answer.text
    # A column that is neither a key nor a request field gets no such hint.
    other = post(client, {"features": ["check:ratio"], "entities": {"card_id": [1], "colour": ["red"]}})
    assert other.status_code == 422 and "request field" not in other.text
