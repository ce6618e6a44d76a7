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
