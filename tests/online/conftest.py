"""Fixtures for online-store tests: a store on the session's redis-server with a project of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from online.redis_store import RedisOnlineStore


@pytest.fixture
def project() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["redis", "cluster"])
def online_url(request: pytest.FixtureRequest) -> str:
    """The URL of a single redis-server, then of a Redis Cluster: the store's tests run on both."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def store(online_url: str, project: str) -> Iterator[RedisOnlineStore]:
    with RedisOnlineStore(online_url, project=project) as s:
        yield s
