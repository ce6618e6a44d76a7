"""Pushed rows into the live snapshot of a view: per entity, only when newer than the row it holds.

One Lua script (:data:`online.redis_layout.PUSH_LUA`) compares and writes each entity's row inside Redis, so two
pushes, or a push and a materialization's commit, never put an older value over a newer one whatever their
order: the script replaces a row only when the pushed one is at least as new (event time, then created time),
and keeps it in ``P:V:_pushed``, where the next commit (:data:`online.redis_layout.COMMIT_LUA`) finds it and
puts it into the new snapshot when that snapshot was computed before the push reached the offline table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from features.errors import PushConflictError
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, ViewPlan
from online.encoding import encode_batch
from online.redis_client import as_text
from online.redis_layout import PUSH_LUA, ViewKeys
from online.redis_publication import features_json, to_micros_now

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

# Entities per script call: each call holds Redis for its rows only (~1 µs each), and ARGV stays small.
PUSH_BATCH = 5_000


def push_rows(client: redis.Redis, keys: ViewKeys, view: ViewPlan, rows: pa.Table) -> int:
    """Write ``rows`` (one per entity: join keys, features in plan order, event and created time) over the live
    rows of ``view`` that are older; returns how many entities took the pushed row. A view never published gets
    a snapshot of its own (watermark -1) that its first materialization replaces. :class:`PushConflictError`
    when the live snapshot holds another definition's features (nothing is written)."""
    features = features_json(tuple((f.name, f.dtype, f.fingerprint) for f in view.features))
    applied = 0
    for batch in rows.to_batches(max_chunksize=PUSH_BATCH):
        entity_keys, encoded = encode_batch(
            batch,
            view.key_names,
            tuple(k.dtype for k in view.join_keys),
            view.feature_names,
            tuple(f.dtype for f in view.features),
            EVENT_TIMESTAMP,
            CREATED_TIMESTAMP,
        )
        args: list[Any] = [None] * (2 * len(entity_keys))
        args[0::2] = entity_keys
        args[1::2] = encoded
        status, detail = client.eval(
            PUSH_LUA,
            5,
            keys.pointer,
            keys.version,
            keys.pushed,
            keys.counter,
            keys.versions,
            view.storage_fingerprint,
            features,
            str(to_micros_now()),
            keys.data_prefix,
            *args,
        )
        if int(status) != 1:
            raise PushConflictError(
                f"view '{view.name}' is served online from another definition (features {as_text(detail) or '?'}) "
                f"than the applied plan's ({features.decode()}): materialize it, then push"
            )
        applied += int(detail)
    return applied
