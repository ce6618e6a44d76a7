"""``skewless serve --server granian`` (an ASGI server written in Rust) passes the tests of ``skewless serve``
under uvicorn: the same answers with 1 and 2 workers (tests/serving/test_uvicorn.py, run here with ``--server
granian`` through the ``asgi_server`` fixture it takes); HTTPS and body limits: test_granian_exposed.py."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import test_uvicorn
from tests.serving.conftest import SERVE
from tests.serving.test_uvicorn import repo, served_plan, service  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def asgi_server() -> str:
    return "granian"


def test_granian_serves_the_same_answers(service: str) -> None:  # noqa: F811
    test_uvicorn.test_serve_and_query_with_the_client(service)


def test_granian_names_a_port_it_cannot_take(repo: Path) -> None:  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", SERVE, "serve", "--repo", str(repo), "--port", str(port), "--server", "granian"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
