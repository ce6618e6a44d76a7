"""``RedisOnlineStore.read_async``: many reads of one event loop pipelined over one connection, against a real
redis-server. The oracle is the rows published, never the store's own blocking read."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import hiredis
import pytest
import redis

from features.dtypes import DType
from features.errors import OnlineStoreError
from online.pipelined import PipelinedRedis
from online.redis_store import RedisOnlineStore
from tests.online.plans import make_view, publish, ts

pytestmark = pytest.mark.redis

CARD = make_view("card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("tier", DType.STRING)])
MERCHANT = make_view("merchant", [("merchant", DType.STRING)], [("risk", DType.INT64)])
T0 = ts("2024-01-01T00:00:00")


@pytest.fixture
def online_url(redis_url: str) -> str:
    """The single server only: these tests look at its one pipelined connection (a cluster's, one per node, are
    tested in test_redis_cluster.py)."""
    return redis_url


def card_rows(scale: float, ids: range) -> dict[int, tuple[float, str]]:
    return {i: (i * scale, f"tier{i % 7}") for i in ids}


def publish_cards(store: RedisOnlineStore, rows: dict[int, tuple[float, str]], watermark: int) -> None:
    listed = [{"card_id": i, "limit": v, "tier": t, "event_timestamp": T0} for i, (v, t) in rows.items()]
    assert publish(store, CARD, listed, watermark=watermark)


async def read_cards(store: RedisOnlineStore, ids: list[int]) -> list[Any]:
    card, merchant = await store.read_async(
        [(CARD, ["limit", "tier"]), (MERCHANT, ["risk"])], {"card_id": ids, "merchant": [f"m{i}" for i in ids]}
    )
    return [None if row is None else tuple(row) for row in card.values] + [
        None if row is None else row[0] for row in merchant.values
    ]


def lua_read_count(store: RedisOnlineStore) -> int:
    return int(store.client().info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def expected(rows: dict[int, tuple[float, str]], risks: dict[str, int], ids: list[int]) -> list[Any]:
    return [rows.get(i) for i in ids] + [risks.get(f"m{i}") for i in ids]


def test_concurrent_reads_on_one_connection_each_get_their_own_rows(store: RedisOnlineStore) -> None:
    rows = card_rows(1.5, range(1, 300))
    risks = {f"m{i}": i % 5 for i in range(1, 300, 2)}
    publish_cards(store, rows, watermark=1)
    assert publish(store, MERCHANT, [{"merchant": m, "risk": r, "event_timestamp": T0} for m, r in risks.items()])
    rng = random.Random(3)
    batches = [rng.sample(range(1, 400), rng.randint(1, 40)) for _ in range(300)]

    async def main() -> list[list[Any]]:
        await read_cards(store, [1])  # the first read of a view is the Lua read; the rest are pipelined MGETs
        return await asyncio.gather(*(read_cards(store, ids) for ids in batches))

    clients_before = len(store.client().client_list())
    answers = asyncio.run(main())
    assert answers == [expected(rows, risks, ids) for ids in batches]
    assert store._pipelined is not None and store._pipelined._protocol is not None
    assert len(store.client().client_list()) <= clients_before + 1  # 300 concurrent reads, one more connection


def test_a_new_publication_is_seen_and_each_event_loop_gets_a_connection(store: RedisOnlineStore) -> None:
    publish_cards(store, card_rows(1.0, range(1, 10)), watermark=1)
    assert asyncio.run(read_cards(store, [1, 2, 12])) == expected(card_rows(1.0, range(1, 10)), {}, [1, 2, 12])
    publish_cards(store, card_rows(2.0, range(5, 15)), watermark=2)
    # another event loop (the first one is closed), and the live version moved since the last read
    assert asyncio.run(read_cards(store, [1, 5, 12])) == expected(card_rows(2.0, range(5, 15)), {}, [1, 5, 12])
    lua_reads = lua_read_count(store)
    assert asyncio.run(read_cards(store, [5])) == expected(card_rows(2.0, range(5, 15)), {}, [5])
    assert lua_read_count(store) == lua_reads  # versions known, the unpublished view's too: one MGET only
    # a view seen unpublished (one MGET asks for its version key only) is published
    assert publish(store, MERCHANT, [{"merchant": "m5", "risk": 4, "event_timestamp": T0}])
    assert asyncio.run(read_cards(store, [5, 6])) == expected(card_rows(2.0, range(5, 15)), {"m5": 4}, [5, 6])


def test_a_dropped_connection_is_reopened_once(store: RedisOnlineStore) -> None:
    rows = card_rows(3.0, range(1, 5))
    publish_cards(store, rows, watermark=1)

    async def main() -> list[list[Any]]:
        first = await read_cards(store, [1, 2])
        await read_cards(store, [3])
        assert store._pipelined is not None and store._pipelined._protocol is not None
        # The server drops every connection but its admin one (as on a restart or a proxy's idle timeout).
        store.client().client_kill_filter(skipme=True)
        await asyncio.sleep(0.05)
        return [first, await read_cards(store, [3, 4])]

    assert asyncio.run(main()) == [expected(rows, {}, [1, 2]), expected(rows, {}, [3, 4])]


def test_a_server_that_never_answers_times_out_and_the_next_read_reconnects() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"redis://127.0.0.1:{port}/0"

        async def main() -> None:
            pipelined = PipelinedRedis(
                redis.Redis.from_url(url).connection_pool.connection_kwargs, connect_timeout=0.5, timeout=0.3
            )
            for _ in range(2):
                started = time.monotonic()
                waiting = [pipelined.call("MGET", "a"), pipelined.call("MGET", "b")]
                results = await asyncio.gather(*waiting, return_exceptions=True)
                assert [type(r) for r in results] == [redis.TimeoutError, redis.TimeoutError]
                assert time.monotonic() - started < 2
            pipelined.close()

        asyncio.run(main())

        store = RedisOnlineStore(url, connect_timeout=0.5, timeout=0.3)
        store._seen_live["card"] = (b"1", b"[]")  # as if a version had been seen: the read is the MGET
        with pytest.raises(OnlineStoreError, match="did not answer in time"):
            asyncio.run(store.read_async([(CARD, ["limit"])], {"card_id": [1]}))
        store.close()


def test_nobody_listening_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        store = RedisOnlineStore(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5, timeout=0.5)
        store._seen_live["card"] = (b"1", b"[]")
        with pytest.raises(OnlineStoreError, match=f"online store at redis://127.0.0.1:{port}/0 failed"):
            asyncio.run(store.read_async([(CARD, ["limit"])], {"card_id": [1]}))
        store.close()


def test_password_and_database_from_the_url(redis_url: str, project: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser("pipelined", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    try:
        secured = redis_url.replace("redis://", "redis://pipelined:s3cret@").rsplit("/", 1)[0] + "/5"
        with RedisOnlineStore(secured, project=project) as store:
            rows = card_rows(4.0, range(1, 4))
            publish_cards(store, rows, watermark=1)

            async def twice() -> list[Any]:
                await read_cards(store, [1])
                return await read_cards(store, [1, 2, 9])  # the pipelined MGET, authenticated, in database 5

            assert asyncio.run(twice()) == expected(rows, {}, [1, 2, 9])
        assert admin.dbsize() == 0 or not admin.keys(f"{project}:*")  # everything went to database 5
    finally:
        admin.acl_deluser("pipelined")
        admin.close()


def test_tls_stays_with_the_blocking_client() -> None:
    assert not PipelinedRedis.supports(redis.Redis.from_url("rediss://127.0.0.1:1/0").connection_pool)
    assert PipelinedRedis.supports(redis.Redis.from_url("redis://127.0.0.1:1/0").connection_pool)
    assert PipelinedRedis.supports(redis.Redis.from_url("unix:///tmp/redis.sock").connection_pool)


@pytest.mark.parametrize("count", [1, 7, 8, 100])
def test_the_mget_command_is_what_hiredis_packs(count: int) -> None:
    """SnapshotRead.mget_command packs the MGET itself from 8 entities on; hiredis is the oracle for every count."""
    from online.redis_read import SnapshotRead

    composite = make_view("pair", [("a", DType.STRING), ("b", DType.INT64)], [("x", DType.INT64)])
    requests = [(CARD, ["limit", "tier"]), (MERCHANT, ["risk"]), (composite, ["x"])]
    entities = {
        "card_id": [i * 7919 - 50 for i in range(count)],
        "merchant": [f"m{i}" if i % 3 else f"ü\r\n{'x' * i}" for i in range(count)],
        "a": [f"a,{i}" for i in range(count)],
        "b": list(range(count)),
    }
    seen: dict[str, tuple[bytes | None, bytes | None]] = {"card": (b"3", b"[]"), "merchant": (None, None)}
    seen["pair"] = (b"12@1700000000000000", b"[]")
    read = SnapshotRead("proj", seen, requests, entities)
    assert read.names is not None and len(read.names) == 3 + 2 * count  # the merchant view is unpublished
    assert read.mget_command() == hiredis.pack_command(("MGET", *read.names))


def test_a_silence_after_answered_commands_still_times_out() -> None:
    """One timer per connection: a server that answers the first command and then goes silent fails the next one
    after about its timeout (the timer armed for the first command's deadline moves on to the next's)."""
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer_once() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"+first\r\n")
                time.sleep(3)  # then silent, the connection open

        threading.Thread(target=answer_once, daemon=True).start()

        async def main() -> tuple[Any, float, type[BaseException]]:
            kwargs = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0").connection_pool.connection_kwargs
            pipelined = PipelinedRedis(kwargs, connect_timeout=1, timeout=0.4)
            first = await pipelined.call("PING")
            await asyncio.sleep(0.3)  # most of the first command's timeout gone: the next one gets its own
            started = time.monotonic()
            try:
                await pipelined.call("PING")
            except redis.RedisError as exc:
                failed: type[BaseException] = type(exc)
            pipelined.close()
            return first, time.monotonic() - started, failed

        first, waited, failed = asyncio.run(main())
    assert first == b"first" and failed is redis.TimeoutError
    assert 0.35 < waited < 1.5
