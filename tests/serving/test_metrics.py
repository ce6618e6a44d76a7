"""``GET /metrics``: a real ``skewless serve --workers 2`` answers counts equal to the requests the test sent
(its own tally is the oracle), whichever worker answers the scrape; in-process: online store errors and
timeouts, the token rule, ``serving.metrics: false`` and the counters hook."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import StarletteDeprecationWarning

from online.redis_store import RedisOnlineStore
from serving_api.app import create_app
from serving_api.auth import hash_token
from serving_api.metrics import LATENCY_BUCKETS, SERVICE, SYNC_SECONDS, register_counters, service_metrics
from tests import servers
from tests.serving.conftest import CARD, MERCHANT, ROOT, SERVE, plan_version, running, write_repo

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.redis

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (the official parser: the text must parse)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(url: str, **headers: str) -> Samples:
    answer = httpx.get(f"{url}/metrics", headers={"Connection": "close", **headers})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


# (body, status, service label, statuses per view it serves), each sent several times on new connections.
LOOKUPS: list[tuple[dict[str, Any], int, str, dict[tuple[str, str], int]]] = [
    (
        {"features": ["card:limit", "card:tier"], "entities": {"card_id": [1, 2, 5]}},
        200,
        "features",
        {("card", "present"): 1, ("card", "expired"): 1, ("card", "missing"): 1},
    ),
    (
        {"feature_service": "fraud", "entities": {"card_id": [3], "merchant": ["acme"]}},
        200,
        "fraud",
        {("card", "present"): 1, ("merchant", "present"): 1},
    ),
    ({"feature_service": "nope", "entities": {"card_id": [1]}}, 404, "", {}),
    ({"features": ["card:limit"], "entities": {"card_id": ["x"]}}, 422, "features", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("asgi", ["uvicorn", "granian"])
def test_two_workers_count_every_request(tmp_path: Path, redis_url: str, online: RedisOnlineStore, asgi: str) -> None:
    repo = write_repo(tmp_path, redis_url, online.project)
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", SERVE, "serve", "--repo", str(repo), "--port", str(port), "--workers", "2"]
    command += ["--server", asgi]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    requests: Counter[tuple[str, str, str]] = Counter()  # the oracle: (endpoint, service, status) sent
    served: Counter[tuple[str, str]] = Counter()
    with running(command, url, cwd=ROOT, env=env) as pid:
        # running()'s health checks: not the test's to count. On a loaded machine one of them may time out in the
        # client and still be answered, by the worker not scraping: wait for every worker's copy of its counts.
        time.sleep(SYNC_SECONDS + 0.5)
        baseline = _requests(scrape(url))
        with httpx.Client(base_url=url, headers={"Connection": "close"}) as client:  # each request: any worker
            for _ in range(15):
                for body, status, service, statuses in LOOKUPS:
                    assert client.post("/v1/features", json=body).status_code == status
                    requests["/v1/features", service, str(status)] += 1
                    served.update(statuses)
                assert client.get("/health").status_code == 200
                requests["/health", "", "200"] += 1
            assert client.get("/no/such/path").status_code == 404
            requests["other", "", "404"] += 1
        folder = _metrics_folder(pid)
        time.sleep(SYNC_SECONDS + 0.5)  # each worker copies its counts into the shared files every SYNC_SECONDS
        scrapes = [scrape(url) for _ in range(5)]  # answered by either worker: each sees every worker's counts
        time.sleep(SYNC_SECONDS + 0.5)
        last = scrape(url)
        published = {v.name: online.live_snapshot(v) for v in (CARD, MERCHANT)}
        scraped_at = datetime.now(UTC)
        # Both workers answered (each wrote its own file), and a scrape sums them.
        assert len([f for f in os.listdir(folder) if f.startswith("counter_")]) == 2
    assert not os.path.exists(folder)  # removed at exit

    for found in scrapes:
        counted = Counter(_requests(found))
        counted.subtract(baseline)
        assert +counted == requests
        per_service: Counter[tuple[str, str]] = Counter()
        for (endpoint, service, _), count in (requests + Counter(baseline)).items():
            per_service[endpoint, service] += count
        for (endpoint, service), count in per_service.items():
            timed = value(found, "skewless_http_request_duration_seconds_count", endpoint=endpoint, service=service)
            assert timed == count
        statuses = {
            (dict(key)["view"], dict(key)["status"]): v
            for (name, key), v in found.items()
            if name == "skewless_served_statuses_total"
        }
        assert statuses == served
    # The scrapes before the last one are counted too (each once answered): the baseline and five.
    assert value(last, "skewless_http_requests_total", endpoint="/metrics", service="", status="200") == 6
    for view, live in published.items():
        assert live is not None
        age = value(last, "skewless_online_snapshot_age_seconds", view=view)
        assert 0 < age <= (scraped_at - live.published_at).total_seconds()


def _requests(found: Samples) -> dict[tuple[str, str, str], float]:
    """The request counts of a scrape, but of ``/metrics`` itself."""
    return {
        (labels["endpoint"], labels["service"], labels["status"]): v
        for (name, key), v in found.items()
        if name == "skewless_http_requests_total" and (labels := dict(key))["endpoint"] != "/metrics"
    }


def _metrics_folder(pid: int) -> str:
    """The metrics folder of the serve process ``pid``: the one under the temporary folder whose files are named
    after its workers (uvicorn's are its children; granian's may be further down, forked: /proc would show an
    environment from before ``serve`` set the variable)."""
    workers, pending = set(), [pid]
    while pending:
        for child in Path(f"/proc/{pending.pop()}/task").glob("*/children"):
            for worker in child.read_text().split():
                workers.add(worker)
                pending.append(int(worker))
    for folder in Path(tempfile.gettempdir()).glob("skewless-metrics-*"):
        if any(name.rsplit("_", 1)[-1].removesuffix(".db") in workers for name in os.listdir(folder)):
            return str(folder)
    raise AssertionError(f"no metrics folder names a worker of {pid} ({sorted(workers)})")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a Redis that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def test_online_store_errors_and_timeouts_are_counted(silent_port: int) -> None:
    errors = service_metrics().store_errors
    before = {kind: errors.labels(kind)._value.get() for kind in ("timeout", "error")}
    down = RedisOnlineStore(f"redis://127.0.0.1:{servers.free_port()}", project="p", connect_timeout=0.2)
    hung = RedisOnlineStore(f"redis://127.0.0.1:{silent_port}", project="p", connect_timeout=0.5, timeout=0.2)
    body = {"features": ["card:limit"], "entities": {"card_id": [1]}}
    for store, times in ((down, 2), (hung, 3)):
        with TestClient(create_app(plan_provider=plan_version, store=store), raise_server_exceptions=False) as client:
            for _ in range(times):
                assert client.post("/v1/features", json=body).status_code == 503
            found = samples(client.get("/metrics").text)
    assert value(found, "skewless_online_store_errors_total", kind="error") == before["error"] + 2
    assert value(found, "skewless_online_store_errors_total", kind="timeout") == before["timeout"] + 3


def test_metrics_take_a_token_when_tokens_are_configured(online: RedisOnlineStore) -> None:
    tokens = {"scraper": {"hash": hash_token("skw_scrape"), "services": []}}
    app = create_app(plan_provider=plan_version, store=online, tokens=tokens)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 401
        answer = client.get("/metrics", headers={"Authorization": "Bearer skw_scrape"})
        assert answer.status_code == 200
        assert (
            value(samples(answer.text), "skewless_http_requests_total", endpoint="/metrics", status="401", service="")
            >= 1
        )


def test_metrics_can_be_turned_off(tmp_path: Path, redis_url: str, online: RedisOnlineStore) -> None:
    repo = write_repo(tmp_path, redis_url, online.project, serving="  metrics: false\n")
    with TestClient(create_app(repo), raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 404
        assert client.app.metrics is None  # type: ignore[attr-defined]


def test_counters_kept_elsewhere_are_exported(online: RedisOnlineStore) -> None:
    kept = {"offered": 0, "dropped": 0}
    register_counters("test_served_log", lambda: dict(kept), "a test's plain counters")
    kept.update(offered=7, dropped=2)
    with TestClient(create_app(plan_provider=plan_version, store=online)) as client:
        found = samples(client.get("/metrics").text)
        kept["offered"] = 9
        time.sleep(1.5)  # the sync thread copies them without a scrape
        again = service_metrics().registry.get_sample_value("skewless_test_served_log_total", {"counter": "offered"})
    assert value(found, "skewless_test_served_log_total", counter="offered") == 7
    assert value(found, "skewless_test_served_log_total", counter="dropped") == 2
    assert again == 9


def test_serving_metrics_takes_true_or_false(tmp_path: Path) -> None:
    from features.config import RepoConfig
    from features.errors import ConfigError

    assert RepoConfig.from_dict(tmp_path, {"serving": {"metrics": False}}).metrics is False
    with pytest.raises(ConfigError, match=r"'serving\.metrics' must be true or false, not 'no'"):
        RepoConfig.from_dict(tmp_path, {"serving": {"metrics": "no"}})


def test_the_latency_histogram_holds_what_was_observed(online: RedisOnlineStore) -> None:
    """The histogram's buckets, count and sum against a plain-Python oracle over the same durations (the
    counts are copied into prometheus_client's per-bucket values: this checks that copy)."""
    metrics = service_metrics()
    durations = [0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.04, 0.9, 7.0, 12.5]
    token = SERVICE.set("histogram_test")
    try:
        for seconds in durations:
            metrics.answered("/v1/features", 200, seconds)
    finally:
        SERVICE.reset(token)
    with TestClient(create_app(plan_provider=plan_version, store=online)) as client:
        found = samples(client.get("/metrics").text)
    labels = {"endpoint": "/v1/features", "service": "histogram_test"}
    name = "skewless_http_request_duration_seconds"
    for bound in [*LATENCY_BUCKETS, float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        assert value(found, f"{name}_bucket", le=le, **labels) == sum(1 for d in durations if d <= bound), le
    assert value(found, f"{name}_count", **labels) == len(durations)
    assert value(found, f"{name}_sum", **labels) == pytest.approx(sum(durations))


def test_the_gates_refusals_are_counted_with_their_status(online: RedisOnlineStore) -> None:
    """A 415 and a 413 are answered by the gate before any route: each is counted once, with its status (the
    fast path learns the status from the gate, not from a wrapper around ``send``)."""
    app = create_app(plan_provider=plan_version, store=online, max_body_bytes=64)

    def counted(client: TestClient, status: str) -> float:
        found = samples(client.get("/metrics").text)
        return value(found, "skewless_http_requests_total", endpoint="/v1/features", status=status, service="")

    with TestClient(app, raise_server_exceptions=False) as client:
        before = {status: counted(client, status) for status in ("413", "415")}
        assert client.post("/v1/features", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
        big = {"features": ["card:limit"], "entities": {"card_id": list(range(100))}}
        assert client.post("/v1/features", json=big).status_code == 413
        assert {status: counted(client, status) - before[status] for status in before} == {"413": 1, "415": 1}
