"""``POST /v1/features`` bodies read without pydantic (serving_api.lookup_request): the oracle is pydantic's own
check of ``FeaturesRequest`` from the same bytes. Every body gets the same fields, with values of the same types,
or the same validation errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serving_api.app import NATIVE, FeaturesRequest
from serving_api.lookup_request import plain_request

FIELDS = ("features", "feature_service", "contract", "entities", "request_data")

COMMON = [
    b'{"features": ["card:limit"], "entities": {"card_id": [1]}}',
    b'{"features": ["card:limit", "card:tier"], "entities": {"card_id": [1, 2, -3], "merchant": ["a", "\\u00fc"]}}',
    b'{"feature_service": "fraud", "entities": {"card_id": [1]}, "request_data": {"amount": [25.0]}}',
    b'{"contract": "model_v1", "entities": {"card_id": [1]}}',
    b'{"contract": "model_v1", "features": ["card:limit"], "entities": {}}',
    b'{"features": ["a:b"], "feature_service": null, "contract": null, "request_data": null, "entities": {"k": []}}',
    b'{"features": ["a:b"], "entities": {"k": [1.5, -0.0, 1e2, 9223372036854775807, -9223372036854775808, true]}}',
    b'{"features": ["a:b"], "entities": {"k": [null, "", 0, 1.0e18, -9.2e18]}}',
    b'{"features": ["a:b"], "entities": {"k": [18446744073709551615]}}',  # 64 bits unsigned: still an int
    b'{"feature_service": "s", "entities": {"k": [1]}, "request_data": {"amount": [1.5, null, 3], "flag": true}}',
    b'{"features": ["x:y"], "features": ["a:b"], "entities": {"k": [1]}}',  # duplicate keys: the last one
    '{"features": ["vue:caract\u00e8re"], "entities": {"cl\u00e9": ["\U0001f600"]}}'.encode(),
]
MALFORMED = [
    b"",
    b"not json",
    b"[]",
    b'{"features": ["a:b"]}',
    b'{"features": [], "entities": {"k": [1]}}',
    b'{"features": ["a:b", 3], "entities": {"k": [1]}}',
    b'{"features": "a:b", "entities": {"k": [1]}}',
    b'{"features": ["a:b"], "feature_service": "s", "entities": {"k": [1]}}',
    b'{"entities": {"k": [1]}}',
    b'{"features": ["a:b"], "entities": {"k": [1]}, "extra": 1}',
    b'{"features": ["a:b"], "entities": [1]}',
    b'{"features": ["a:b"], "entities": {"k": 1}}',
    b'{"features": ["a:b"], "entities": null}',
    b'{"feature_service": 7, "entities": {"k": [1]}}',
    b'{"contract": ["c"], "entities": {"k": [1]}}',
    b'{"features": ["a:b"], "entities": {"k": [1]}, "request_data": [1]}',
    b'{"features": ["a:b"], "entities": {"k": [NaN]}}',
    b'{"features": ["a:b"], "entities": {"k": [1e400]}}',
    b'{"features": ["a:b"], "entities": {"k": [123456789012345678901234567890]}}',
    b'{"features": ["a:b"], "entities": {"k": [null, {"x": [1]}, [[]], "", 0]}}',  # valid, nested
    b'{"features": ["a:b"], "entities": {"k": [1]}, "request_data": {"x": [1e30]}}',  # valid, a float >= 2**63
    b'{"features": ["a:b"], "entities": {"k": ["\\ud800"]}}',
    b'{"features": ["a:b"], "entities": {"k": ["\xff"]}}',
    b'{"features": ["a:b"], "entities": {"k": [1]}} trailing',
]


def typed(value: Any) -> Any:
    """``value`` with the type of every part, so ``1`` and ``1.0``, ``0.0`` and ``-0.0`` differ."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, repr(value))


def judged(body: bytes) -> tuple[str, Any]:
    """What a parse of ``body`` gives: its fields (typed) or pydantic's errors."""
    try:
        request = NATIVE.parse(body)
    except ValidationError as exc:
        return "invalid", repr(exc.errors(include_url=False, include_context=False))  # repr: NaN equals NaN
    return "valid", {field: typed(getattr(request, field)) for field in FIELDS}


def oracle(body: bytes) -> tuple[str, Any]:
    try:
        request = FeaturesRequest.model_validate_json(body)
    except ValidationError as exc:
        return "invalid", repr(exc.errors(include_url=False, include_context=False))  # repr: NaN equals NaN
    return "valid", {field: typed(getattr(request, field)) for field in FIELDS}


@pytest.mark.parametrize("body", COMMON + MALFORMED)
def test_every_body_reads_as_pydantic_reads_it(body: bytes) -> None:
    assert judged(body) == oracle(body)


@pytest.mark.parametrize("body", COMMON)
def test_the_common_shapes_skip_pydantic(body: bytes) -> None:
    assert plain_request(body) is not None


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_and_unusual_bodies_are_left_to_pydantic(body: bytes) -> None:
    assert plain_request(body) is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
BODIES = st.dictionaries(
    st.sampled_from([*FIELDS, "other"]),
    JSON_VALUES
    | st.lists(st.text(max_size=4), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.lists(JSON_VALUES, max_size=3), max_size=3),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_generated_bodies_read_as_pydantic_reads_them(data: dict[str, Any]) -> None:
    body = json.dumps(data, allow_nan=True).encode()
    assert judged(body) == oracle(body)


LOOKUPS = st.fixed_dictionaries(
    {"entities": st.dictionaries(st.text(max_size=3), st.lists(JSON_VALUES, max_size=4), max_size=3)},
    optional={
        "features": st.lists(st.text(max_size=6), max_size=3),
        "feature_service": st.none() | st.text(max_size=4),
        "contract": st.none() | st.text(max_size=4),
        "request_data": st.none() | st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=2),
    },
)


@settings(max_examples=300, deadline=None)
@given(LOOKUPS)
def test_generated_lookups_read_as_pydantic_reads_them(data: dict[str, Any]) -> None:
    """Bodies of the lookup's shape (most of them valid), their values anything JSON holds."""
    body = json.dumps(data, allow_nan=True).encode()
    assert judged(body) == oracle(body)
