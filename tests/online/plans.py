"""Small plans and Arrow batches for online-store and serving tests, built from the plan dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from features.dtypes import DType
from features.expressions import Column
from features.plan import (
    CREATED_TIMESTAMP,
    EVENT_TIMESTAMP,
    ColumnSpec,
    EntityPlan,
    FeaturePlan,
    FeatureRefPlan,
    Plan,
    ServicePlan,
    SourcePlan,
    ViewPlan,
    stable_hash,
)
from features.protocols import OnlineStore

ARROW_TYPES = {
    DType.INT64: pa.int64(),
    DType.FLOAT64: pa.float64(),
    DType.STRING: pa.string(),
    DType.BOOL: pa.bool_(),
    DType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
}


def make_view(
    name: str,
    keys: Sequence[tuple[str, DType]],
    features: Sequence[tuple[str, DType]],
    *,
    ttl_seconds: int | None = None,
    online: bool = True,
    salt: str = "",
) -> ViewPlan:
    """A view whose features are plain source columns; ``salt`` changes every feature fingerprint."""
    join_keys = tuple(ColumnSpec(k, t) for k, t in keys)
    columns = (*join_keys, *(ColumnSpec(f, t) for f, t in features), ColumnSpec("ts", DType.TIMESTAMP))
    source = SourcePlan(f"{name}_source", "sqlite:///test.db", name, None, "ts", None, columns)
    plans = tuple(
        FeaturePlan(f, t, Column(t, f), stable_hash([name, f, t.value, salt]), "test.py:1") for f, t in features
    )
    storage = stable_hash([name, [p.fingerprint for p in plans]])
    return ViewPlan(
        name, tuple(k for k, _ in keys), join_keys, source, plans, ttl_seconds, online, storage, "test.py:1"
    )


def make_plan(views: Sequence[ViewPlan], services: dict[str, Sequence[str]] | None = None) -> Plan:
    entities: dict[str, EntityPlan] = {}
    for view in views:
        for key in view.join_keys:
            entities.setdefault(key.name, EntityPlan(key.name, (key,), "test.py:1"))
    service_plans = tuple(
        ServicePlan(name, tuple(FeatureRefPlan.parse(r) for r in refs), "test.py:1")
        for name, refs in (services or {}).items()
    )
    return Plan(tuple(entities.values()), tuple(views), service_plans)


def make_batch(view: ViewPlan, rows: Sequence[dict[str, Any]]) -> pa.RecordBatch:
    """Rows as dicts of key, feature, ``event_timestamp`` (and optional ``created_timestamp``) values."""
    arrays: dict[str, pa.Array] = {}
    for spec in (*view.join_keys, *(ColumnSpec(f.name, f.dtype) for f in view.features)):
        arrays[spec.name] = pa.array([r.get(spec.name) for r in rows], ARROW_TYPES[spec.dtype])
    ts = ARROW_TYPES[DType.TIMESTAMP]
    arrays[EVENT_TIMESTAMP] = pa.array([r[EVENT_TIMESTAMP] for r in rows], ts)
    arrays[CREATED_TIMESTAMP] = pa.array([r.get(CREATED_TIMESTAMP) for r in rows], ts)
    return pa.RecordBatch.from_pydict(arrays)


def publish(store: OnlineStore, view: ViewPlan, rows: Sequence[dict[str, Any]], *, watermark: int = 1) -> bool:
    publication = store.start_publication(view, watermark=watermark)
    publication.write([make_batch(view, rows)])
    return publication.commit()


def ts(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
