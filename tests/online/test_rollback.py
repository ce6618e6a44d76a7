"""Rollback in the Redis store against a real redis-server: kept snapshots, the rollback, the hold, the release."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from features.errors import OnlineStoreError
from features.protocols import RollbackStore
from online.redis_store import RedisOnlineStore
from tests.online.plans import publish
from tests.online.test_redis_store import CARD, card_rows, data_versions, limits

pytestmark = pytest.mark.redis


@pytest.fixture
def keeping3(online_url: str, project: str) -> Iterator[RedisOnlineStore]:
    with RedisOnlineStore(online_url, project=project, keep_snapshots=3) as s:
        yield s


def test_a_rollback_serves_the_previous_snapshot_bit_for_bit_and_holds_the_view(keeping3: RedisOnlineStore) -> None:
    store = keeping3
    assert isinstance(store, RollbackStore)
    for watermark, value in ((1, 1.25), (2, 2.5), (3, 0.1 + 0.2)):
        assert publish(store, CARD, card_rows(value), watermark=watermark)
    assert [s.watermark for s in store.kept_snapshots("card")] == [3, 2, 1]

    previous, target = store.rollback("card", to=None, held="by ana at 2026-12-06T05:00Z")
    assert (previous, target) == ("3", "2")
    assert limits(store, [1, 2, 3]) == [2.5, 2.5, 2.5]
    live = store.live_snapshot(CARD)
    assert live is not None and live.watermark == 2 and live.held == "by ana at 2026-12-06T05:00Z"

    # Held: a newer publication is refused, says why, and leaves the rolled-back values served.
    publication = store.start_publication(CARD, watermark=4)
    publication.write([])
    assert publication.commit() is False
    assert publication.refusal is not None and "rollback" in publication.refusal
    assert limits(store, [1]) == [2.5]

    # Further back, by version; then the release lets a publication through again.
    assert store.rollback("card", to="1", held="by ana")[1] == "1"
    assert limits(store, [1]) == [1.25]
    assert store.release("card") == "by ana"
    assert store.release("card") is None
    assert publish(store, CARD, card_rows(4.0), watermark=4)
    assert limits(store, [1]) == [4.0]


def test_a_rollback_to_a_snapshot_not_kept_changes_nothing_and_names_the_kept_ones(store: RedisOnlineStore) -> None:
    for watermark in (1, 2, 3):
        assert publish(store, CARD, card_rows(float(watermark)), watermark=watermark)
    # keep_snapshots=2 (the default): the live and the previous snapshot; the first one's rows are gone.
    assert [s.version for s in store.kept_snapshots("card")] == ["3", "2"]
    assert data_versions(store, "card") == {"v2", "v3"}
    before = store.live_version("card")
    with pytest.raises(OnlineStoreError, match=r"snapshot 1 is not kept \(kept snapshots: 3, 2\)"):
        store.rollback("card", to="1", held="x")
    with pytest.raises(OnlineStoreError, match="already live"):
        store.rollback("card", to="3", held="x")
    assert store.live_version("card") == before
    assert limits(store, [1]) == [3.0]


def test_a_view_never_published_cannot_be_rolled_back(store: RedisOnlineStore) -> None:
    with pytest.raises(OnlineStoreError, match="never published"):
        store.rollback("card", to=None, held="x")
    assert store.kept_snapshots("card") == []
