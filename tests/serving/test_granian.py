"""``skewless serve --server granian`` (an ASGI server written in Rust) answers as under uvicorn: the same
checks as tests/serving/test_uvicorn.py, on the same repository, with 2 workers."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import test_uvicorn
from tests.serving.test_uvicorn import SERVE, repo, served_plan, serving  # noqa: F401 (fixtures: a served repository)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def granian(repo: Path) -> Iterator[str]:  # noqa: F811
    with serving(repo, workers=2, server="granian") as url:
        yield url


def test_granian_serves_the_same_answers(granian: str) -> None:
    test_uvicorn.test_serve_and_query_with_the_client(granian)


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
