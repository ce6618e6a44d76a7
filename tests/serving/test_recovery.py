"""A running ``skewless serve`` through online store outages: it answers 503 quickly while the store is away, and
200 with the same values once it is back, by itself: a redis-server restarted on its port, and the embedded
server restarted (``skewless stop``, then any command) on a new port. Its log says so without a line per request.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.cli import main
from online.embedded import server_info, stop_embedded_server
from online.redis_store import RedisOnlineStore
from serving_api import log_throttle
from serving_api.log_throttle import ThrottledLog
from tests import servers
from tests.serving.conftest import CARD, eventually, publish_rows, start_serve, write_repo

CARDS = [1, 3, 9]  # publish_rows's cards with rows within the view's TTL, and one without a row
LOOKUP = {"features": ["card:limit", "card:tier"], "entities": {"card_id": CARDS}}
# What publish_rows published, as the service answers it.
EXPECTED = {"card__limit": [1000.0, "NaN", None], "card__tier": ["gold", None, None]}
BOUND = 5.0  # seconds an answer may take while the store is away (connect 1 s, read 2 s, with room to spare)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Starts ``skewless serve`` on a repository (one worker); yields a function doing that, returning the URL and
    the file its log goes to."""
    started: list[subprocess.Popen[bytes]] = []

    def start(repo: Path) -> tuple[str, Path]:
        port = servers.free_port()
        log = tmp_path / f"serve-{port}.log"
        started.append(start_serve(repo, port, log))
        return f"http://127.0.0.1:{port}", log

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def values(answer: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: column["values"] for name, column in answer["features"].items()}


def lookup(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/features", json=LOOKUP, timeout=30)


def unavailable_for_a_while(url: str, requests: int = 30) -> list[str]:
    """``requests`` lookups while the store is away: each a 503 within :data:`BOUND`; their error messages."""
    errors = []
    for _ in range(requests):
        started = time.monotonic()
        response = lookup(url)
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < BOUND
        errors.append(response.json()["error"])
    return errors


def read_directly(online_url: str, project: str) -> dict[str, list[Any]]:
    """The oracle: the rows read from the server itself, not through the service."""
    with RedisOnlineStore(online_url, project=project) as store:
        (card,) = store.read([(CARD, ["limit", "tier"])], {"card_id": CARDS})
    rows = [row or (None, None) for row in card.values]
    # The service answers NaN as "NaN" (JSON has no NaN).
    return {"card__limit": ["NaN" if v != v else v for v, _ in rows], "card__tier": [t for _, t in rows]}


@pytest.mark.redis
@pytest.mark.slow
def test_a_redis_server_restarted_on_its_port(tmp_path: Path, serve: Any) -> None:
    port = servers.free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    args = [servers.find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    args += ["--appendonly", "yes", "--save", ""]
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        servers.wait_for_port(port)
        with RedisOnlineStore(redis_url, project="outage") as store:
            publish_rows(store)
        url, log = serve(write_repo(tmp_path, redis_url, "outage"))
        assert values(lookup(url).json()) == EXPECTED

        redis_proc.terminate()  # saves its data and exits
        redis_proc.wait(10)
        started = time.monotonic()
        errors = unavailable_for_a_while(url)
        outage = time.monotonic() - started
        # The caller is told what, not where; the log names the store (its first line of the outage).
        assert all("online store cannot be reached" in e and f"{port}" not in e for e in errors)
        assert f"online store at {redis_url}" in log.read_text()
        assert httpx.get(f"{url}/health", timeout=BOUND).status_code == 503

        redis_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        eventually(lambda: lookup(url).status_code == 200, 30, log)
        assert values(lookup(url).json()) == read_directly(redis_url, "outage") == EXPECTED
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    # One warning for the outage's 30 failed lookups (plus one per 10 s it lasted), not one each.
    warned = [line for line in log.read_text().splitlines() if "lookup failed" in line]
    assert 1 <= len(warned) <= 1 + outage // log_throttle.DEFAULT_SECONDS


@pytest.mark.slow
def test_the_embedded_server_restarted_on_a_new_port(tmp_path: Path, serve: Any) -> None:
    repo = write_repo(tmp_path, "embedded", "moving")
    state_dir = repo / ".skewless"
    try:
        with RedisOnlineStore("embedded", state_dir=state_dir, project="moving") as store:
            publish_rows(store)
            old_port = server_info(state_dir)["port"]  # type: ignore[index]
        url, log = serve(repo)
        assert values(lookup(url).json()) == EXPECTED

        assert main(["stop", "--repo", str(repo)]) == 0
        errors = unavailable_for_a_while(url, requests=5)  # stopped means stopped: serve does not restart it
        assert all("online store cannot be reached" in e for e in errors) and server_info(state_dir) is None
        assert f"127.0.0.1:{old_port}" in log.read_text()  # it still looks for the server where it was

        assert main(["describe", "card", "--repo", str(repo)]) == 0  # reads the online snapshot: starts the server
        info = server_info(state_dir)
        assert info is not None and info["port"] != old_port
        eventually(lambda: lookup(url).status_code == 200, 30, log)
        assert values(lookup(url).json()) == read_directly(info["url"], "moving") == EXPECTED
        assert httpx.get(f"{url}/health", timeout=BOUND).status_code == 200
    finally:
        stop_embedded_server(state_dir)


def test_throttled_log_writes_the_first_line_then_one_per_interval_with_the_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(log_throttle.time, "monotonic", lambda: now[0])
    throttled = ThrottledLog(logging.getLogger("tests.throttle"), seconds=10)
    with caplog.at_level(logging.WARNING, logger="tests.throttle"):
        for i in range(100):  # 100 failures in 9.9 s: one line
            throttled.warning("lookup failed: %s", f"error {i}")
            now[0] += 0.099
        assert [r.getMessage() for r in caplog.records] == ["lookup failed: error 0"]
        now[0] += 0.2  # 10.1 s after the first
        throttled.warning("lookup failed: %s", "error 100")
        now[0] += 60
        throttled.warning("lookup failed: %s", "error 101")
    assert [r.getMessage() for r in caplog.records] == [
        "lookup failed: error 0",
        "lookup failed: error 100 (and 99 more like it in the last 10 s, not logged)",
        "lookup failed: error 101",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
