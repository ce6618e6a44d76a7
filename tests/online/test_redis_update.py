"""Incremental publications (RedisUpdate) against a real redis-server: the changed entities go into the live
snapshot in place, never an older row over a newer one, and a snapshot that moved makes the update step aside."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from features.dtypes import DType
from online.redis_store import RedisOnlineStore
from tests.online.plans import make_batch, make_view, publish, ts

pytestmark = pytest.mark.redis

CARD = make_view("card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("tier", DType.STRING)])
T0 = ts("2024-01-01T00:00:00")


def row(card: int, limit: float, at: Any) -> dict[str, Any]:
    return {"card_id": card, "limit": limit, "tier": f"t{limit}", "event_timestamp": at}


def served(store: RedisOnlineStore, ids: list[int]) -> list[Any]:
    (answer,) = store.read([(CARD, ["limit"])], {"card_id": ids})
    return [None if r is None else r[0] for r in answer.values]


def live(store: RedisOnlineStore) -> dict[str, str]:
    pointer = store.live_version("card")
    assert pointer is not None
    return pointer


def test_an_update_writes_only_newer_rows_that_differ_and_records_the_watermark(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, [row(c, 1.0, T0) for c in (1, 2, 3)], watermark=1)
    version = live(store)["version"]
    older_staged = store.start_publication(CARD, watermark=1)  # a slow run of the version the snapshot holds
    older_staged.write([make_batch(CARD, [row(1, 0.5, T0)])])
    later = T0 + timedelta(hours=1)
    update = store.start_update(CARD, watermark=2, live_version=version)
    # 1: newer, written; 2: older than the served row, not written; 3: the served row itself, not written;
    # 4: a new entity, written.
    rows = [row(1, 9.0, later), row(2, 7.0, T0 - timedelta(hours=1)), row(3, 1.0, T0), row(4, 4.0, later)]
    assert update.write([make_batch(CARD, rows)]) == 2, update.refusal
    assert served(store, [1, 2, 3, 4]) == [9.0, 1.0, 1.0, 4.0]  # visible at once, before the commit
    assert update.commit() is True
    assert (live(store)["version"], live(store)["watermark"]) == (version, "2")
    assert older_staged.commit() is False  # an older watermark never replaces what the update wrote
    assert served(store, [1, 2, 3, 4]) == [9.0, 1.0, 1.0, 4.0]


def test_an_update_of_a_snapshot_that_moved_writes_nothing(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, [row(1, 1.0, T0)], watermark=1)
    stale = live(store)["version"]
    assert publish(store, CARD, [row(1, 2.0, T0)], watermark=2)  # a whole snapshot committed meanwhile
    update = store.start_update(CARD, watermark=3, live_version=stale)
    assert update.write([make_batch(CARD, [row(1, 9.0, T0 + timedelta(hours=1))])]) == 0
    assert update.moved is True and update.commit() is False
    assert served(store, [1]) == [2.0] and live(store)["watermark"] == "2"


def test_an_update_during_a_rollback_hold_writes_nothing(store: RedisOnlineStore) -> None:
    assert publish(store, CARD, [row(1, 1.0, T0)], watermark=1)
    assert publish(store, CARD, [row(1, 2.0, T0)], watermark=2)
    _, to = store.rollback("card", to=None, held="test")
    update = store.start_update(CARD, watermark=3, live_version=to)
    assert update.write([make_batch(CARD, [row(1, 9.0, T0 + timedelta(hours=1))])]) == 0
    assert update.commit() is False
    assert served(store, [1]) == [1.0]


# -- each in-place run is a rollback point (its undo log) ------------------------------------------------------------
IDS = [1, 2, 3, 4, 5]
T = [T0 + timedelta(hours=h) for h in range(5)]


def answer(store: RedisOnlineStore) -> list[tuple[Any, Any]]:
    """What a lookup of every entity serves: (limit, tier) and the event time, or (None, None)."""
    (got,) = store.read([(CARD, ["limit", "tier"])], {"card_id": IDS})
    return [(None if r is None else tuple(r), t) for r, t in zip(got.values, got.event_timestamps, strict=True)]


def oracle_answer(rows: dict[int, dict[str, Any]]) -> list[tuple[Any, Any]]:
    """The same, from the rows the runs published (plain Python)."""
    return [
        ((rows[i]["limit"], rows[i]["tier"]), rows[i]["event_timestamp"]) if i in rows else (None, None) for i in IDS
    ]


def update(store: RedisOnlineStore, watermark: int, rows: list[dict[str, Any]]) -> None:
    live = store.live_snapshot(CARD)
    assert live is not None and live.version is not None
    change = store.start_update(CARD, watermark=watermark, live_version=live.version)
    change.write([make_batch(CARD, rows)])
    assert change.commit() is True


def test_each_in_place_run_is_a_rollback_point_serving_what_it_served(online_url: str, project: str) -> None:
    """Whole snapshots and in-place runs, then rollbacks one point back at a time: each serves exactly what the
    lookups served after that run (a new entity disappears again, an overwritten row comes back). On a single
    server and on Redis Cluster (the undo log shares the view's hash tag)."""
    runs: list[tuple[str, int, list[dict[str, Any]]]] = [
        ("whole", 1, [row(c, 1.0, T[0]) for c in (1, 2, 3)]),
        ("in place", 2, [row(1, 2.0, T[1]), row(4, 4.0, T[1])]),
        ("in place", 3, [row(1, 3.0, T[2]), row(2, 2.5, T[2]), row(4, 4.5, T[2])]),
        ("whole", 4, [row(c, 5.0, T[3]) for c in (1, 2, 3, 4)]),
        ("in place", 5, [row(5, 6.0, T[4]), row(3, 6.5, T[4])]),
    ]
    with RedisOnlineStore(online_url, project=project, keep_snapshots=5) as store:
        oracle: dict[int, dict[str, Any]] = {}
        recorded: dict[str, list[tuple[Any, Any]]] = {}
        for kind, watermark, rows in runs:
            if kind == "whole":
                assert publish(store, CARD, rows, watermark=watermark)
                oracle = {}
            else:
                update(store, watermark, rows)
            oracle.update({r["card_id"]: r for r in rows})
            live = store.live_snapshot(CARD)
            assert live is not None and live.version is not None and live.watermark == watermark
            recorded[live.version] = answer(store)
            assert recorded[live.version] == oracle_answer(oracle)
        assert list(recorded) == ["1", "1.1", "1.2", "2", "2.1"]
        assert [s.version for s in store.kept_snapshots("card")] == ["2.1", "2", "1.2", "1.1", "1"]

        for point, watermark in (("2", 4), ("1.2", 3), ("1.1", 2), ("1", 1)):
            _, to = store.rollback("card", to=None, held="test")
            live = store.live_snapshot(CARD)
            assert (to, live and live.version, live and live.watermark) == (point, point, watermark)
            assert answer(store) == recorded[point]
        # The runs undone left no undo log; after the release an update of snapshot 1 would put its points after
        # snapshot 2's, so it steps aside (the run publishes a whole snapshot).
        undo_logs = store.view_client("card").keys(store.keys_of("card").undo_prefix + "*")
        assert undo_logs == []
        store.release("card")
        stale = store.start_update(CARD, watermark=6, live_version="1")
        assert stale.write([make_batch(CARD, [row(1, 9.0, T[4])])]) == 0 and stale.moved
        assert answer(store) == recorded["1"]


def test_undo_logs_are_kept_only_for_the_kept_points(redis_url: str, project: str) -> None:
    with RedisOnlineStore(redis_url, project=project) as store:  # keep_snapshots=2: the live point and one before
        assert publish(store, CARD, [row(c, 1.0, T0) for c in (1, 2)], watermark=1)
        for run in range(1, 11):
            update(store, run + 1, [row(1, float(run), T0 + timedelta(minutes=run))])
        before = answer(store)
        update(store, 12, [row(1, 99.0, T0 + timedelta(hours=1)), row(2, 98.0, T0 + timedelta(hours=1))])
        assert [s.version for s in store.kept_snapshots("card")] == ["1.11", "1.10"]
        undo_logs = store.view_client("card").keys(store.keys_of("card").undo_prefix + "*")
        assert len(undo_logs) <= 2
        store.rollback("card", to=None, held="test")
        assert answer(store) == before


def test_an_update_cut_short_is_repaired_by_the_next_and_stays_undoable(redis_url: str, project: str) -> None:
    """An exception halfway through an in-place write: the entities written hold their new row, the others their
    old one, and the pointer its watermark; the next run writes them all, and a rollback of it restores the rows
    from before the first try (the undo log keeps the first row it saw of each entity)."""
    with RedisOnlineStore(redis_url, project=project) as store:
        first = [row(c, 1.0, T0) for c in (1, 2, 3)]
        assert publish(store, CARD, first, watermark=1)
        before = answer(store)
        new = [row(c, 2.0, T[1]) for c in (1, 2, 3)]

        def cut_short() -> Any:
            yield make_batch(CARD, new[:2])
            raise RuntimeError("killed halfway")

        live = store.live_snapshot(CARD)
        assert live is not None and live.version == "1"
        failed = store.start_update(CARD, watermark=2, live_version=live.version)
        with pytest.raises(RuntimeError, match="killed halfway"):
            failed.write(cut_short())
        half = {r["card_id"]: r for r in [*first, *new[:2]]}
        assert answer(store) == oracle_answer(half)
        assert store.live_snapshot(CARD) == live  # not recorded: the next run starts from the same point

        update(store, 2, new)  # the next run: every entity changed since watermark 1
        assert answer(store) == oracle_answer({r["card_id"]: r for r in new})
        store.rollback("card", to=None, held="test")
        assert answer(store) == before
