"""The service exposed: tokens and scopes, content type, body limit, caps, bounded errors, secrets, request ids.

In-process (ASGI, TestClient) against the session's redis-server; the same checks through a real uvicorn are in
test_exposed.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from features.config import RepoConfig
from features.errors import ConfigError
from features.registry import PlanVersion
from online.redis_store import RedisOnlineStore
from serving_api import app as app_module
from serving_api import auth as auth_module
from serving_api.app import create_app
from serving_api.auth import Authenticator, hash_token
from serving_api.client import AccessDeniedError, InvalidRequestError, SkewlessClient
from serving_api.log_throttle import ThrottledLog
from tests import servers
from tests.online.plans import make_plan
from tests.serving.conftest import CARD, HISTORY, MERCHANT, plan_version, write_repo

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.redis

PLAN = make_plan([CARD, MERCHANT, HISTORY], services={"fraud": ["card:limit"], "risk": ["merchant:risk"]})
EVERYTHING, FRAUD_ONLY, PUSHER = "skw_everything", "skw_fraud_only", "skw_pusher"
TOKENS = {
    "admin": {"hash": hash_token(EVERYTHING), "services": ["*"]},
    "fraud_model": {"hash": hash_token(FRAUD_ONLY), "services": ["fraud"]},
    "ingest": {"hash": hash_token(PUSHER), "push": ["card"]},
}
FRAUD = {"feature_service": "fraud", "entities": {"card_id": [1]}}
RISK = {"feature_service": "risk", "entities": {"merchant": ["acme"]}}
PLAIN = {"features": ["card:limit"], "entities": {"card_id": [1]}}


def provider() -> PlanVersion:
    return plan_version(PLAN)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(online: RedisOnlineStore) -> Iterator[TestClient]:
    app = create_app(plan_provider=provider, store=online, tokens=TOKENS, max_entities=50, max_request_fields=4)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_every_route_but_health_and_the_docs_needs_a_token(client: TestClient) -> None:
    for path in ("/v1/features", "/get-online-features", "/v1/push"):
        for headers in ({}, bearer("skw_not_configured"), {"Authorization": "Token x"}):
            # text/plain and no body at all: the token is checked first, on the headers alone
            response = client.post(path, content=b"not json", headers={"content-type": "text/plain", **headers})
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["type"] == "AuthenticationError"
    assert client.get("/nowhere").status_code == 401  # unknown paths say nothing before a token
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "plan_version": 1}
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert schema["paths"]["/v1/features"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_a_token_is_scoped_to_its_feature_services(client: TestClient) -> None:
    def status(body: dict[str, Any], token: str, path: str = "/v1/features") -> int:
        return client.post(path, json=body, headers=bearer(token)).status_code

    assert status(FRAUD, FRAUD_ONLY) == 200
    assert status(RISK, FRAUD_ONLY) == 403
    assert status(PLAIN, FRAUD_ONLY) == 403  # a plain features list could name any feature: it takes '*'
    assert status(FRAUD, FRAUD_ONLY, "/get-online-features") == 200
    assert status(RISK, FRAUD_ONLY, "/get-online-features") == 403
    assert status(PLAIN, FRAUD_ONLY, "/get-online-features") == 403
    for body in (FRAUD, RISK, PLAIN):
        assert status(body, EVERYTHING) == 200
        assert status(body, PUSHER) == 403  # pushing never implies looking up
    refused = client.post("/v1/features", json=RISK, headers=bearer(FRAUD_ONLY)).json()
    assert refused["type"] == "PermissionError"
    assert "'fraud_model'" in refused["error"] and "'risk'" in refused["error"] and "fraud" in refused["error"]
    # HTTP Basic carries the token as its password (a browser prompts for it: the catalog)
    basic = base64.b64encode(b"anyone:" + FRAUD_ONLY.encode()).decode()
    assert client.post("/v1/features", json=FRAUD, headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_tokens_from_the_repository_scope_push_and_the_catalog(
    tmp_path: Path, redis_url: str, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokens of skewless.yaml (a hash from the environment too); push takes a token for the view (looking
    up never implies pushing), the catalog one for everything."""
    serving = "".join(
        f'    {name}: {{hash: "{e["hash"]}", services: {e.get("services", [])}, push: {e.get("push", [])}}}\n'
        for name, e in TOKENS.items()
    )
    monkeypatch.setenv("SKEWLESS_TEST_HASH", hash_token("skw_from_env"))
    serving = f"  tokens:\n{serving}    env: {{hash: '${{SKEWLESS_TEST_HASH}}', services: [risk]}}\n"
    repo = write_repo(tmp_path, redis_url, project, serving, PLAN)
    rows = {"card_id": [1], "limit": [5.0], "tier": ["x"], "event_timestamp": ["2024-01-01T00:00:00Z"]}
    with TestClient(create_app(repo), raise_server_exceptions=False) as client:
        assert client.post("/v1/push", json={"view": "card", "rows": rows}).status_code == 401
        for token in (FRAUD_ONLY, EVERYTHING):
            answer = client.post("/v1/push", json={"view": "card", "rows": rows}, headers=bearer(token))
            assert answer.status_code == 403 and "may not push to view 'card'" in answer.json()["error"]
        other = client.post("/v1/push", json={"view": "merchant", "rows": rows}, headers=bearer(PUSHER))
        assert other.status_code == 403 and "it may push to: card" in other.json()["error"]
        allowed = client.post("/v1/push", json={"view": "card", "rows": rows}, headers=bearer(PUSHER))
        assert allowed.status_code not in (401, 403), allowed.text  # past the scope: the push itself answers
        assert client.post("/v1/features", json=RISK, headers=bearer("skw_from_env")).status_code == 200
        assert client.post("/v1/features", json=FRAUD, headers=bearer("skw_from_env")).status_code == 403
        # the catalog: a browser gets a Basic prompt; a token that may look up everything is let in
        prompt = client.get("/ui/")
        assert prompt.status_code == 401 and prompt.headers["www-authenticate"].startswith("Basic")
        assert client.get("/ui/", headers=bearer(FRAUD_ONLY)).status_code == 403
        basic = base64.b64encode(b"me:" + EVERYTHING.encode()).decode()
        assert client.get("/ui/", headers={"Authorization": f"Basic {basic}"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/features", "/get-online-features"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_a_body_that_is_not_json_is_415_before_it_is_parsed(
    client: TestClient, path: str, content_type: str | None
) -> None:
    headers = bearer(EVERYTHING) | ({"content-type": content_type} if content_type else {})
    response = client.post(path, content=json.dumps(PLAIN).encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]
    charset = {"content-type": "application/json; charset=utf-8"}
    assert client.post(path, content=json.dumps(FRAUD), headers=bearer(EVERYTHING) | charset).status_code == 200


def asgi(app: Any, scope: dict[str, Any], messages: Iterator[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Run one request through ``app``; what it sent, and how many body messages it took from ``messages``."""
    sent: list[dict[str, Any]] = []
    taken = 0

    async def receive() -> dict[str, Any]:
        nonlocal taken
        taken += 1
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, taken


def test_a_100_mb_body_is_413_without_being_read(online: RedisOnlineStore) -> None:
    app = create_app(plan_provider=provider, store=online, tokens=TOKENS, max_body_bytes=1 << 20)
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {EVERYTHING}".encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/features", "root_path": "", "query_string": b""}
    chunk = b"x" * 65536

    def endless() -> Iterator[dict[str, Any]]:
        while True:
            yield {"type": "http.request", "body": chunk, "more_body": True}

    # A Content-Length past the limit: answered from the headers, no byte of the body taken.
    declared = [*headers, (b"content-length", b"100000000")]
    sent, taken = asgi(app, {**scope, "headers": declared}, endless())
    assert (sent[0]["status"], taken) == (413, 0)
    assert (b"connection", b"close") in sent[0]["headers"]  # uvicorn drops the connection, not the rest of 100 MB
    # No Content-Length (chunked): counted as it arrives, refused at the first chunk past 1 MiB.
    for path in ("/v1/features", "/get-online-features"):
        sent, taken = asgi(app, {**scope, "path": path, "headers": headers}, endless())
        assert sent[0]["status"] == 413
        assert taken == (1 << 20) // len(chunk) + 1
        assert "serving.max_body_bytes" in json.loads(sent[1]["body"])["error"]


def test_request_data_and_columns_count_in_the_caps(client: TestClient) -> None:
    def post(body: dict[str, Any]) -> Any:
        return client.post("/v1/features", json=body, headers=bearer(EVERYTHING))

    assert post({**PLAIN, "entities": {"card_id": list(range(50))}}).status_code == 200
    many = post({**PLAIN, "entities": {"card_id": list(range(51))}})
    assert many.status_code == 422 and "too many entities: 51; at most 50" in many.json()["error"]
    # one entity, but 51 values of request data: the request data is counted too
    data = post({**PLAIN, "request_data": {"amount": [1.0] * 51}})
    assert data.status_code == 422 and "too many entities: 51" in data.json()["error"]
    fields = post({**PLAIN, "request_data": {f"f{i}": 1 for i in range(4)}})  # 1 key + 4 fields > 4 columns
    assert fields.status_code == 422 and "too many columns: 5; at most 4" in fields.json()["error"]
    feast = client.post(
        "/get-online-features",
        json={"features": ["card:limit"], "entities": {"card_id": [1], **{f"f{i}": [1] for i in range(4)}}},
        headers=bearer(EVERYTHING),
    )
    assert feast.status_code == 422 and "too many columns" in feast.json()["error"]


def test_error_bodies_are_bounded(client: TestClient) -> None:
    huge = "n" * 900_000  # as large as the body limit lets a name be
    for body in (
        {"features": [f"card:{huge}"], "entities": {"card_id": [1]}},
        {"features": [f"{huge}:limit"], "entities": {"card_id": [1]}},
        {"feature_service": huge, "entities": {"card_id": [1]}},
    ):
        response = client.post("/v1/features", json=body, headers=bearer(EVERYTHING))
        assert response.status_code == 404
        assert len(response.content) < 3000, len(response.content)
        assert response.json()["name"].startswith("nnnn") and "more characters" in response.json()["name"]
    # a thousand wrong values, and keys as long as the limit allows: a bounded 422
    wrong = {"features": ["card:limit"], "entities": {"card_id": ["x"] * 50}, huge: 1}
    response = client.post("/v1/features", json=wrong, headers=bearer(EVERYTHING))
    assert response.status_code == 422 and len(response.content) < 3000


def test_every_answer_has_a_request_id(client: TestClient) -> None:
    answers = [
        client.get("/health"),
        client.get("/openapi.json"),
        client.post("/v1/features", json=FRAUD, headers=bearer(FRAUD_ONLY)),
        client.post("/v1/features", json=RISK, headers=bearer(FRAUD_ONLY)),
        client.post("/v1/features", json=FRAUD),
        client.post("/v1/features", content=b"{}", headers=bearer(FRAUD_ONLY) | {"content-type": "text/plain"}),
        client.post("/get-online-features", json=FRAUD, headers=bearer(FRAUD_ONLY)),
    ]
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    for answer in answers:
        if answer.status_code >= 400:
            assert answer.json()["request_id"] == answer.headers["x-request-id"]
    # the caller's id is kept when it is short and plain, replaced otherwise (it goes into log lines)
    mine = client.get("/health", headers={"x-request-id": "lb-42.a:b"})
    assert mine.headers["x-request-id"] == "lb-42.a:b"
    for junk in ("a b\\x", "x" * 65):
        assert client.get("/health", headers={"x-request-id": junk}).headers["x-request-id"] != junk


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("redis://127.0.0.1:{port}/0?password=secretQ1", ["secretQ1"]),
        ("redis://:p@ssW0rd@127.0.0.1:{port}/0", ["p@ssW0rd", "ssW0rd"]),
        ("redis://default:hunter@2@127.0.0.1:{port}/0?db=0&password=pwQ9", ["hunter", "pwQ9"]),
    ],
)
def test_redis_passwords_never_reach_answers_health_or_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, url: str, secrets: list[str]
) -> None:
    # A throttle of its own: the module's would leave out this case's line, written within 10 s of the last case's.
    monkeypatch.setattr(app_module, "_unavailable_log", ThrottledLog(app_module.logger))
    port = servers.free_port()
    url = url.format(port=port)
    down = RedisOnlineStore(url, connect_timeout=0.2, timeout=0.2)
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(plan_provider=provider, store=down), raise_server_exceptions=False) as client:
        answers = [
            client.post("/v1/features", json=PLAIN),
            client.post("/get-online-features", json=PLAIN),
            client.get("/health"),
        ]
    assert [a.status_code for a in answers] == [503, 503, 503]
    shown = [a.text for a in answers] + [str(a.headers) for a in answers] + [caplog.text, repr(down)]
    for text in shown:
        for secret in secrets:
            assert secret not in text, (secret, text[:500])
    # the log has the details (where, what failed), under the request id the caller got
    request_id = answers[0].json()["request_id"]
    assert f"request {request_id}: lookup failed: online store at redis://" in caplog.text
    assert f"127.0.0.1:{port}" in caplog.text and f"127.0.0.1:{port}" not in answers[0].text


def test_a_token_hash_is_the_sha256_of_the_token() -> None:
    assert hash_token("skw_abc") == "sha256:" + hashlib.sha256(b"skw_abc").hexdigest()


def test_a_verified_token_is_kept_and_a_refused_one_never_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grant of a header seen before comes from the table of verified headers, and still only for that exact
    header; refused headers are not kept, and the table stays bounded."""
    monkeypatch.setattr(auth_module, "VERIFIED_KEPT", 2)
    authenticator = Authenticator(TOKENS)
    header = b"Bearer " + FRAUD_ONLY.encode()
    for _ in range(2):  # first verified by hash, then from the table: the same grant both times
        grant = authenticator.grant(header)
        assert grant is not None and (grant.name, grant.may_look_up("fraud"), grant.may_look_up("risk")) == (
            "fraud_model",
            True,
            False,
        )
    assert authenticator.grant(b"Bearer " + FRAUD_ONLY.encode() + b"x") is None  # a near miss is refused
    for refused in (b"Bearer skw_guess", b"Basic !!", b"", None):
        assert authenticator.grant(refused) is None
    assert len(authenticator._verified) == 1  # only the valid header was kept
    basic = b"Basic " + base64.b64encode(b"me:" + EVERYTHING.encode())
    for valid in (basic, b"Bearer " + EVERYTHING.encode(), header):  # one past the bound: the table is emptied
        grant = authenticator.grant(valid)
        assert grant is not None and grant.name in ("admin", "fraud_model")
        assert len(authenticator._verified) <= 2


def test_the_python_client_sends_its_token_and_names_refusals(client: TestClient) -> None:
    transport = client._transport  # the app in-process, through the TestClient's transport
    with SkewlessClient("http://testserver", transport=transport, token=FRAUD_ONLY) as scoped:
        answer = scoped.get_features({"card_id": [1]}, feature_service="fraud")
        assert answer["features"]["card__limit"]["values"] == [1000.0]
        with pytest.raises(AccessDeniedError, match="HTTP 403: token 'fraud_model' may not look up"):
            scoped.get_features({"merchant": ["acme"]}, feature_service="risk")
        with pytest.raises(InvalidRequestError, match="too many entities"):
            scoped.get_features({"card_id": list(range(51))}, feature_service="fraud")
    with SkewlessClient("http://testserver", transport=transport) as anonymous:
        with pytest.raises(AccessDeniedError, match="HTTP 401: a token is required"):
            anonymous.get_features({"card_id": [1]}, feature_service="fraud")
        assert anonymous.health()["status"] == "ok"


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"m": {"hash": "sha256:abc"}}, "64 lower-case hex digits"),
        ({"m": {"hash": "md5:" + "0" * 64}}, "'skewless token create'"),
        ({"a": {"hash": hash_token("x")}, "b": {"hash": hash_token("x")}}, "same hash as 'a'"),
    ],
)
def test_a_malformed_token_entry_is_a_clear_error(tokens: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Authenticator(tokens)


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        ({"tokens": ["sha256:x"]}, "must map token names"),
        ({"tokens": {"m": "sha256:x"}}, "must be a mapping with a 'hash'"),
        ({"tokens": {"m": {"hash": "h", "scopes": ["*"]}}}, r"unknown key\(s\) \['scopes'\]; valid choices"),
        ({"tokens": {"m": {"hash": "h", "services": "fraud"}}}, "services must be a list of names"),
        ({"max_body_bytes": 0}, "serving.max_body_bytes must be a whole number of at least 1"),
        ({"max_bytes": 1}, r"unknown key\(s\) in 'serving'"),
    ],
)
def test_a_malformed_serving_section_is_a_clear_error(tmp_path: Path, serving: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RepoConfig.from_dict(tmp_path, {"serving": serving})
