"""The common shape of a ``POST /v1/features`` body, read without pydantic.

pydantic's check of a :class:`~serving_api.app.FeaturesRequest` from its bytes took ~3.6 µs for a one-entity
body in a loop and up to ~8% of a worker's CPU per lookup under load; ``orjson.loads`` and a few type checks take
~1.5 µs. :func:`plain_request` reads only bodies that are well-formed by every rule the model has, with the values
pydantic would give (plain JSON lists, strings and objects are taken as they are). Anything else gets None, and
the caller asks pydantic, whose answer (and error messages) are then the same as before: a missing or unknown
field, a wrong type, an empty ``features``, both or none of the selections, JSON orjson does not read (``NaN``,
lone surrogates), values other than plain scalars, and a float of 2**63 or more (orjson reads an integer literal
beyond 64 bits as a float, where pydantic keeps an integer).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

_SCALARS = frozenset({int, str, bool, type(None)})
_NUMBERS = frozenset({*_SCALARS, float})
_BIG = float(2**63)  # from here a float may be an integer literal orjson read as a float
_FIELDS = frozenset({"features", "feature_service", "contract", "entities", "request_data"})


class PlainRequest(NamedTuple):
    """A lookup request read by :func:`plain_request`: the fields of a ``FeaturesRequest``, the same values."""

    features: list[str] | None
    feature_service: str | None
    contract: str | None
    entities: dict[str, list[Any]]
    request_data: dict[str, Any] | None


def plain_request(raw_body: bytes) -> PlainRequest | None:
    """The request in ``raw_body`` when it is a well-formed lookup body; None for anything pydantic should judge."""
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not data.keys() <= _FIELDS:
        return None
    entities = data.get("entities")
    if type(entities) is not dict or not all(type(column) is list and _plain(column) for column in entities.values()):
        return None
    features = data.get("features")
    service = data.get("feature_service")
    contract = data.get("contract")
    request_data = data.get("request_data")
    if features is not None and (type(features) is not list or not features or {*map(type, features)} != {str}):
        return None
    if (service is not None and type(service) is not str) or (contract is not None and type(contract) is not str):
        return None
    if request_data is not None and (
        type(request_data) is not dict
        or not all(_plain(value if type(value) is list else [value]) for value in request_data.values())
    ):
        return None
    if (features is not None and service is not None) or (features is None and service is None and contract is None):
        return None  # the model's "exactly one" rule: pydantic words the error
    return PlainRequest(features, service, contract, entities, request_data)


def _plain(values: list[Any]) -> bool:
    """Whether ``values`` are scalars pydantic reads alike: no nested list or object, no float of :data:`_BIG` or
    more (checked in C for the common lists of integers and strings)."""
    kinds = {*map(type, values)}
    if kinds <= _SCALARS:
        return True
    return kinds <= _NUMBERS and max(abs(v) for v in values if type(v) is float) < _BIG
