"""Shared fixtures: one Spark session, one redis-server and one PostgreSQL per test run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import servers


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server started for this test run (flush it yourself if a test needs it empty)."""
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[servers.RedisCluster]:
    """A real Redis Cluster for this test run: 3 primaries and 3 replicas of redis-server on loopback (its ``url``
    is the store's ``redis+cluster://`` URL). A test that stops a node must leave the cluster ok again."""
    with servers.redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a real PostgreSQL started for this test run."""
    with servers.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def spark_cluster() -> Iterator[servers.SparkCluster]:
    """A Spark standalone cluster (a master and a 2-core worker) on loopback for this test run. The test process
    keeps its local session (``spark``): jobs reach the cluster from another process whose ``skewless.yaml``
    names its master (the warm engine, a CLI command)."""
    with servers.spark_standalone() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The one local Spark session (with Delta Lake and the JDBC drivers) of this test run."""
    from offline.spark.session import get_spark, stop_spark

    # The test run is thousands of jobs in one JVM: the large run's JIT (C2, raised thresholds) ran the whole suite
    # in 18m50s where C1 alone took 24m18s.
    session = get_spark(large_run=True)
    yield session
    stop_spark()


@pytest.fixture(scope="session", params=["arrow", pytest.param("spark", marks=pytest.mark.spark)])
def offline_engine(request: pytest.FixtureRequest) -> Any:
    """A factory of one offline engine (:class:`offline.jobs.Engine`) per parameter: conformance and oracle
    tests take it, so an engine added here is held to all of them without new test code. The Spark engine uses
    the session of the ``spark`` fixture (one per process)."""
    from offline.arrow.engine import ArrowEngine
    from offline.spark.engine import SparkEngine

    if request.param == "spark":
        request.getfixturevalue("spark")
    return {"arrow": ArrowEngine, "spark": SparkEngine}[request.param]
