"""Fixtures for online-store tests: a store on the session's redis-server with a project of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from online.redis_store import RedisOnlineStore


@pytest.fixture
def project() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(redis_url: str, project: str) -> Iterator[RedisOnlineStore]:
    with RedisOnlineStore(redis_url, project=project) as s:
        yield s
