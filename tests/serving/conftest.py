"""A plan, published rows on the session's redis-server, and the service around them."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.dtypes import DType
from features.plan import Plan
from features.registry import PlanVersion, Registry
from online.redis_store import RedisOnlineStore
from serving_api.client import ServiceUnavailableError, SkewlessClient
from tests.online.plans import make_plan, make_view, publish

ROOT = Path(__file__).resolve().parents[2]
# ``skewless serve`` from this checkout, whichever entry points the venv has.
SERVE = """
import argparse, sys
from serving_api.commands import register_serve
parser = argparse.ArgumentParser()
register_serve(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""

CARD = make_view(
    "card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("tier", DType.STRING)], ttl_seconds=86400
)
MERCHANT = make_view("merchant", [("merchant", DType.STRING)], [("risk", DType.INT64)])
HISTORY = make_view("history", [("card_id", DType.INT64)], [("total", DType.FLOAT64)], online=False)
PLAN = make_plan([CARD, MERCHANT, HISTORY], services={"fraud": ["card:limit", "merchant:risk"]})
RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
OLD = RECENT - timedelta(days=30)


def plan_version(plan: Plan = PLAN, version: int = 1) -> PlanVersion:
    return PlanVersion(version, plan.fingerprint, datetime.now(UTC), plan)


def publish_rows(store: RedisOnlineStore) -> None:
    assert publish(
        store,
        CARD,
        [
            {"card_id": 1, "limit": 1000.0, "tier": "gold", "event_timestamp": RECENT},
            {"card_id": 2, "limit": math.inf, "tier": "", "event_timestamp": OLD},
            {"card_id": 3, "limit": math.nan, "tier": None, "event_timestamp": RECENT},
        ],
    )
    assert publish(store, MERCHANT, [{"merchant": "acme", "risk": 7, "event_timestamp": RECENT}])


@pytest.fixture
def project() -> str:
    return f"s{uuid.uuid4().hex[:12]}"


@pytest.fixture
def online(redis_url: str, project: str) -> Iterator[RedisOnlineStore]:
    with RedisOnlineStore(redis_url, project=project) as store:
        publish_rows(store)
        yield store


def write_repo(root: Path, redis_url: str, project: str, serving: str = "", plan: Plan = PLAN) -> Path:
    """A repository on ``redis_url`` with ``plan`` applied; ``serving``: the lines of its ``serving:`` section."""
    section = f"serving:\n{serving}" if serving else ""
    (root / "skewless.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///.skewless/registry.db\nonline:\n  url: {redis_url}\n{section}"
    )
    registry = Registry(f"sqlite:///{root}/.skewless/registry.db")
    registry.apply(plan)
    registry.close()
    return root


@contextlib.contextmanager
def running(command: list[str], url: str, verify: str | bool = True, **popen: object) -> Iterator[int]:
    """``command`` (a ``skewless serve``) running until it answers ``GET /health`` at ``url``; yields its pid and
    stops it after."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 30
        with SkewlessClient(url, timeout=2, verify=verify) as client:
            while True:
                try:
                    client.health()
                    break
                except ServiceUnavailableError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        stderr = proc.stderr.read().decode() if proc.stderr else ""
                        pytest.fail(f"the service did not start: {stderr[-2000:]}")
                    time.sleep(0.1)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def asgi_server() -> str:
    """The ``--server`` of every ``skewless serve`` the tests start (test_granian*.py override it: granian)."""
    return "uvicorn"


def eventually(ok: Any, seconds: float, log: Path | None = None) -> None:
    """Waits until ``ok()`` is true (a refused connection counts as not yet), failing after ``seconds`` with the
    tail of ``log``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ok():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s" + (f"; log: {log.read_text()[-2000:]}" if log else ""))
        time.sleep(0.1)


def start_serve(repo: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``skewless serve`` (one worker) on ``repo`` at ``port``, its output in ``log``, once it answers /health.
    The caller stops it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--repo", str(repo), "--port", str(port), "--workers", "1"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200, 30, log)
    except BaseException:  # pytest.fail too: a service that never answered is not left running
        proc.kill()
        proc.wait(10)
        raise
    return proc
