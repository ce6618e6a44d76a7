"""Feast's ``POST /get-online-features`` over the real app and a real redis-server: the same values as
``POST /v1/features``, in Feast's shape, checked against the rows the conftest published."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from online.redis_store import RedisOnlineStore
from serving_api.app import create_app
from tests import servers
from tests.serving.conftest import OLD, RECENT, plan_version
from tests.serving.test_on_demand import ODFV_PLAN

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.redis

EPOCH = "1970-01-01T00:00:00Z"
FEAST_STATUS = {"present": "PRESENT", "missing": "NOT_FOUND", "expired": "OUTSIDE_MAX_AGE"}


@pytest.fixture
def client(online: RedisOnlineStore) -> Iterator[TestClient]:
    app = create_app(plan_provider=lambda: plan_version(ODFV_PLAN), store=online)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def feast(client: TestClient, body: Any) -> Any:
    return client.post("/get-online-features", json=body)


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # the conftest's times are whole seconds


def columns(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(zip(answer["metadata"]["feature_names"], answer["results"], strict=True))


def test_values_statuses_and_times_are_the_stored_rows(client: TestClient) -> None:
    response = feast(
        client,
        {
            "features": ["card:limit", "card:tier", "merchant:risk"],
            "entities": {"card_id": [1, 2, 3, 9], "merchant": ["acme", "acme", "nope", "acme"]},
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["metadata"]["feature_names"] == ["card_id", "merchant", "limit", "tier", "risk"]
    got = columns(answer)
    assert got["card_id"] == {"values": [1, 2, 3, 9], "statuses": ["PRESENT"] * 4, "event_timestamps": [EPOCH] * 4}
    assert got["merchant"]["values"] == ["acme", "acme", "nope", "acme"]
    # The conftest's rows: card 1 fresh, card 2 thirty days old (TTL one day), card 3 fresh NaN, card 9 absent.
    card_times = [stamp(RECENT), stamp(OLD), stamp(RECENT), EPOCH]
    card_statuses = ["PRESENT", "OUTSIDE_MAX_AGE", "PRESENT", "NOT_FOUND"]
    assert got["limit"] == {
        "values": [1000.0, None, "NaN", None],
        "statuses": card_statuses,
        "event_timestamps": card_times,
    }
    assert got["tier"]["values"] == ["gold", None, None, None]
    assert got["risk"] == {
        "values": [7, 7, None, 7],
        "statuses": ["PRESENT", "PRESENT", "NOT_FOUND", "PRESENT"],
        "event_timestamps": [stamp(RECENT), stamp(RECENT), EPOCH, stamp(RECENT)],
    }


def test_the_same_lookup_as_the_native_api(client: TestClient) -> None:
    entities = {"card_id": [3, 1, 2, 9, 1]}
    native = client.post(
        "/v1/features", json={"feature_service": "fraud", "entities": {**entities, "merchant": ["acme"] * 5}}
    )
    door = feast(
        client,
        {"feature_service": "fraud", "entities": {"merchant": ["acme"] * 5, **entities}, "full_feature_names": True},
    )
    assert native.status_code == door.status_code == 200, door.text
    got = columns(door.json())
    assert list(got) == ["merchant", "card_id", "card__limit", "merchant__risk"]  # keys in the request's order
    for name, column in native.json()["features"].items():
        assert got[name]["values"] == column["values"]
        assert got[name]["statuses"] == [FEAST_STATUS[s] for s in column["statuses"]]
        assert got[name]["event_timestamps"] == [EPOCH if t is None else t for t in column["event_timestamps"]]


def test_on_demand_features_take_request_fields_from_the_entities(client: TestClient) -> None:
    body = {
        "features": ["check:ratio", "check:big", "card:limit"],
        # Feast's client sends request data among the entity columns, and Feast ignores columns it does not need.
        "entities": {"card_id": [1, 9], "amount": [250.0, 50.0], "unused": ["x", "y"]},
        "full_feature_names": True,
    }
    response = feast(client, body)
    assert response.status_code == 200, response.text
    got = columns(response.json())
    assert list(got) == ["card_id", "check__ratio", "check__big", "card__limit"]
    assert got["check__ratio"]["values"] == [250.0 / 1000.0, None]
    assert got["check__ratio"]["statuses"] == ["PRESENT", "NOT_FOUND"]
    assert got["check__big"] == {"values": [True, False], "statuses": ["PRESENT"] * 2, "event_timestamps": [EPOCH] * 2}
    native = client.post(
        "/v1/features",
        json={"features": body["features"], "entities": {"card_id": [1, 9]}, "request_data": {"amount": [250.0, 50.0]}},
    ).json()
    assert [got[name]["values"] for name in native["features"]] == [c["values"] for c in native["features"].values()]


def test_version_metadata_names_the_views(client: TestClient) -> None:
    body = {
        "features": ["card:limit", "merchant:risk", "card:tier"],
        "entities": {"card_id": [1], "merchant": ["acme"]},
        "include_feature_view_version_metadata": True,
    }
    metadata = feast(client, body).json()["metadata"]
    assert metadata["feature_view_metadata"] == [{"name": "card"}, {"name": "merchant"}]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"features": ["card:nope"], "entities": {"card_id": [1]}}, 404, "limit"),
        ({"features": ["nope:limit"], "entities": {"card_id": [1]}}, 404, "merchant"),
        ({"feature_service": "nope", "entities": {"card_id": [1]}}, 404, "fraud"),
        ({"features": ["card:limit"]}, 422, "entities"),
        ({"entities": {"card_id": [1]}}, 422, "exactly one of"),
        ({"features": ["card:limit"], "feature_service": "fraud", "entities": {"card_id": [1]}}, 422, "exactly one of"),
        ({"features": ["card:limit"], "entities": {"card_id": 1}}, 422, "entities.card_id"),
        ({"features": ["card:limit"], "entities": {"card": [1]}}, 422, "missing entity column(s) card_id"),
        ({"features": ["card:limit"], "entities": {"card_id": ["one"]}}, 422, "is not an integer"),
        ({"features": ["check:ratio"], "entities": {"card_id": [1]}}, 422, "request field(s) amount (float64)"),
        (
            {"features": ["card:limit"], "entities": {"card_id": [1]}, "full_feature_names": "maybe"},
            422,
            "full_feature_names",
        ),
        ({"features": ["history:total"], "entities": {"card_id": [1]}}, 422, "offline"),
    ],
)
def test_errors_follow_the_native_rules(client: TestClient, body: Any, status: int, says: str) -> None:
    response = feast(client, body)
    assert response.status_code == status, response.text
    assert says in response.text
    assert "Traceback" not in response.text


def test_names_that_collide_without_the_view_prefix_are_a_422(online: RedisOnlineStore) -> None:
    import dataclasses

    from features.dtypes import DType
    from tests.online.plans import make_plan, make_view
    from tests.serving.conftest import CARD

    other = make_view("other", [("card_id", DType.INT64)], [("limit", DType.FLOAT64)])
    plan = make_plan([CARD, other])
    app = create_app(plan_provider=lambda: plan_version(dataclasses.replace(plan)), store=online)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = {"features": ["card:limit", "other:limit"], "entities": {"card_id": [1]}}
        response = feast(client, body)
        assert response.status_code == 422 and "full_feature_names" in response.json()["error"]
        response = feast(client, {**body, "full_feature_names": True})
        assert response.status_code == 200
        assert response.json()["metadata"]["feature_names"] == ["card_id", "card__limit", "other__limit"]


def test_malformed_json_and_an_unreachable_store() -> None:
    down = RedisOnlineStore(f"redis://127.0.0.1:{servers.free_port()}/0")
    with TestClient(create_app(plan_provider=plan_version, store=down), raise_server_exceptions=False) as client:
        response = client.post("/get-online-features", content=b"{nope", headers={"content-type": "application/json"})
        assert response.status_code == 422 and "JSON" in response.json()["error"]
        response = feast(client, {"features": ["card:limit"], "entities": {"card_id": [1]}})
        assert response.status_code == 503 and "online store" in response.json()["error"]
        assert "/get-online-features" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (None, EPOCH),
        (1_700_000_000_000_000, "2023-11-14T22:13:20Z"),
        (1_700_000_000_250_000, "2023-11-14T22:13:20.250Z"),
        (1_700_000_000_000_007, "2023-11-14T22:13:20.000007Z"),
    ],
)
def test_event_times_are_written_as_feast_writes_them(micros: int | None, text: str) -> None:
    # Feast's _timestamp_to_str: no fraction when whole seconds, milliseconds when exact, else microseconds.
    from serving_api.feast_door import _feast_time

    assert _feast_time(micros) == text


def test_timestamps_and_non_finite_floats_as_feast_writes_values() -> None:
    from features.dtypes import DType
    from serving_api.feast_door import _feast_values

    when = datetime(2024, 3, 1, 12, 0, 5, 900_000, tzinfo=UTC)
    assert _feast_values(DType.TIMESTAMP, [when, None]) == [math.floor(when.timestamp()), None]
    assert _feast_values(DType.FLOAT64, [math.inf, -math.inf, 1.5]) == ["Infinity", "-Infinity", 1.5]
