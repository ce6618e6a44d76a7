"""The compiled row scanner (``online/_rowscan.c``): answers byte for byte those of the pure-Python decode, the
JSON-ready dict's and a plain-Python oracle's; malformed rows fail as they do in Python."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import online.encoding as encoding
from features.dtypes import DType, to_micros
from features.lookup import FeatureValues, Lookup, LookupResult
from features.plan import FeatureRefPlan, Plan, ViewPlan
from features.protocols import ColumnText, OnlineValues, column_values
from online.encoding import encode_row, rows_decoder
from tests.online.plans import make_plan, make_view
from tests.online.test_lookup import plain

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)
TTL = 3600
MIN_TS = datetime(1, 1, 1, tzinfo=UTC)
MAX_TS = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1.0, 1e16, 1e300, -1e300, 5e-324, -5e-324, 1.7976931348623157e308, 1e-5, 0.1, 123456.789]
)
_STRINGS = st.text(st.characters(exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["", 'a"b', "a\\b", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "é", "日本", "😀", "\u2028", "/", "NaN", "Infinity"]
)
VALUES = {
    DType.INT64: st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1, 0, -1]),
    DType.FLOAT64: _FLOATS,
    DType.STRING: _STRINGS,
    DType.BOOL: st.booleans(),
    DType.TIMESTAMP: st.datetimes(MIN_TS.replace(tzinfo=None), MAX_TS.replace(tzinfo=None), timezones=st.just(UTC)),
}


class RowsStore:
    """An OnlineStore holding each view's rows as Redis holds them (orjson text, every feature of the view in
    order) and reading them as the Redis store does, with the compiled scanner or the pure-Python decode."""

    def __init__(self, rows: Mapping[str, Mapping[int, bytes]], compiled: bool) -> None:
        self.rows = rows
        self.compiled = compiled

    def read(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        out = []
        for view, names in requests:
            order = [f.name for f in view.features]
            decode = rows_decoder(
                [view.feature(n).dtype for n in names], [order.index(n) for n in names], compiled=self.compiled
            )
            columns, events = decode([self.rows[view.name].get(i) for i in entities["id"]])
            out.append(OnlineValues(view.name, tuple(names), columns, events))
        return out


@st.composite
def stores(draw: st.DrawFn) -> tuple[Plan, list[FeatureRefPlan], dict[str, dict[int, bytes]], dict[str, Any], int]:
    """Views of random types, rows present, missing or expired, and a selection of their features."""
    count = draw(st.sampled_from([1, 2, 3, 5, 9, 40]))  # both sides of the scanner's threshold
    views, rows, oracle = [], {}, {}
    for v in range(draw(st.integers(1, 3))):
        dtypes = draw(st.lists(st.sampled_from(list(VALUES)), min_size=1, max_size=5))
        view = make_view(f"v{v}", [("id", DType.INT64)], [(f"f{i}", d) for i, d in enumerate(dtypes)], ttl_seconds=TTL)
        views.append(view)
        rows[view.name] = {}
        # A view with an expired row serves lists (its values are hidden in Python): draw views without too.
        states = draw(st.sampled_from([["present"], ["present", "missing"], ["present", "missing", "expired"]]))
        for entity in range(count):
            state = draw(st.sampled_from(states))
            if state == "missing":
                continue
            age = draw(st.integers(0, TTL)) if state == "present" else draw(st.integers(TTL + 1, 10 * TTL))
            event = to_micros(NOW) - age * 1_000_000 - (draw(st.integers(0, 999_999)) if age < TTL else 0)
            values = [draw(st.none() | VALUES[d]) for d in dtypes]
            rows[view.name][entity] = encode_row(event, draw(st.none() | st.integers(0, 2**62)), values, dtypes)
            oracle[view.name, entity] = (state, event, values)
    plan = make_plan(views)
    names = [f"{view.name}:{f.name}" for view in views for f in view.features]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    return plan, plan.resolve_refs(chosen), rows, oracle, count


def expected_answer(refs: Sequence[FeatureRefPlan], oracle: Mapping[Any, Any], count: int) -> dict[str, Any]:
    features = {}
    for ref in refs:
        index = int(ref.feature[1:])
        values, statuses, stamps = [], [], []
        for entity in range(count):
            found = oracle.get((ref.view, entity))
            if found is None:
                values.append(None), statuses.append("missing"), stamps.append(None)
                continue
            state, event, row = found
            values.append(plain(row[index]) if state == "present" else None)
            statuses.append(state)
            stamps.append(plain(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=event)))
        features[ref.column] = {"values": values, "statuses": statuses, "event_timestamps": stamps}
    return {"plan_version": 7, "entities": {"id": list(range(count))}, "features": features}


def run(plan: Plan, refs: Sequence[FeatureRefPlan], rows: Any, count: int, compiled: bool) -> LookupResult:
    return Lookup(plan, refs).run(RowsStore(rows, compiled), {"id": list(range(count))}, now=NOW, plan_version=7)


@settings(max_examples=250, deadline=None, database=None)
@given(stores())
def test_compiled_answers_are_the_python_answers(case: Any) -> None:
    plan, refs, rows, oracle, count = case
    compiled = run(plan, refs, rows, count, compiled=True)
    python = run(plan, refs, rows, count, compiled=False)
    body = compiled.to_json()
    assert body == python.to_json()
    assert json.loads(body) == expected_answer(refs, oracle, count)
    for column, fv in compiled.features.items():  # the values the Python callers get are the same objects' values
        assert repr(fv.values) == repr(python.features[column].values)


def test_the_extension_is_built_and_used() -> None:
    """This venv runs the compiled scanner (what CI measures is what ships): a column of many rows comes as text."""
    from online import _rowscan

    assert encoding._rowscan is _rowscan and _rowscan.__file__ is not None and _rowscan.__file__.endswith(".so")
    rows = [encode_row(i, None, [i * 1.5, "x"], [DType.FLOAT64, DType.STRING]) for i in range(100)]
    columns, events = rows_decoder([DType.FLOAT64, DType.STRING], [0, 1])(rows)
    assert events == list(range(100))
    assert all(type(c) is ColumnText for c in columns)
    assert column_values(columns[0]) == [i * 1.5 for i in range(100)]
    assert cast_text(columns[1]) == b"[" + b",".join([b'"x"'] * 100) + b"]"


def cast_text(column: Any) -> bytes:
    assert type(column) is ColumnText
    return column.text


def test_columns_the_answer_would_write_differently_are_decoded() -> None:
    """Timestamps and integers in a float column are decoded from their text (the answer writes other text)."""
    rows = [b"[1,null,3,7,1.5]", b"[2,null,4,8,2.0]", b"[3,null,5,9,2.5]", b"[4,null,6,10,3.5]"]
    types = [DType.FLOAT64, DType.TIMESTAMP, DType.FLOAT64]
    columns, events = rows_decoder(types, [0, 1, 2])(rows)
    assert events == [1, 2, 3, 4]
    assert columns[0] == [3.0, 4.0, 5.0, 6.0] and all(type(v) is float for v in columns[0])
    assert columns[1] == [datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t) for t in (7, 8, 9, 10)]
    assert cast_text(columns[2]) == b"[1.5,2.0,2.5,3.5]"


GOOD = b'[1,null,2,"a",1.5]'


def read(rows: list[bytes | None], types: list[DType], *, compiled: bool) -> tuple[Any, ...]:
    """What reading the rows gives: the values, the event times and the answer's bytes, or the error raised."""
    try:
        columns, events = rows_decoder(types, range(len(types)), compiled=compiled)(rows)
        present = ["present"] * len(rows)
        features = {
            f"v__f{j}": FeatureValues(dtype, column, present, events)
            for j, (dtype, column) in enumerate(zip(types, columns, strict=True))
        }
        answer = LookupResult(None, {"id": list(range(len(rows)))}, features).to_json()
    except Exception as exc:
        return ("error", type(exc), str(exc))
    return ("ok", repr([column_values(c) for c in columns]), events, answer)


@pytest.mark.parametrize(
    "bad",
    [
        b'[1,null,2,"a"',  # truncated
        b'[1,null,2,"a",1.5,]',  # a trailing comma
        b'[1,null,02,"a",1.5]',  # a leading zero
        b'[1,null,2,"\xff",1.5]',  # not UTF-8
        b'[1,null,2,"\xed\xa0\x80",1.5]',  # an encoded surrogate
        b'[1,null,2,"a\x01",1.5]',  # a raw control character
        b'[1,null,2,"a\\x",1.5]',  # a bad escape
        b'[1,null,2,"a",1e400]',  # beyond a double
        b'[1,null,2,"a"]',  # narrower than the others
        b'[1,null,2,"a",1.5,7]',  # wider than the others
        b"[1,null,2]",  # the requested feature is not there
        b'["x",null,2,"a",1.5]',  # an event time that is no integer
        b'[1,null,2,"a","abc"]',  # a string in a float column
        b"{}",
        b"",
    ],
)
def test_malformed_rows_fail_as_in_python(bad: bytes) -> None:
    rows = [GOOD, None, bad, GOOD, GOOD]
    types = [DType.INT64, DType.STRING, DType.FLOAT64]
    assert read(rows, types, compiled=True) == read(rows, types, compiled=False)


@pytest.mark.parametrize(
    "row",
    [
        b'[1, null, 2, "a", 1.5]',  # whitespace: JSON, but not orjson's
        b'[1,null,2,"\\u00e9",1.5]',  # an escape orjson does not write
        b'[1,null,2,"\\/",1.5]',
        b'[1,null,2,"a",1E5]',
        b'[1,null,-0,"a",1.5]',
        b'[1,null,9223372036854775808,"a",1.5]',  # beyond int64
        b'[1,null,2,"a",5e-324]',  # the scanner leaves the ends of a double's range to Python
        b'[1,null,2,"a",1e16]',  # one of these two is the running orjson's exponent, the other an older one's
        b'[1,null,2,"a",1e+16]',
        b'[1,null,2,"a",1.50]',  # not the shortest digits
        b'[1,null,2,"a",0.30000000000000004441]',
    ],
)
def test_valid_rows_orjson_does_not_write_take_the_python_way(row: bytes) -> None:
    rows = [GOOD, row, GOOD, GOOD]
    types = [DType.INT64, DType.STRING, DType.FLOAT64]
    assert read(rows, types, compiled=True) == read(rows, types, compiled=False)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.tuples(st.none() | VALUES[DType.INT64], st.none() | _STRINGS, st.none() | _FLOATS), min_size=2),
    st.data(),
)
def test_mangled_rows_read_as_in_python(values: list[tuple[Any, Any, Any]], draw: st.DataObject) -> None:
    """Rows with bytes replaced, cut or added: the scanner either reads them as the Python decode does or leaves
    them to it (same values, or the same error)."""
    types = [DType.INT64, DType.STRING, DType.FLOAT64]
    rows: list[bytes | None] = [encode_row(i, None, list(v), types) for i, v in enumerate(values)]
    where = draw.draw(st.integers(0, len(rows) - 1))
    row = rows[where]
    assert row is not None
    start = draw.draw(st.integers(0, len(row)))
    end = draw.draw(st.integers(start, min(len(row), start + 3)))
    rows[where] = (
        row[:start] + draw.draw(st.binary(max_size=3) | st.sampled_from([b",", b'"', b"\\", b"]"])) + row[end:]
    )
    assert read(rows, types, compiled=True) == read(rows, types, compiled=False)
