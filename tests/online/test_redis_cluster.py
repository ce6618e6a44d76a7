"""The online store on a real Redis Cluster (3 primaries, 3 replicas of redis-server on loopback): where keys go, the
fan-out of a read across nodes, bad URLs, and a primary stopped under a running ``skewless serve``.

The store's general behaviour (snapshots, cleanup, rollback, reads) is tested on the cluster too: the ``store``
fixture of tests/online/conftest.py runs those tests on a single server and on the cluster. The oracles here are
the rows published and what Redis itself says (``CLUSTER KEYSLOT``, ``CLUSTER SLOTS``), never the store's own reads.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import redis

from features.dtypes import DType
from features.errors import ConfigError, OnlineStoreError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from online.redis_cluster import parse_cluster_url
from online.redis_store import RedisOnlineStore
from tests import servers
from tests.online.plans import make_view, publish, ts
from tests.serving.conftest import CARD as SERVED_CARD
from tests.serving.conftest import publish_rows, write_repo
from tests.serving.test_recovery import BOUND, EXPECTED, eventually, lookup, serve, values

__all__ = ["serve"]  # the fixture, imported for the failover test

pytestmark = pytest.mark.redis

T0 = ts("2024-01-01T00:00:00")
MERCHANT_LOOKUP = {"features": ["merchant:risk"], "entities": {"merchant": ["acme", "other"]}}


def card_view(name: str) -> Any:
    return make_view(name, [("card_id", DType.INT64)], [("limit", DType.FLOAT64)])


def slot_of(cluster: servers.RedisCluster, key: bytes | str) -> int:
    with redis.Redis(port=cluster.running()[0]) as node:
        return int(node.execute_command("CLUSTER", "KEYSLOT", key))


@pytest.fixture
def cluster_store(redis_cluster: servers.RedisCluster, project: str) -> Any:
    with RedisOnlineStore(redis_cluster.url, project=project) as store:
        yield store


def test_every_key_of_a_view_is_in_one_slot_and_views_spread(
    cluster_store: RedisOnlineStore, redis_cluster: servers.RedisCluster
) -> None:
    views = [card_view(f"card{i}") for i in range(12)]
    for view in views:
        assert publish(cluster_store, view, [{"card_id": i, "limit": 1.0, "event_timestamp": T0} for i in range(50)])
    counted = {}
    for view in views:
        node = cluster_store.view_client(view.name)
        keys = list(node.scan_iter(match=f"{{{cluster_store.project}:{view.name}}}:*", count=1000))
        assert len(keys) > 50  # the rows and the pointer, history, counter, ...
        counted[view.name] = len(keys)
        assert {slot_of(redis_cluster, key) for key in keys} == {slot_of(redis_cluster, keys[0])}
    primaries = {redis_cluster.primary_of(f"{{{cluster_store.project}:{v.name}}}") for v in views}
    assert len(primaries) >= 2  # 12 views on 3 primaries: all on one would be (1/3)^11
    assert [s.name for s in cluster_store.stored_views()] == sorted(v.name for v in views)
    assert cluster_store.delete_view("card3") == counted["card3"]
    assert "card3" not in [s.name for s in cluster_store.stored_views()]


def two_views_on_two_nodes(store: RedisOnlineStore, cluster: servers.RedisCluster) -> tuple[Any, Any]:
    first = card_view("card")
    for i in range(100):
        other = make_view(f"merchant{i}", [("merchant", DType.STRING)], [("risk", DType.INT64)])
        if cluster.primary_of(store.keys_of(other.name).pointer) != cluster.primary_of(store.keys_of("card").pointer):
            return first, other
    raise AssertionError("no view name of 100 lands on another primary")


def test_concurrent_async_reads_across_nodes_get_their_own_rows(
    cluster_store: RedisOnlineStore, redis_cluster: servers.RedisCluster
) -> None:
    card, merchant = two_views_on_two_nodes(cluster_store, redis_cluster)
    limits = {i: i * 1.5 for i in range(1, 300)}
    risks = {f"m{i}": i % 5 for i in range(1, 300, 2)}
    assert publish(cluster_store, card, [{"card_id": i, "limit": v, "event_timestamp": T0} for i, v in limits.items()])
    assert publish(
        cluster_store, merchant, [{"merchant": m, "risk": r, "event_timestamp": T0} for m, r in risks.items()]
    )
    rng = random.Random(5)
    batches = [rng.sample(range(1, 400), rng.randint(1, 30)) for _ in range(200)]

    async def read(ids: list[int]) -> list[Any]:
        got_card, got_merchant = await cluster_store.read_async(
            [(card, ["limit"]), (merchant, ["risk"])], {"card_id": ids, "merchant": [f"m{i}" for i in ids]}
        )
        return [None if r is None else r[0] for r in got_card.values + got_merchant.values]

    async def main() -> list[list[Any]]:
        await read([1])  # the first read is the Lua read, one per view on its node; then pipelined MGETs per node
        answers = await asyncio.gather(*(read(ids) for ids in batches))
        for port in {redis_cluster.primary_of(cluster_store.keys_of(v.name).pointer) for v in (card, merchant)}:
            with redis.Redis(port=port) as admin:
                admin.client_kill_filter(skipme=True)  # what a node restart does: the pipelined connections drop
        return [*answers, await read(batches[0])]  # retried on new connections

    answers = asyncio.run(main())
    assert answers == [
        [limits.get(i) for i in ids] + [risks.get(f"m{i}") for i in ids] for ids in [*batches, batches[0]]
    ]
    # The blocking read fans out the same way.
    ids = batches[0]
    got = cluster_store.read(
        [(card, ["limit"]), (merchant, ["risk"])], {"card_id": ids, "merchant": [f"m{i}" for i in ids]}
    )
    assert [None if r is None else r[0] for r in got[0].values + got[1].values] == [limits.get(i) for i in ids] + [
        risks.get(f"m{i}") for i in ids
    ]


def test_pushes_on_a_cluster_keep_the_newest_row(cluster_store: RedisOnlineStore) -> None:
    view = card_view("card")
    assert publish(cluster_store, view, [{"card_id": i, "limit": 1.0, "event_timestamp": T0} for i in range(3)])
    stamp = pa.timestamp("us", tz="UTC")

    def rows(ids: list[int], value: float, at: str) -> pa.Table:
        return pa.table(
            {
                "card_id": pa.array(ids, pa.int64()),
                "limit": pa.array([value] * len(ids), pa.float64()),
                EVENT_TIMESTAMP: pa.array([ts(at)] * len(ids), stamp),
                CREATED_TIMESTAMP: pa.array([None] * len(ids), stamp),
            }
        )

    assert cluster_store.push(view, rows([0, 5], 2.0, "2024-01-02T00:00:00")) == 2
    assert cluster_store.push(view, rows([0], 0.5, "2023-12-31T00:00:00")) == 0  # older than the live row
    (got,) = cluster_store.read([(view, ["limit"])], {"card_id": [0, 1, 5]})
    assert [None if r is None else r[0] for r in got.values] == [2.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("url", "wrong"),
    [
        ("redis+cluster://", "'' is not host:port"),
        ("redis+cluster://h1:7000,h2", "'h2' is not host:port"),
        ("redis+cluster://h1:99999", "'h1:99999' is not host:port"),
        ("redis+cluster://h1:7000/3", "a cluster has one database (0)"),
    ],
)
def test_a_malformed_cluster_url_is_a_config_error_naming_the_form(url: str, wrong: str) -> None:
    with pytest.raises(ConfigError, match="redis\\+cluster://") as caught:
        RedisOnlineStore(url)
    assert wrong in str(caught.value)


def test_the_url_gives_the_seeds_and_the_credentials() -> None:
    seeds, settings = parse_cluster_url("rediss+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001")
    assert seeds == [("10.0.0.1", 7000), ("::1", 7001)]
    assert settings == {"ssl": True, "username": "app", "password": "s@cret"}


def test_a_single_server_named_as_a_cluster_is_refused_at_once(redis_url: str) -> None:
    address = redis_url.removeprefix("redis://").removesuffix("/0")
    started = time.monotonic()
    with RedisOnlineStore(f"redis+cluster://{address}") as store, pytest.raises(OnlineStoreError) as caught:
        store.ping()
    assert time.monotonic() - started < 3
    assert "is not a Redis Cluster" in str(caught.value) and address in str(caught.value)
    assert "redis://host:port/0" in str(caught.value)


def test_no_node_listening_is_an_error_naming_the_addresses_within_a_bound() -> None:
    ports = [servers.free_port(), servers.free_port()]
    started = time.monotonic()
    with (
        RedisOnlineStore(f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}") as store,
        pytest.raises(OnlineStoreError) as caught,
    ):
        store.start_publication(card_view("card"), watermark=1)
    assert time.monotonic() - started < 5
    assert all(f"127.0.0.1:{p}" in str(caught.value) for p in ports)


@pytest.mark.slow
def test_a_primary_stopped_while_serving(
    redis_cluster: servers.RedisCluster, project: str, tmp_path: Path, serve: Any
) -> None:
    """Lookups get the right values or a 503 while the replica takes over, then the right values again, from the
    same ``skewless serve``; lookups of a view on another primary are not affected; a store started while the
    primary is down names it and publishes nothing."""
    project = next(  # the card and merchant views on two primaries
        name
        for name in (f"{project}{i}" for i in range(100))
        if redis_cluster.primary_of(f"{{{name}:card}}") != redis_cluster.primary_of(f"{{{name}:merchant}}")
    )
    with RedisOnlineStore(redis_cluster.url, project=project) as store:
        publish_rows(store)
        pointer = store.keys_of(SERVED_CARD.name).pointer
    url, log = serve(write_repo(tmp_path, redis_cluster.url, project))
    assert values(lookup(url).json()) == EXPECTED
    primary = redis_cluster.primary_of(pointer)
    redis_cluster.stop(primary)
    try:
        with RedisOnlineStore(redis_cluster.url, project=project) as late, pytest.raises(OnlineStoreError) as caught:
            late.start_publication(SERVED_CARD, watermark=99)  # before the replica is promoted (node timeout 3 s)
        assert f"127.0.0.1:{primary}" in str(caught.value)
        statuses = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = lookup(url)
            assert time.monotonic() - started < BOUND
            statuses.append(response.status_code)
            assert response.status_code in (200, 503), response.text
            other = httpx.post(f"{url}/v1/features", json=MERCHANT_LOOKUP, timeout=BOUND)
            assert other.status_code == 200, other.text
            assert values(other.json()) == {"merchant__risk": [7, None]}
            if response.status_code == 200:
                assert values(response.json()) == EXPECTED  # never a wrong value
                if 503 in statuses:
                    break
            time.sleep(0.05)
        assert 503 in statuses and statuses[-1] == 200, statuses  # an outage, then recovered by itself
        assert redis_cluster.primary_of(pointer) != primary  # the replica took over
        eventually(lambda: lookup(url).status_code == 200, 10, log)
        with RedisOnlineStore(redis_cluster.url, project=project) as after:
            assert after.live_version(SERVED_CARD.name) is not None
            assert after.live_version(SERVED_CARD.name)["watermark"] == "1"  # type: ignore[index]
            # The refused start staged nothing: no publication of the view is pending.
            assert after.view_client(SERVED_CARD.name).hlen(after.keys_of(SERVED_CARD.name).staged) == 0
    finally:
        redis_cluster.start(primary)  # it rejoins as a replica of the promoted one
        redis_cluster.wait_until_ok()
    assert httpx.get(f"{url}/health", timeout=BOUND).status_code == 200
