"""Entity-key and row encoding: exact round trips for every dtype, and keys that never collide."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from features.dtypes import DType
from features.protocols import column_values
from online.encoding import (
    decode_entity_key,
    decode_row,
    encode_batch,
    encode_entity_key,
    encode_entity_keys,
    encode_row,
    rows_decoder,
    to_micros,
)
from tests.online.plans import ARROW_TYPES

MIN_TS = datetime(1, 1, 1, tzinfo=UTC)
MAX_TS = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

VALUES = {
    DType.INT64: st.integers(-(2**63), 2**63 - 1),
    DType.FLOAT64: st.floats(allow_nan=True, allow_infinity=True),
    DType.STRING: st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    DType.BOOL: st.booleans(),
    DType.TIMESTAMP: st.datetimes(
        min_value=MIN_TS.replace(tzinfo=None), max_value=MAX_TS.replace(tzinfo=None), timezones=st.just(UTC)
    ),
}
KEY_TYPES = [DType.INT64, DType.STRING, DType.BOOL]


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type; NaN equals NaN and -0.0 differs from 0.0 (an independent oracle)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return bool(a == b)


@st.composite
def typed_rows(draw: st.DrawFn, max_rows: int = 5) -> tuple[list[DType], list[list[Any]]]:
    dtypes = draw(st.lists(st.sampled_from(list(DType)), min_size=0, max_size=6))
    rows = draw(st.lists(st.tuples(*(st.none() | VALUES[d] for d in dtypes)).map(list), min_size=1, max_size=max_rows))
    return dtypes, rows


@settings(max_examples=300, deadline=None, database=None)
@given(typed_rows(), st.integers(to_micros(MIN_TS), to_micros(MAX_TS)), st.none() | st.integers(0, 2**62))
def test_row_round_trip(data: tuple[list[DType], list[list[Any]]], event: int, created: int | None) -> None:
    dtypes, rows = data
    for row in rows:
        encoded = encode_row(event, created, row, dtypes)
        got_event, got_created, values = decode_row(encoded, dtypes)
        assert (got_event, got_created) == (event, created)
        assert len(values) == len(row)
        assert all(same(a, b) for a, b in zip(values, row, strict=True)), (values, row)


@settings(max_examples=300, deadline=None, database=None)
@given(typed_rows(max_rows=12), st.data())
def test_many_rows_decode_column_by_column(data: tuple[list[DType], list[list[Any]]], draw: st.DataObject) -> None:
    dtypes, rows = data
    stored = draw.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))  # False: no row
    wanted = draw.draw(st.lists(st.none() | st.sampled_from(range(len(dtypes))), max_size=6) if dtypes else st.just([]))
    encoded = [
        encode_row(i, None, row, dtypes) if keep else None
        for i, (row, keep) in enumerate(zip(rows, stored, strict=True))
    ]
    types = [DType.INT64 if p is None else dtypes[p] for p in wanted]
    read, events = rows_decoder(types, wanted)(encoded)
    columns = [column_values(c) for c in read]  # a column may come as its JSON text (the compiled scan)
    assert len(columns) == len(wanted) and all(len(c) == len(rows) for c in columns)
    for i, (row, keep) in enumerate(zip(rows, stored, strict=True)):
        assert events[i] == (i if keep else None)
        for column, position in zip(columns, wanted, strict=True):
            expected = row[position] if keep and position is not None else None
            assert same(column[i], expected), (i, position, column[i], expected)


KEY_VALUES = {**{d: VALUES[d] for d in KEY_TYPES}, DType.TIMESTAMP: VALUES[DType.TIMESTAMP]}


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(list(KEY_VALUES)), min_size=1, max_size=3), st.data())
def test_keys_encoded_by_column_equal_keys_encoded_one_by_one(dtypes: list[DType], draw: st.DataObject) -> None:
    rows = draw.draw(st.lists(st.tuples(*(KEY_VALUES[d] for d in dtypes)), max_size=10))
    columns = [[row[k] for row in rows] for k in range(len(dtypes))]
    assert encode_entity_keys(columns, dtypes) == [encode_entity_key(list(row)) for row in rows]


@settings(max_examples=200, deadline=None, database=None)
@given(st.data())
def test_arrow_batches_round_trip_and_keys_match_the_lookup_encoding(data: st.DataObject) -> None:
    key_types = data.draw(st.lists(st.sampled_from([*KEY_TYPES, DType.TIMESTAMP]), min_size=1, max_size=3))
    feature_types = data.draw(st.lists(st.sampled_from(list(DType)), max_size=5))
    n = data.draw(st.integers(1, 6))
    keys: list[list[Any]] = [[data.draw(VALUES[t]) for t in key_types] for _ in range(n)]
    features = [[data.draw(st.none() | VALUES[t]) for t in feature_types] for _ in range(n)]
    events: list[Any] = [data.draw(VALUES[DType.TIMESTAMP]) for _ in range(n)]
    created: list[Any] = [data.draw(st.none() | VALUES[DType.TIMESTAMP]) for _ in range(n)]
    key_names = [f"k{i}" for i in range(len(key_types))]
    feature_names = [f"f{i}" for i in range(len(feature_types))]
    arrays = {
        name: pa.array([row[i] for row in keys], ARROW_TYPES[t])
        for i, (name, t) in enumerate(zip(key_names, key_types, strict=True))
    }
    arrays.update(
        {
            name: pa.array([row[i] for row in features], ARROW_TYPES[t])
            for i, (name, t) in enumerate(zip(feature_names, feature_types, strict=True))
        }
    )
    arrays["event_timestamp"] = pa.array(events, ARROW_TYPES[DType.TIMESTAMP])
    arrays["created_timestamp"] = pa.array(created, ARROW_TYPES[DType.TIMESTAMP])
    batch = pa.RecordBatch.from_pydict(arrays)

    encoded_keys, rows = encode_batch(
        batch, key_names, key_types, feature_names, feature_types, "event_timestamp", "created_timestamp"
    )
    assert len(encoded_keys) == len(rows) == n
    for i, (key, row) in enumerate(zip(encoded_keys, rows, strict=True)):
        assert key == encode_entity_key(keys[i])
        expected_key: list[Any] = [to_micros(v) if isinstance(v, datetime) else v for v in keys[i]]
        assert decode_entity_key(key) == expected_key
        event, created_us, values = decode_row(row, feature_types)
        assert event == to_micros(events[i])
        assert created_us == (None if created[i] is None else to_micros(created[i]))
        assert all(same(a, b) for a, b in zip(values, features[i], strict=True)), (values, features[i])


tricky_text = st.text(alphabet=st.sampled_from(["a", "b", "|", ",", '"', "\\", ":", " ", "\x00", "é"]), max_size=6)


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(st.tuples(tricky_text, tricky_text), min_size=2, max_size=8, unique=True))
def test_composite_string_keys_never_collide(keys: list[tuple[str, str]]) -> None:
    encoded = {encode_entity_key(k) for k in keys}
    assert len(encoded) == len(keys)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), tricky_text, st.booleans()), min_size=2, max_size=8, unique=True
    )
)
def test_mixed_composite_keys_never_collide(keys: list[tuple[int, str, bool]]) -> None:
    encoded = [encode_entity_key(k) for k in keys]
    assert len(set(encoded)) == len(keys)
    assert [tuple(decode_entity_key(e)) for e in encoded] == keys


def test_known_collision_candidates_differ() -> None:
    assert encode_entity_key(["a|b", "c"]) != encode_entity_key(["a", "b|c"])
    assert encode_entity_key(['a","b']) != encode_entity_key(["a", "b"])
    assert encode_entity_key([1]) != encode_entity_key(["1"]) != encode_entity_key([True])


def test_non_finite_floats_are_distinct_from_null() -> None:
    row = encode_row(0, None, [math.nan, math.inf, -math.inf, None, -0.0], [DType.FLOAT64] * 5)
    _, _, values = decode_row(row, [DType.FLOAT64] * 5)
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf
    assert values[3] is None and math.copysign(1, values[4]) == -1
