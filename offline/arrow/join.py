"""The point-in-time join in Arrow and NumPy, for feature tables that fit in this machine's memory.

It answers exactly what :mod:`offline.spark.point_in_time` answers in Spark (same rule, same types; the conformance
tests hold both to a pandas oracle and to each other), without starting a JVM: a training set over a few
million feature rows takes seconds from a cold start instead of the ~20 s of a fresh Spark session. It is
the same algorithm too: per view, the entity rows and the feature rows are stacked, sorted by (keys, time,
feature rows before entity rows, created time), and each entity row takes the last feature row before it
with the same keys, then the TTL decides whether that value was still served.

It only selects stored rows; nothing here computes a feature value (contract 3: aggregations run in Spark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.dtypes import arrow_type, to_micros
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from offline.codes import NULL_TIME, key_codes, micros
from offline.tables import ViewTable


def point_in_time_join(entities: pa.Table, timestamp_column: str, views: Sequence[ViewTable]) -> pa.Table:
    """The ``<view>__<feature>`` columns for ``entities``, one row per entity row, in the entities' order."""

    times = micros(entities.column(timestamp_column))
    columns: dict[str, pa.Array] = {}
    for view in views:
        # As the stored key types; offline.datasets sends only key columns that cast safely (ints, strings, ...).
        keys = [entities.column(name).cast(arrow_type(dtype)) for name, dtype in view.join_keys]
        for feature, values in zip(view.features, _join_view(keys, times, view), strict=True):
            columns[view.column(feature)] = values
    return pa.table(columns)


def _join_view(entity_keys: list[pa.ChunkedArray], times: np.ndarray, view: ViewTable) -> list[pa.Array]:

    table = view.table
    present = pc.is_valid(table.column(EVENT_TIMESTAMP))
    for name, _ in view.join_keys:
        present = pc.and_(present, pc.is_valid(table.column(name)))
    table = table.filter(present)  # rows without keys or time never match anything (as in Spark)
    n_entities, n_rows = len(times), table.num_rows

    stacked_keys = [
        pa.chunked_array([*e.chunks, *table.column(name).cast(e.type).chunks], e.type)
        for e, (name, _) in zip(entity_keys, view.join_keys, strict=True)
    ]
    codes, missing = key_codes(stacked_keys)
    entity_ok = ~missing[:n_entities] & (times != NULL_TIME)
    event = micros(table.column(EVENT_TIMESTAMP))
    created = micros(table.column(CREATED_TIMESTAMP))

    # Stack the feature rows (side 0) and the entity rows that can match (side 1); sort like Spark's window.
    entity_rows = np.flatnonzero(entity_ok)
    code = np.concatenate([codes[n_entities:], codes[:n_entities][entity_rows]])
    time = np.concatenate([event, times[entity_rows]])
    side = np.concatenate([np.zeros(n_rows, np.int8), np.ones(len(entity_rows), np.int8)])
    tie = np.concatenate([created, np.zeros(len(entity_rows), np.int64)])
    order = np.lexsort((tie, side, time, code))

    # In sorted order, the position of the last feature row at or before each position.
    is_row = side[order] == 0
    last = np.maximum.accumulate(np.where(is_row, np.arange(len(order)), -1))
    at_entities = np.flatnonzero(~is_row)
    found = last[at_entities]
    sorted_code = code[order]
    same_key = (found >= 0) & (sorted_code[np.maximum(found, 0)] == sorted_code[at_entities])
    row = np.where(same_key, order[np.maximum(found, 0)], -1)  # feature row index, or -1
    entity = entity_rows[order[at_entities] - n_rows]

    match = np.full(n_entities, -1, np.int64)
    match[entity] = row
    valid = match >= 0
    age = times - event[np.maximum(match, 0)] if n_rows else np.zeros(n_entities, np.int64)
    if view.ttl_seconds is not None:
        valid &= age <= view.ttl_seconds * 1_000_000
    if view.valid_until is not None:
        valid &= times <= to_micros(view.valid_until)
    indices = pa.array(match, pa.int64(), mask=~valid)
    return [table.column(name).take(indices).combine_chunks() for name in view.features]
