"""HTTPS with tokens, and a 100 MB body refused unread with flat memory, under ``skewless serve --server granian``:
the tests of tests/serving/test_exposed.py, run with granian through the ``asgi_server`` fixture they take."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving import test_exposed
from tests.serving.test_exposed import certificate, service  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def asgi_server() -> str:
    return "granian"


@pytest.mark.parametrize("service", ["https"], indirect=True)
def test_granian_https_with_tokens(service: tuple[str, int], certificate: tuple[Path, Path]) -> None:  # noqa: F811
    test_exposed.test_https_with_tokens(service, certificate)


@pytest.mark.parametrize("service", ["http"], indirect=True)
def test_granian_refuses_a_100_mb_body_unread(service: tuple[str, int]) -> None:  # noqa: F811
    test_exposed.test_a_100_mb_body_is_refused_unread_with_flat_memory(service)
