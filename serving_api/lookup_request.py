"""The common shape of a ``POST /v1/features`` body, read without pydantic.

pydantic's check of a :class:`~serving_api.app.FeaturesRequest` from its bytes took ~3.6 µs for a one-entity
body in a loop and up to ~8% of a worker's CPU per lookup under load; ``orjson.loads`` and a few type checks take
~1.5 µs. :func:`plain_request` reads only bodies that are well-formed by every rule the model has, with the values
pydantic would give (plain JSON lists, strings and objects are taken as they are); anything else (a missing or
unknown field, a wrong type, an empty ``features``, both or none of the selections, JSON orjson does not read such
as ``NaN`` or lone surrogates; any run of 20 digits, since orjson reads an integer beyond 64 bits as a float where
pydantic keeps it an integer) gets None, and the caller asks pydantic, whose answer (and
error messages) are then the same as before.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

_LONG_DIGITS = re.compile(rb"[0-9]{20}")
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
    if _LONG_DIGITS.search(raw_body):
        return None
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not data.keys() <= _FIELDS:
        return None
    entities = data.get("entities")
    if type(entities) is not dict or not all(type(column) is list for column in entities.values()):
        return None
    features = data.get("features")
    service = data.get("feature_service")
    contract = data.get("contract")
    request_data = data.get("request_data")
    if features is not None and (type(features) is not list or not features or {*map(type, features)} != {str}):
        return None
    if (service is not None and type(service) is not str) or (contract is not None and type(contract) is not str):
        return None
    if request_data is not None and type(request_data) is not dict:
        return None
    if (features is not None and service is not None) or (features is None and service is None and contract is None):
        return None  # the model's "exactly one" rule: pydantic words the error
    return PlainRequest(features, service, contract, entities, request_data)
