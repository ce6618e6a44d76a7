"""``features.lookup``: entity checks, one read per lookup, and statuses against a plain-Python oracle."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.dtypes import DType
from features.errors import EntityKeyError, UnknownNameError
from features.lookup import (
    EXPIRED,
    MISSING,
    PRESENT,
    FeatureValues,
    LookupResult,
    OfflineOnlyViewError,
    iso_from_micros,
    lookup,
)
from features.plan import ViewPlan
from features.protocols import OnlineValues
from online.encoding import to_micros
from online.redis_store import RedisOnlineStore
from tests.online.plans import make_plan, make_view, publish, ts

CARD = make_view(
    "card", [("card_id", DType.INT64)], [("limit", DType.FLOAT64), ("seen", DType.TIMESTAMP)], ttl_seconds=3600
)
MERCHANT = make_view(
    "merchant", [("merchant", DType.STRING), ("card_id", DType.INT64)], [("risk", DType.INT64), ("flag", DType.BOOL)]
)
HISTORY = make_view("history", [("card_id", DType.INT64)], [("total", DType.FLOAT64)], online=False)
VIP = make_view("vip", [("is_vip", DType.BOOL)], [("bonus", DType.INT64)])
PLAN = make_plan([CARD, MERCHANT, HISTORY, VIP], services={"fraud": ["card:limit", "merchant:risk"]})
NOW = ts("2024-06-01T12:00:00")
MIN_TS = datetime(1, 1, 1, tzinfo=UTC)
MAX_TS = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class RecordingStore:
    """An OnlineStore with no rows that records its reads (entity checks happen before any read)."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.reads: list[Any] = []

    def read(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        self.reads.append((requests, entities))
        if self.inner is not None:
            return list(self.inner.read(requests, entities))
        n = len(next(iter(entities.values()), []))
        return [OnlineValues(v.name, tuple(f), [[None] * n for _ in f], [None] * n) for v, f in requests]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def refs(*texts: str) -> Any:
    return PLAN.resolve_refs(texts)


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ({}, r"missing entity column\(s\) card_id; the requested features need card_id \(int64\)"),
        ({"card_id": [1], "user": [2]}, r"unknown entity column\(s\) user; .* card_id \(int64\)"),
        ({"card_id": ["abc"]}, r"'card_id' is int64: value 0 \('abc', str\) is not an integer"),
        ({"card_id": [1, 1.5]}, r"'card_id' is int64: value 1 \(1.5, float\) is not an integer"),
        ({"card_id": [True]}, r"'card_id' is int64: value 0 \(True, bool\)"),
        ({"card_id": [None]}, r"'card_id' is int64: value 0 \(None"),
        ({"card_id": [2**63]}, r"'card_id' is int64"),
        ({"card_id": 1}, r"'card_id' must be a list of values"),
    ],
)
def test_entity_errors_name_the_column_and_the_expected_type(entities: Any, message: str) -> None:
    store = RecordingStore()
    with pytest.raises(EntityKeyError, match=message):
        lookup(PLAN, store, refs("card:limit"), entities)
    assert store.reads == []


def test_entity_errors_for_several_views() -> None:
    store = RecordingStore()
    with pytest.raises(EntityKeyError, match=r"need card_id \(int64\), merchant \(string\)"):
        lookup(PLAN, store, refs("card:limit", "merchant:risk"), {"card_id": [1]})
    with pytest.raises(EntityKeyError, match="same length; got card_id: 2, merchant: 1"):
        lookup(PLAN, store, refs("card:limit", "merchant:risk"), {"card_id": [1, 2], "merchant": ["m"]})
    with pytest.raises(EntityKeyError, match=r"'merchant' is string: value 0 \(7, int\)"):
        lookup(PLAN, store, refs("merchant:risk"), {"card_id": [1], "merchant": [7]})
    with pytest.raises(EntityKeyError, match=r"'is_vip' is bool: value 0 \(1, int\) is not a boolean"):
        lookup(PLAN, store, refs("vip:bonus"), {"is_vip": [1]})


def test_unknown_and_offline_only_names() -> None:
    store = RecordingStore()
    with pytest.raises(OfflineOnlyViewError, match=r"'history' is offline-only.*online: card, merchant, vip"):
        lookup(PLAN, store, refs("history:total"), {"card_id": [1]})
    assert issubclass(OfflineOnlyViewError, LookupError)
    with pytest.raises(UnknownNameError, match="unknown feature 'nope' in view 'card'; known: limit, seen"):
        lookup(PLAN, store, [type(refs("card:limit")[0])("card", "nope")], {"card_id": [1]})


def test_numpy_and_pandas_keys_are_accepted() -> None:
    import numpy as np
    import pandas as pd

    store = RecordingStore()
    result = lookup(
        PLAN,
        store,
        refs("card:limit", "vip:bonus"),
        {"card_id": pd.Series([1, 2], dtype="int64"), "is_vip": np.array([True, False])},
    )
    assert store.reads[0][1] == {"card_id": [1, 2], "is_vip": [True, False]}
    assert all(type(v) is int for v in store.reads[0][1]["card_id"])
    assert all(type(v) is bool for v in store.reads[0][1]["is_vip"])
    assert all(type(v) is int for v in result.entities["card_id"])


@pytest.mark.redis
@pytest.mark.parametrize("seed", range(5))
def test_statuses_match_an_oracle(redis_url: str, project: str, seed: int) -> None:
    rng = random.Random(seed)
    ttl_us = CARD.ttl_seconds * 1_000_000  # type: ignore[operator]
    card_rows: dict[int, dict[str, Any]] = {}
    for card_id in rng.sample(range(60), 40):
        # Around the TTL boundary, to the microsecond, and far on both sides of it.
        age_us = rng.choice([ttl_us - 1, ttl_us, ttl_us + 1, 0, -5, rng.randrange(0, 3 * ttl_us)])
        card_rows[card_id] = {
            "card_id": card_id,
            "limit": rng.choice([1.5, math.nan, -math.inf, None]),
            "seen": NOW - timedelta(days=rng.randrange(1000)),
            "event_timestamp": NOW - timedelta(microseconds=age_us),
        }
    merchant_rows = {
        (f"m{i % 3}", i): {
            "merchant": f"m{i % 3}",
            "card_id": i,
            "risk": rng.randrange(-5, 5),
            "flag": rng.random() < 0.5,
            "event_timestamp": NOW - timedelta(days=rng.randrange(10_000)),
        }
        for i in rng.sample(range(60), 20)
    }
    with RedisOnlineStore(redis_url, project=project) as redis_store:
        assert publish(redis_store, CARD, list(card_rows.values()))
        assert publish(redis_store, MERCHANT, list(merchant_rows.values()))
        store = RecordingStore(redis_store)
        entities: dict[str, list[Any]] = {"card_id": list(range(60)), "merchant": [f"m{i % 3}" for i in range(60)]}
        result = lookup(PLAN, store, refs("merchant:*", "card:*"), entities, now=NOW, plan_version=7)
    assert len(store.reads) == 1

    def expect(row: dict[str, Any] | None, feature: str, ttl: int | None) -> tuple[Any, str]:
        if row is None:
            return None, MISSING
        age = (NOW - row["event_timestamp"]) // timedelta(microseconds=1)
        if ttl is not None and age > ttl:
            return None, EXPIRED
        return row[feature], PRESENT

    assert list(result.features) == ["merchant__risk", "merchant__flag", "card__limit", "card__seen"]
    for i in range(60):
        for view, rows, key, ttl in [
            ("card", card_rows, i, ttl_us),
            ("merchant", merchant_rows, (f"m{i % 3}", i), None),
        ]:
            row = rows.get(key)  # type: ignore[attr-defined]
            for feature in ["limit", "seen"] if view == "card" else ["risk", "flag"]:
                column = result.features[f"{view}__{feature}"]
                value, status = expect(row, feature, ttl)
                assert column.statuses[i] == status, (view, feature, i)
                got = column.values[i]
                assert got == value or (isinstance(got, float) and math.isnan(got) and math.isnan(value))
                assert column.event_timestamps[i] == (None if row is None else row["event_timestamp"])
    statuses = {s for c in result.features.values() for s in c.statuses}
    assert statuses == {PRESENT, MISSING, EXPIRED}


@pytest.mark.redis
@pytest.mark.parametrize("oldest", ["at_ttl", "past_ttl"])
def test_statuses_when_every_entity_has_a_row(redis_url: str, project: str, oldest: str) -> None:
    """Every entity has a row (the path that checks all of them at once): all present, down to a row exactly at the
    TTL; one microsecond past it, that row alone is expired and its values hidden."""
    ttl_us = CARD.ttl_seconds * 1_000_000  # type: ignore[operator]
    ages = [0, 5, ttl_us // 2, ttl_us if oldest == "at_ttl" else ttl_us + 1, -3]  # -3: a row from the future
    rows = [
        {"card_id": i, "limit": float(i), "seen": NOW, "event_timestamp": NOW - timedelta(microseconds=age)}
        for i, age in enumerate(ages)
    ]
    merchants = [{"merchant": "m", "card_id": i, "risk": i, "flag": True, "event_timestamp": NOW} for i in range(5)]
    with RedisOnlineStore(redis_url, project=project) as store:
        assert publish(store, CARD, rows) and publish(store, MERCHANT, merchants)
        entities: dict[str, list[Any]] = {"card_id": list(range(5)), "merchant": ["m"] * 5}
        result = lookup(PLAN, store, refs("card:limit", "merchant:risk"), entities, now=NOW)
    expected = [PRESENT, PRESENT, PRESENT, PRESENT if oldest == "at_ttl" else EXPIRED, PRESENT]
    assert result.features["card__limit"].statuses == expected
    assert result.features["card__limit"].values == [None if s == EXPIRED else float(i) for i, s in enumerate(expected)]
    assert result.features["merchant__risk"].statuses == [PRESENT] * 5  # no TTL: any age is present
    assert result.features["merchant__risk"].values == [0, 1, 2, 3, 4]


@pytest.mark.redis
def test_to_dict_and_to_pandas(redis_url: str, project: str) -> None:
    with RedisOnlineStore(redis_url, project=project) as store:
        assert publish(
            store,
            CARD,
            [
                {"card_id": 1, "limit": math.nan, "seen": ts("2024-05-01T00:00:00.000001"), "event_timestamp": NOW},
                {"card_id": 2, "limit": -math.inf, "seen": None, "event_timestamp": NOW - timedelta(days=1)},
                {"card_id": 3, "limit": 2.5, "seen": None, "event_timestamp": NOW - timedelta(hours=1)},
            ],
        )
        result = lookup(PLAN, store, refs("card:*"), {"card_id": [1, 2, 3, 4]}, now=NOW, plan_version=3)
    answer = result.to_dict()
    assert answer == {
        "plan_version": 3,
        "entities": {"card_id": [1, 2, 3, 4]},
        "features": {
            "card__limit": {
                "values": ["NaN", None, 2.5, None],
                "statuses": [PRESENT, EXPIRED, PRESENT, MISSING],
                "event_timestamps": ["2024-06-01T12:00:00Z", "2024-05-31T12:00:00Z", "2024-06-01T11:00:00Z", None],
            },
            "card__seen": {
                "values": ["2024-05-01T00:00:00.000001Z", None, None, None],
                "statuses": [PRESENT, EXPIRED, PRESENT, MISSING],
                "event_timestamps": ["2024-06-01T12:00:00Z", "2024-05-31T12:00:00Z", "2024-06-01T11:00:00Z", None],
            },
        },
    }
    assert result.to_json() == orjson.dumps(answer)  # the HTTP answer's bytes, rendered the fast way
    frame = result.to_pandas()
    assert list(frame.columns) == ["card_id", "card__limit", "card__seen"]
    assert frame["card__limit"].isna().tolist() == [True, True, False, True]
    assert str(frame["card__seen"].dtype) == "datetime64[us, UTC]"
    detailed = result.to_pandas(statuses=True)
    assert detailed["card__limit__status"].tolist() == [PRESENT, EXPIRED, PRESENT, MISSING]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.none() | st.integers(to_micros(MIN_TS), to_micros(MAX_TS)), max_size=40))
def test_event_times_as_iso_text(micros: list[int | None]) -> None:
    def oracle(t: int) -> str:
        d = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t)
        fraction = f".{d.microsecond:06d}" if d.microsecond else ""
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}{fraction}Z"

    expected = [None if t is None else oracle(t) for t in micros]
    assert iso_from_micros(micros) == expected
    assert iso_from_micros(micros) == expected  # the second time from the texts kept
    assert iso_from_micros([*micros, *micros]) == expected * 2


def test_kept_event_time_texts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The texts kept per process stay under their bound: past it they are dropped, and still right after."""
    import features.lookup as lookup_module

    monkeypatch.setattr(lookup_module, "_ISO_KEPT", 50)
    monkeypatch.setattr(lookup_module, "_ISO_TEXT", {})
    base = to_micros(datetime(2024, 1, 1, tzinfo=UTC))
    for start in range(0, 400, 40):
        micros = [base + (start + i) * 1_500_000 for i in range(40)]  # every other one with a fraction
        expected = [(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(microseconds=t - base)) for t in micros]
        texts = [d.isoformat().replace("+00:00", "Z") for d in expected]
        assert iso_from_micros(micros) == texts
        assert len(lookup_module._ISO_TEXT) <= 50


_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1.0, 1e16, 5e-324, 1.5])
_VALUES = {
    DType.INT64: st.integers(-(2**63), 2**63 - 1),
    DType.FLOAT64: _FLOATS,
    DType.STRING: st.text(max_size=8),
    DType.BOOL: st.booleans(),
    DType.TIMESTAMP: st.datetimes(MIN_TS.replace(tzinfo=None), MAX_TS.replace(tzinfo=None)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
}
_MICROS = st.none() | st.sampled_from([0, 1, 10**15, 1_717_243_200_000_000]) | st.integers(-(10**15), 10**15)


@st.composite
def _results(draw: st.DrawFn) -> LookupResult:
    """A lookup's result as the lookup makes it: per view, statuses and event times shared by its features."""
    count = draw(st.sampled_from([0, 1, 2, 7, 8, 9, 12]))  # on both sides of to_json's splicing threshold
    features: dict[str, FeatureValues] = {}
    for v in range(draw(st.integers(0, 3))):
        statuses = draw(st.lists(st.sampled_from([PRESENT, MISSING, EXPIRED]), min_size=count, max_size=count))
        events = draw(st.lists(_MICROS, min_size=count, max_size=count))
        for f in range(draw(st.integers(1, 3))):
            dtype = draw(st.sampled_from(list(_VALUES)))
            values = draw(st.lists(st.none() | _VALUES[dtype], min_size=count, max_size=count))
            if draw(st.booleans()):  # a feature of its own statuses (an on-demand feature, a missing feature)
                features[f"v{v}__f{f}"] = FeatureValues(dtype, values, list(statuses), list(events))
            else:
                features[f"v{v}__f{f}"] = FeatureValues(dtype, values, statuses, events)
    keys = draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), min_size=count, max_size=count))
    return LookupResult(draw(st.none() | st.integers(0, 10)), {"id": keys}, features)


def plain(value: Any) -> Any:
    """A value as the API documents it, in plain Python: non-finite floats as text, times as ISO-8601 UTC."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, datetime):
        d = value.astimezone(UTC)
        fraction = f".{d.microsecond:06d}" if d.microsecond else ""
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}{fraction}Z"
    return value


def _expected_json(result: LookupResult) -> dict[str, Any]:
    """The answer as the API documents it, in plain Python (the oracle of LookupResult.to_json)."""

    def iso(t: int | None) -> str | None:
        return None if t is None else plain(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t))

    return {
        "plan_version": result.plan_version,
        "entities": {k: [plain(v) for v in vs] for k, vs in result.entities.items()},
        "features": {
            column: {
                "values": [plain(v) for v in fv.values],
                "statuses": list(fv.statuses),
                "event_timestamps": [iso(t) for t in fv.event_micros],
            }
            for column, fv in result.features.items()
        },
    }


@settings(max_examples=300, deadline=None, database=None)
@given(_results())
def test_json_answer_matches_an_oracle(result: LookupResult) -> None:
    """The answer's bytes (shared statuses and event times rendered once per view) read back as the documented
    answer (non-finite floats as text, ISO UTC times), and so does the dict Python callers get."""
    assert json.loads(result.to_json()) == _expected_json(result)
    assert result.to_dict() == _expected_json(result)
