"""The compiled floor (bench/go_floor, built with ``go build``) answers what the Python floor answers, for the
same keys of a real Redis: the same JSON list of raw rows, null for a missing key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench import compiled_floor
from tests import servers

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ["floortest:user_profile:v3:", "floortest:user_activity:v1:"]
# Rows as skewless stores them (orjson arrays), with what a JSON encoder may escape: '<', '&', quotes, non-ASCII.
ROWS = {
    f"{PREFIXES[0]}1": '[1764547200000000,null,700,5100.5,12,"gold","<b>&x</b>"]',
    f"{PREFIXES[0]}2": '[1764547200000000,1764547201000000,650,null,3,"silver \\"q\\" é €",0.25]',
    f"{PREFIXES[1]}1": "[1764547200000000,null,3,42.0,-1]",
    f"{PREFIXES[1]}3": "[1764547200000000,null,0,0.0,0]",
}


def serve(cmd: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        servers.wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}/v1/features"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def floor_env(redis_url: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url)
    client.mset(ROWS)
    client.close()
    return {**os.environ, "FLOOR_REDIS_URL": redis_url, "FLOOR_PREFIXES": ",".join(PREFIXES)}


@pytest.fixture(scope="module")
def go_floor(floor_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = compiled_floor.build(tmp_path_factory.mktemp("go") / "go-floor")
    assert binary is not None, compiled_floor.NO_GO  # Go is installed on every machine of this project
    port = servers.free_port()
    yield from serve([str(binary), "--host", "127.0.0.1", "--port", str(port)], port, floor_env)


@pytest.fixture(scope="module")
def python_floor(floor_env: dict[str, str]) -> Iterator[str]:
    port = servers.free_port()
    cmd = [sys.executable, "-m", "bench.floor_app", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    yield from serve(cmd, port, floor_env)


def lookup(url: str, ids: list[int]) -> tuple[str, bytes]:
    body = json.dumps({"entities": {"user_id": ids}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read()


@pytest.mark.parametrize("ids", [[1], [2, 1, 3, 4], list(range(100))])  # never empty: MGET takes a key
def test_the_compiled_floor_answers_as_the_python_floor(go_floor: str, python_floor: str, ids: list[int]) -> None:
    expected = [ROWS.get(f"{prefix}{i}") for prefix in PREFIXES for i in ids]  # prefixes outer, as both build them
    go_type, go_body = lookup(go_floor, ids)
    py_type, py_body = lookup(python_floor, ids)
    assert json.loads(go_body) == json.loads(py_body) == expected
    assert go_type == py_type == "application/json"
    assert go_body == py_body  # the same bytes: no escaping of '<' or '&', nor of non-ASCII, in either


def test_the_compiled_floor_answers_health(go_floor: str) -> None:
    with urllib.request.urlopen(go_floor.replace("/v1/features", "/health"), timeout=10) as answer:
        assert json.loads(answer.read()) == {"status": "ok"}
