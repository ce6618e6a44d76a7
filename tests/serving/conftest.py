"""A plan, published rows on the session's redis-server, and the service around them."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from features.dtypes import DType
from features.plan import Plan
from features.registry import PlanVersion
from online.redis_store import RedisOnlineStore
from tests.online.plans import make_plan, make_view, publish

CARD = make_view(
    "card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("tier", DType.STRING)], ttl_seconds=86400
)
MERCHANT = make_view("merchant", [("merchant", DType.STRING)], [("risk", DType.INT64)])
HISTORY = make_view("history", [("card_id", DType.INT64)], [("total", DType.FLOAT64)], online=False)
PLAN = make_plan([CARD, MERCHANT, HISTORY], services={"fraud": ["card:limit", "merchant:risk"]})
RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
OLD = RECENT - timedelta(days=30)


def plan_version(plan: Plan = PLAN, version: int = 1) -> PlanVersion:
    return PlanVersion(version, plan.fingerprint, datetime.now(UTC), plan)


def publish_rows(store: RedisOnlineStore) -> None:
    assert publish(
        store,
        CARD,
        [
            {"card_id": 1, "limit": 1000.0, "tier": "gold", "event_timestamp": RECENT},
            {"card_id": 2, "limit": math.inf, "tier": "", "event_timestamp": OLD},
            {"card_id": 3, "limit": math.nan, "tier": None, "event_timestamp": RECENT},
        ],
    )
    assert publish(store, MERCHANT, [{"merchant": "acme", "risk": 7, "event_timestamp": RECENT}])


@pytest.fixture
def project() -> str:
    return f"s{uuid.uuid4().hex[:12]}"


@pytest.fixture
def online(redis_url: str, project: str) -> Iterator[RedisOnlineStore]:
    with RedisOnlineStore(redis_url, project=project) as store:
        publish_rows(store)
        yield store
