"""The Redis online store against a real redis-server: atomic publish, cleanup, one-round-trip reads."""

from __future__ import annotations

import multiprocessing
import pickle
import socket
import threading
import time
from typing import Any

import pytest

from features.config import RepoConfig
from features.dtypes import DType, from_micros
from features.errors import OnlineStoreError
from features.plan import ViewPlan
from online import redis_publication
from online.redis_client import redact
from online.redis_publication import to_micros_now
from online.redis_store import RedisOnlineStore
from tests import servers
from tests.online.plans import make_batch, make_view, publish, ts

pytestmark = pytest.mark.redis

CARD = make_view("card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("tier", DType.STRING)])
MERCHANT = make_view("merchant", [("merchant", DType.STRING), ("country", DType.STRING)], [("risk", DType.INT64)])
T0 = ts("2024-01-01T00:00:00")


def card_rows(value: float, ids: range = range(1, 4)) -> list[dict[str, Any]]:
    return [{"card_id": i, "limit": value, "tier": f"t{value}", "event_timestamp": T0} for i in ids]


def limits(store: RedisOnlineStore, ids: list[int], view: ViewPlan = CARD) -> list[Any]:
    (answer,) = store.read([(view, ["limit"])], {"card_id": ids})
    return [None if row is None else row[0] for row in answer.values]


def data_versions(store: RedisOnlineStore, view: str) -> set[str]:
    layout = store.keys_of(view)
    keys = store.view_client(view).keys(layout.data_pattern)
    return {f"v{layout.version_of(k)}" for k in keys}


def test_staged_rows_are_invisible_until_commit(store: RedisOnlineStore) -> None:
    assert limits(store, [1]) == [None]
    publication = store.start_publication(CARD, watermark=1)
    assert publication.write([make_batch(CARD, card_rows(1.0))]) == 3
    assert limits(store, [1, 2, 3]) == [None, None, None]
    assert publication.commit() is True
    assert limits(store, [1, 2, 3, 4]) == [1.0, 1.0, 1.0, None]

    second = store.start_publication(CARD, watermark=2)
    second.write([make_batch(CARD, card_rows(2.0, range(1, 3)))])
    assert limits(store, [1, 2, 3]) == [1.0, 1.0, 1.0]
    assert second.commit() is True
    # A publication is a snapshot: entity 3 is not in it, so it is gone.
    assert limits(store, [1, 2, 3]) == [2.0, 2.0, None]


def test_abort_keeps_the_old_values_and_drops_the_staged_rows(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, card_rows(1.0))
    publication = store.start_publication(CARD, watermark=2)
    publication.write([make_batch(CARD, card_rows(9.0))])
    publication.abort()
    assert limits(store, [1, 2, 3]) == [1.0, 1.0, 1.0]
    assert data_versions(store, "card") == {"v1"}


def test_an_older_watermark_never_overwrites_a_newer_one(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, card_rows(5.0), watermark=5)
    assert publish(store, CARD, card_rows(4.0), watermark=4) is False
    assert limits(store, [1]) == [5.0]
    assert publish(store, CARD, card_rows(5.5), watermark=5) is True  # the same watermark may be republished
    assert limits(store, [1]) == [5.5]
    assert store.live_version("card") is not None
    assert store.live_version("card")["watermark"] == "5"  # type: ignore[index]
    assert data_versions(store, "card") == {"v1", "v3"}  # the refused v2 was dropped


def test_a_new_definition_goes_live_over_any_watermark_of_the_old_one(store: RedisOnlineStore) -> None:
    """A changed definition writes a new table, whose versions start again at 0: its first publication must
    replace the old definition's snapshot whatever that one's watermark, and a publication of the old definition
    started before it must not come back over it."""
    changed = make_view(
        "card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("tier", DType.STRING)], salt="2"
    )
    assert changed.storage_fingerprint != CARD.storage_fingerprint
    assert publish(store, CARD, card_rows(1.0), watermark=7)
    late_old_run = store.start_publication(CARD, watermark=8)  # an old-definition run still under way
    late_old_run.write([make_batch(CARD, card_rows(8.0))])

    assert publish(store, changed, card_rows(2.0), watermark=0)
    assert limits(store, [1, 2], changed) == [2.0, 2.0]
    assert store.live_version("card")["storage_fingerprint"] == changed.storage_fingerprint  # type: ignore[index]
    assert late_old_run.commit() is False  # started before the live snapshot, of another definition
    assert limits(store, [1], changed) == [2.0]

    assert publish(store, changed, card_rows(3.0), watermark=1)  # and the new table's versions count from there
    assert publish(store, changed, card_rows(0.5), watermark=0) is False
    assert limits(store, [1], changed) == [3.0]


def test_old_versions_are_deleted_but_the_previous_one_is_kept(store: RedisOnlineStore) -> None:
    for watermark in range(1, 6):
        assert publish(store, CARD, card_rows(float(watermark)), watermark=watermark)
    assert data_versions(store, "card") == {"v4", "v5"}
    assert limits(store, [1]) == [5.0]
    assert listed_versions(store, "card") == {"4", "5"}


def listed_versions(store: RedisOnlineStore, view: str) -> set[str]:
    return {v.decode() for v in store.view_client(view).smembers(store.keys_of(view).versions)}


def scans(store: RedisOnlineStore) -> int:
    stats = store.view_client("card").info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def test_a_commit_with_nothing_to_delete_scans_no_keys(store: RedisOnlineStore) -> None:
    before = scans(store)
    assert publish(store, CARD, card_rows(1.0), watermark=1)
    assert publish(store, CARD, card_rows(2.0), watermark=2)  # v1 becomes the previous version: kept
    assert scans(store) == before
    assert listed_versions(store, "card") == {"1", "2"}
    assert publish(store, CARD, card_rows(3.0), watermark=3)  # v1 is garbage now
    assert scans(store) > before
    assert data_versions(store, "card") == {"v2", "v3"}
    assert listed_versions(store, "card") == {"2", "3"}


def test_rows_published_before_the_versions_set_existed_are_cleaned(store: RedisOnlineStore) -> None:
    for watermark in (1, 2):
        assert publish(store, CARD, card_rows(float(watermark)), watermark=watermark)
    store.view_client("card").delete(store.keys_of("card").versions)  # as an older skewless left the store
    assert publish(store, CARD, card_rows(3.0), watermark=3)
    assert data_versions(store, "card") == {"v2", "v3"}
    assert listed_versions(store, "card") == {"2", "3"}
    assert publish(store, CARD, card_rows(4.0), watermark=4)
    assert data_versions(store, "card") == {"v3", "v4"}


def test_rows_the_versions_set_misses_go_at_the_periodic_full_scan(
    store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_publication, "FULL_SCAN_EVERY", 3)
    assert publish(store, CARD, card_rows(1.0), watermark=1)
    # A refused run's late row, written after its version was deleted.
    stray = store.keys_of("card").data_prefix + "1000:1"
    node = store.view_client("card")
    node.set(stray, b"[]")
    assert publish(store, CARD, card_rows(2.0), watermark=2)
    assert node.exists(stray)  # not listed: an ordinary commit does not look for it
    assert publish(store, CARD, card_rows(3.0), watermark=3)  # version 3: every key of the view is looked at
    assert not node.exists(stray)
    assert data_versions(store, "card") == {"v2", "v3"}
    assert listed_versions(store, "card") == {"2", "3"}


def test_a_crashed_publication_is_never_visible_and_cleaned_later(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, card_rows(1.0), watermark=1)
    crashed = store.start_publication(CARD, watermark=2)
    crashed.write([make_batch(CARD, card_rows(666.0))])  # then the process dies: no commit, no abort
    assert limits(store, [1]) == [1.0]
    assert publish(store, CARD, card_rows(2.0), watermark=2)  # the retry of the same offline version
    assert limits(store, [1]) == [2.0]
    assert data_versions(store, "card") == {"v1", "v3"}
    assert crashed.commit() is False  # too late: the retry replaced it
    assert limits(store, [1]) == [2.0]
    assert listed_versions(store, "card") == {"1", "3"}


def test_concurrent_publications_keep_a_pending_newer_one(store: RedisOnlineStore) -> None:
    newer = store.start_publication(CARD, watermark=7)
    newer.write([make_batch(CARD, card_rows(7.0))])
    older = store.start_publication(CARD, watermark=6)
    older.write([make_batch(CARD, card_rows(6.0))])
    assert older.commit() is True
    assert newer.commit() is True  # its rows survived the older one's cleanup
    assert limits(store, [1, 2, 3]) == [7.0, 7.0, 7.0]


def _write_partition(pickled: bytes, rows: list[dict[str, Any]]) -> int:
    publication = pickle.loads(pickled)
    return int(publication.write([make_batch(CARD, rows)]))


def test_a_pickled_publication_writes_from_other_processes(store: RedisOnlineStore) -> None:
    publication = store.start_publication(CARD, watermark=1)
    store.client()  # an open connection in the parent must not travel with the pickle
    pickled = pickle.dumps(publication)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        counts = pool.starmap(
            _write_partition, [(pickled, card_rows(3.0, range(0, 1500))), (pickled, card_rows(3.0, range(1500, 2600)))]
        )
    assert counts == [1500, 1100]
    assert limits(store, [0, 2599]) == [None, None]
    assert publication.commit() is True
    assert limits(store, [0, 1499, 1500, 2599, 2600]) == [3.0, 3.0, 3.0, 3.0, None]


def test_readers_never_see_a_mix_of_two_snapshots(store: RedisOnlineStore) -> None:
    ids = list(range(3000))
    assert publish(store, CARD, card_rows(0.0, range(3000)), watermark=0)
    seen: set[float] = set()
    mixed: list[set[Any]] = []
    stop = threading.Event()

    def read_loop() -> None:
        with RedisOnlineStore(store.url, project=store.project) as reader:
            while not stop.is_set():
                values = set(limits(reader, ids))
                if len(values) != 1:
                    mixed.append(values)
                seen.update(v for v in values if v is not None)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for n in range(1, 8):
            publication = store.start_publication(CARD, watermark=n)
            # Written in several batches, so a reader of the staged keys would catch them half-written.
            for start in range(0, 3000, 500):
                publication.write([make_batch(CARD, card_rows(float(n), range(start, start + 500)))])
            assert publication.commit()
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert mixed == []
    assert len(seen) > 1  # the reader did overlap with the publications


def test_one_read_is_one_round_trip_across_views(store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.connection

    assert publish(store, CARD, card_rows(1.0))
    assert publish(store, MERCHANT, [{"merchant": "m|1", "country": "FR", "risk": 3, "event_timestamp": T0}])
    requests = [(CARD, ["tier", "limit"]), (MERCHANT, ["risk"])]
    keys = {"card_id": [1, 2], "merchant": ["m|1", "m"], "country": ["FR", "1|FR"]}
    store.read(requests, keys)  # loads the script once
    sent: list[Any] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(command)
        original(self, command, check_health)

    # One round trip per server: on a cluster, one per node holding one of the views.
    servers = {store.view_client(v).connection_pool.connection_kwargs["port"] for v in ("card", "merchant")}
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    card, merchant = store.read(requests, keys)
    assert len(sent) == len(servers)
    assert card.features == ("tier", "limit")
    assert card.values == [("t1.0", 1.0), ("t1.0", 1.0)]
    assert card.event_timestamps == [T0, T0]
    assert merchant.values == [(3,), None]


def sent_commands(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The name of every command sent from now on (MGET, EVALSHA, ...), but those opening a connection."""
    import redis.connection

    sent: list[bytes] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def recording(self: Any, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes) else b"".join(command)
        name = packed.split(b"\r\n")[2].upper()  # *<n>, $<len>, then the command name
        if name not in (b"HELLO", b"CLIENT", b"AUTH", b"SELECT"):  # a new connection's handshake
            sent.append(name)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", recording)
    return sent


def test_a_reader_sees_each_commit_at_once_and_reads_with_one_mget_between(
    store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert publish(store, CARD, card_rows(1.0))
    assert limits(store, [1, 9]) == [1.0, None]  # the first read goes through the pointer script
    sent = sent_commands(monkeypatch)
    assert limits(store, [1, 9]) == [1.0, None]
    assert sent == [b"MGET"]  # the version it saw is still live: one MGET, no script
    with RedisOnlineStore(store.url, project=store.project) as other:
        assert publish(other, CARD, card_rows(2.0), watermark=2)
    sent.clear()
    assert limits(store, [1, 9]) == [2.0, None]  # never stale: the MGET saw the version move
    assert sent == [b"MGET", b"EVALSHA"]
    sent.clear()
    assert limits(store, [1, 9]) == [2.0, None]
    assert sent == [b"MGET"]


def test_a_snapshot_without_a_version_key_is_read_through_the_pointer(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, card_rows(1.0))
    store.view_client("card").delete(store.keys_of("card").version)  # as committed by skewless before the key existed
    assert limits(store, [1, 2]) == [1.0, 1.0]
    assert limits(store, [1, 2]) == [1.0, 1.0]


def test_reads_survive_the_server_dropping_every_connection(store: RedisOnlineStore) -> None:
    import redis

    assert publish(store, CARD, card_rows(1.0))
    assert limits(store, [1]) == [1.0]
    server = store.view_client("card").connection_pool.connection_kwargs
    with redis.Redis(host=server["host"], port=server["port"]) as admin:
        admin.client_kill_filter(skipme=True)  # what a server restart does to the pooled connections
    assert limits(store, [1]) == [1.0]  # the MGET path
    with RedisOnlineStore(store.url, project=store.project) as other:
        assert publish(other, CARD, card_rows(2.0), watermark=2)
    with redis.Redis(host=server["host"], port=server["port"]) as admin:
        admin.client_kill_filter(skipme=True)
    assert limits(store, [1]) == [2.0]  # the MGET path again, then the script


def test_features_of_another_definition_are_unavailable(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, card_rows(1.0))
    changed = make_view(
        "card",
        [("card_id", DType.INT64)],
        [("limit", DType.FLOAT64), ("tier", DType.STRING)],
        salt="changed expression",
    )
    (answer,) = store.read([(changed, ["limit"])], {"card_id": [1]})
    assert answer.unavailable == {"limit"} and answer.values == [(None,)]
    grown = make_view(
        "card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("tier", DType.STRING), ("new", DType.BOOL)]
    )
    (answer,) = store.read([(grown, ["new", "limit"])], {"card_id": [1]})
    assert answer.unavailable == {"new"} and answer.values == [(None, 1.0)]


def test_from_config(online_url: str, project: str, tmp_path: Any) -> None:
    (tmp_path / "skewless.yaml").write_text(f"project: {project}\nonline:\n  url: {online_url}\n")
    config = RepoConfig.load(tmp_path)
    with RedisOnlineStore.from_config(config) as store:
        assert store.cluster is online_url.startswith("redis+cluster://")
        assert publish(store, CARD, card_rows(1.0))
        assert limits(store, [1]) == [1.0]


def test_an_unreachable_server_fails_fast() -> None:
    store = RedisOnlineStore(f"redis://127.0.0.1:{servers.free_port()}/0", connect_timeout=0.5, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(OnlineStoreError, match=r"online store at redis://127\.0\.0\.1"):
        store.read([(CARD, ["limit"])], {"card_id": [1]})
    with pytest.raises(OnlineStoreError):
        store.start_publication(CARD, watermark=1)
    with pytest.raises(OnlineStoreError):
        store.ping()
    assert time.monotonic() - started < 3


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = RedisOnlineStore(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(OnlineStoreError, match="did not answer in time"):
            store.read([(CARD, ["limit"])], {"card_id": [1]})
        assert time.monotonic() - started < 3
        store.close()


def test_messages_hide_passwords() -> None:
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("rediss://:secret@host/0") == "rediss://:***@host/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


def test_live_snapshot_says_what_the_live_rows_were_published_from(store: RedisOnlineStore) -> None:
    assert store.live_snapshot(CARD) is None  # nothing committed yet
    before = from_micros(to_micros_now())
    publication = store.start_publication(CARD, watermark=4)
    publication.write([make_batch(CARD, card_rows(1.0))])
    assert store.live_snapshot(CARD) is None  # staged is not live
    assert publication.commit() is True
    live = store.live_snapshot(CARD)
    assert live is not None
    assert live.watermark == 4
    assert live.storage_fingerprint == CARD.storage_fingerprint
    assert live.feature_fingerprints == tuple((f.name, f.fingerprint) for f in CARD.features)
    assert before <= live.published_at <= from_micros(to_micros_now())
    refused = store.start_publication(CARD, watermark=3)  # older: refused, the live snapshot stays
    refused.write([make_batch(CARD, card_rows(9.0))])
    assert refused.commit() is False
    assert store.live_snapshot(CARD) == live


def test_a_url_no_connection_can_use_is_a_config_error_at_once() -> None:
    """redis-py would take the URL and fail every connection with a TypeError (every request a server error)."""
    from features.errors import ConfigError

    with pytest.raises(ConfigError, match=r"query parameter redis-py does not take.*known ones: db, ") as raised:
        RedisOnlineStore("redis://127.0.0.1:1/0?token=secret")
    assert "secret" not in str(raised.value)
    RedisOnlineStore("redis://127.0.0.1:1/0?password=x&socket_timeout=2")  # parameters it takes are fine
