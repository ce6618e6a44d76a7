"""The HTTP service in-process (TestClient) against a real redis-server."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from features.dtypes import DType
from features.errors import RegistryError
from features.registry import PlanVersion
from online.redis_store import RedisOnlineStore
from serving_api.app import create_app
from tests import servers
from tests.online.plans import make_plan, make_view
from tests.serving.conftest import CARD, MERCHANT, PLAN, plan_version

with warnings.catch_warnings():
    # Starlette >= 0.50 prefers the httpx2 package for its TestClient; httpx works the same here.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.redis


@pytest.fixture
def client(online: RedisOnlineStore) -> Iterator[TestClient]:
    with TestClient(create_app(plan_provider=plan_version, store=online), raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, body: Any) -> Any:
    return client.post("/v1/features", json=body)


def test_features_by_name(client: TestClient) -> None:
    response = post(client, {"features": ["card:limit", "card:tier"], "entities": {"card_id": [1, 2, 3, 9]}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["plan_version"] == 1
    assert answer["entities"] == {"card_id": [1, 2, 3, 9]}
    limit = answer["features"]["card__limit"]
    assert limit["values"] == [1000.0, None, "NaN", None]
    assert limit["statuses"] == ["present", "expired", "present", "missing"]
    assert limit["event_timestamps"][0].endswith("Z") and limit["event_timestamps"][3] is None
    assert answer["features"]["card__tier"]["values"] == ["gold", None, None, None]


def test_feature_service_and_view_star(client: TestClient) -> None:
    response = post(
        client,
        {
            "feature_service": "fraud",
            "entities": {"card_id": [1], "merchant": ["acme"]},
            "request_data": {"amount": 12.5},
        },
    )
    assert response.status_code == 200, response.text
    features = response.json()["features"]
    assert list(features) == ["card__limit", "merchant__risk"]
    assert features["merchant__risk"]["values"] == [7]
    response = post(client, {"features": ["card:*"], "entities": {"card_id": [1]}})
    assert list(response.json()["features"]) == ["card__limit", "card__tier"]


@pytest.mark.parametrize(
    ("body", "known"),
    [
        ({"features": ["card:nope"], "entities": {"card_id": [1]}}, ["limit", "tier"]),
        ({"features": ["nope:limit"], "entities": {"card_id": [1]}}, ["card", "history", "merchant"]),
        ({"feature_service": "nope", "entities": {"card_id": [1]}}, ["fraud"]),
    ],
)
def test_unknown_names_are_404_with_the_known_ones(client: TestClient, body: Any, known: list[str]) -> None:
    response = post(client, body)
    assert response.status_code == 404
    answer = response.json()
    assert answer["known"] == known and answer["name"] == "nope"
    assert "unknown" in answer["error"] and ", ".join(known) in answer["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"features": ["card:limit"]}, "entities: Field required"),
        ({"features": ["card:limit"], "feature_service": "fraud", "entities": {"card_id": [1]}}, "exactly one"),
        ({"entities": {"card_id": [1]}}, "exactly one"),
        ({"features": [], "entities": {"card_id": [1]}}, "features"),
        ({"features": "card:limit", "entities": {"card_id": [1]}}, "features"),
        ({"features": ["card:limit"], "entities": {"card_id": [1]}, "extra": 1}, "extra"),
        ({"features": ["card:limit"], "entities": {"card_id": [1]}, "request_data": [1]}, "request_data"),
        ({"features": ["card:limit"], "entities": {"card_id": "1"}}, "entities.card_id"),
        ({"features": ["cardlimit"], "entities": {"card_id": [1]}}, "must look like 'view:feature'"),
        ({"features": ["card:limit"], "entities": {"card_id": ["1"]}}, "'card_id' is int64: value 0 ('1', str)"),
        ({"features": ["card:limit"], "entities": {"card_id": [1.5]}}, "is not an integer"),
        ({"features": ["card:limit"], "entities": {"user": [1]}}, "missing entity column(s) card_id"),
        ({"features": ["card:limit"], "entities": {"card_id": [1], "user": [1]}}, "unknown entity column(s) user"),
        ({"features": ["history:total"], "entities": {"card_id": [1]}}, "offline-only"),
        ([1, 2], "body"),
    ],
)
def test_bad_requests_are_422_with_a_clear_message(client: TestClient, body: Any, message: str) -> None:
    response = post(client, body)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/v1/features", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]


def test_health_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "plan_version": 1}
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "FeaturesRequest" in schema["components"]["schemas"]
    assert "/v1/features" in schema["paths"]


def test_an_unreachable_store_is_503_quickly() -> None:
    down = RedisOnlineStore(f"redis://127.0.0.1:{servers.free_port()}/0")
    with TestClient(create_app(plan_provider=plan_version, store=down), raise_server_exceptions=False) as client:
        started = time.monotonic()
        response = post(client, {"features": ["card:limit"], "entities": {"card_id": [1]}})
        assert response.status_code == 503
        answer = response.json()  # a safe message: no URL, no host; the request id leads to the log line
        assert "online store" in answer["error"] and "127.0.0.1" not in answer["error"]
        assert answer["request_id"] == response.headers["x-request-id"] and answer["request_id"] in answer["error"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert time.monotonic() - started < 3


class BrokenStore:
    def read(self, *args: Any) -> Any:
        raise RuntimeError("secret internals at /srv/app.py line 12")

    def ping(self) -> None:
        raise KeyError("boom")


def test_unexpected_errors_are_500_without_a_traceback() -> None:
    app = create_app(plan_provider=plan_version, store=BrokenStore())  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        for response in (
            post(client, {"features": ["card:limit"], "entities": {"card_id": [1]}}),
            client.get("/health"),
        ):
            assert response.status_code == 500
            assert set(response.json()) == {"error", "type", "request_id"}
            assert "Traceback" not in response.text and "secret" not in response.text


def test_no_applied_plan_is_503(online: RedisOnlineStore) -> None:
    def nothing() -> PlanVersion:
        raise RegistryError("no plan has been applied to the registry yet; run 'skewless apply'")

    with TestClient(create_app(plan_provider=nothing, store=online), raise_server_exceptions=False) as client:
        response = post(client, {"features": ["card:limit"], "entities": {"card_id": [1]}})
        assert response.status_code == 503 and "skewless apply" in response.json()["error"]
        assert client.get("/health").status_code == 503


def test_a_new_plan_version_is_picked_up_without_reading_the_registry_per_request(online: RedisOnlineStore) -> None:
    calls: list[int] = []
    current = [plan_version()]
    extra = make_view("extra", [("card_id", DType.INT64)], [])

    def provider() -> PlanVersion:
        calls.append(1)
        return current[0]

    app = create_app(plan_provider=provider, store=online, refresh_seconds=0.2)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = {"features": ["card:limit"], "entities": {"card_id": [1]}}
        began = time.monotonic()
        for _ in range(20):
            assert post(client, body).json()["plan_version"] == 1
        # at most one read per refresh period (a loaded machine may stretch the 20 requests over several)
        assert len(calls) <= 2 + (time.monotonic() - began) / 0.2
        current[0] = plan_version(make_plan([CARD, MERCHANT, extra]), version=2)
        time.sleep(0.25)
        assert post(client, body).json()["plan_version"] == 2
        assert post(client, {"features": ["history:total"], "entities": {"card_id": [1]}}).status_code == 404
    assert PLAN.view("history")


def test_too_many_entities_is_422(online: RedisOnlineStore) -> None:
    app = create_app(plan_provider=plan_version, store=online, max_entities=3)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert post(client, {"features": ["card:limit"], "entities": {"card_id": [1, 2, 3]}}).status_code == 200
        response = post(client, {"features": ["card:limit"], "entities": {"card_id": [1, 2, 3, 4]}})
        assert response.status_code == 422 and "at most 3" in response.json()["error"]


def test_the_service_freezes_its_startup_objects_when_asked(online: RedisOnlineStore) -> None:
    import gc

    assert gc.get_freeze_count() == 0
    try:
        with TestClient(create_app(plan_provider=plan_version, store=online)) as client:
            assert gc.get_freeze_count() == 0  # not by default: an embedding app decides for its process
            assert post(client, {"features": ["card:limit"], "entities": {"card_id": [1]}}).status_code == 200
        app = create_app(plan_provider=plan_version, store=online, freeze_startup_objects=True)
        with TestClient(app) as client:
            assert gc.get_freeze_count() > 0
            assert post(client, {"features": ["card:limit"], "entities": {"card_id": [1]}}).status_code == 200
    finally:
        gc.unfreeze()


LOOKUPS: list[Any] = [
    {"features": ["card:limit", "card:tier"], "entities": {"card_id": [1, 2, 3, 9]}},
    {"features": ["card:nope"], "entities": {"card_id": [1]}},
    {"features": ["card:limit"], "entities": {"merchant": ["acme"]}},
    {"features": ["history:total"], "entities": {"card_id": [1]}},
    {"entities": {"card_id": [1]}},
]


def answers(client: TestClient) -> list[tuple[int, Any]]:
    """Each lookup's status and answer, sent with the caller's own request id (so the answers compare equal)."""
    same = {"x-request-id": "caller-1"}
    responses = [client.post("/v1/features", json=body, headers=same) for body in LOOKUPS]
    malformed = client.post("/v1/features", content=b"{not json", headers={"content-type": "application/json", **same})
    assert {r.headers["x-request-id"] for r in [*responses, malformed]} == {"caller-1"}
    return [(r.status_code, r.json()) for r in [*responses, malformed]]


def test_lookups_skip_the_router_and_answer_as_the_routed_endpoint_does(online: RedisOnlineStore) -> None:
    """The lookup is answered before FastAPI's middleware and router; with middleware added, or with
    OpenTelemetry on, it goes through them instead: every answer is the same either way."""
    from starlette.middleware.base import BaseHTTPMiddleware

    shortcut = create_app(plan_provider=plan_version, store=online)
    # Without its routes, only the shortcut can answer POST /v1/features.
    shortcut.router.routes = [r for r in shortcut.router.routes if getattr(r, "path", "") != "/v1/features"]
    with TestClient(shortcut, raise_server_exceptions=False) as client:
        direct = answers(client)

    seen: list[str] = []

    async def record(request: Any, call_next: Any) -> Any:
        seen.append(request.url.path)
        return await call_next(request)

    with_middleware = create_app(plan_provider=plan_version, store=online)
    with_middleware.add_middleware(BaseHTTPMiddleware, dispatch=record)
    with TestClient(with_middleware, raise_server_exceptions=False) as client:
        routed = answers(client)
    assert seen == ["/v1/features"] * len(routed)  # the middleware saw every lookup

    with TestClient(create_app(plan_provider=plan_version, store=online, opentelemetry=True)) as client:
        traced = answers(client)

    assert [status for status, _ in direct] == [200, 404, 422, 422, 422, 422]
    assert direct[0][1]["features"]["card__limit"]["values"] == [1000.0, None, "NaN", None]
    assert direct == routed == traced


def test_the_shortcut_sends_the_routed_answers_bytes_and_headers(online: RedisOnlineStore) -> None:
    """The fast path writes its answer's headers itself: the same bytes, headers and header order as the routed
    way's Starlette response, for answers and errors alike; the body is the answer's JSON, compact."""
    import json

    from starlette.middleware.base import BaseHTTPMiddleware

    async def passing(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    routed_app = create_app(plan_provider=plan_version, store=online)
    routed_app.add_middleware(BaseHTTPMiddleware, dispatch=passing)
    raw: dict[str, list[tuple[int, bytes, list[tuple[bytes, bytes]]]]] = {}
    for name, app in (("direct", create_app(plan_provider=plan_version, store=online)), ("routed", routed_app)):
        with TestClient(app, raise_server_exceptions=False) as client:
            responses = [client.post("/v1/features", json=b, headers={"x-request-id": "caller-2"}) for b in LOOKUPS]
        raw[name] = [(r.status_code, r.content, list(r.headers.raw)) for r in responses]
    assert raw["direct"] == raw["routed"]
    for _status, content, headers in raw["direct"]:
        # Oracle: the standard library's compact JSON of the decoded answer, and the headers a JSON answer has.
        decoded = json.loads(content)
        assert content == json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode()
        assert headers == [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json"),
            (b"x-request-id", b"caller-2"),
        ]
    assert [status for status, _, _ in raw["direct"]] == [200, 404, 422, 422, 422]


def test_the_lookup_shortcut_reads_a_body_in_pieces_and_lets_a_gone_client_go(online: RedisOnlineStore) -> None:
    import asyncio
    import json

    app = create_app(plan_provider=plan_version, store=online)
    body = json.dumps({"features": ["card:tier"], "entities": {"card_id": [1]}}).encode()
    headers = [(b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": "/v1/features", "root_path": "", "headers": headers}

    async def call(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    pieces = [{"type": "http.request", "body": body[i : i + 7], "more_body": True} for i in range(0, len(body), 7)]
    sent = asyncio.run(call([*pieces, {"type": "http.request", "body": b"", "more_body": False}]))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["features"]["card__tier"]["values"] == ["gold"]

    assert asyncio.run(call([pieces[0], {"type": "http.disconnect"}])) == []  # nothing to answer, no error
