"""Feast's lookup endpoint, ``POST /get-online-features``: a Feast client or model server switches to skewless by
changing its URL (Feast's ``remote`` online store posts here, so does code written against Feast's feature server).

It is a dialect of the one lookup handler (:func:`serving_api.app.lookup_handler`): the request is read the way
Feast 0.67's feature server reads it (``feast/feature_server.py``, ``GetOnlineFeaturesRequest``), the lookup is
skewless's (the same code, the same errors and statuses as ``POST /v1/features``), and the answer is written the
way Feast's server writes it (``feast/feature_server_utils.py``, ``convert_response_to_dict``):

- request: ``features`` ("view:feature") or ``feature_service``, ``entities`` (one list per column),
  ``full_feature_names`` (default false), ``include_feature_view_version_metadata``. Feast has no separate field
  for the request data of on-demand views: it travels among ``entities`` (Feast's client puts it there), and
  columns that are neither a join key nor a request field are ignored, as Feast does.
- answer: ``metadata.feature_names`` (the join keys, in the request's order, then the features, ``feature`` or
  ``view__feature`` with ``full_feature_names``), and ``results``, one per name, with ``values``, ``statuses``
  (``PRESENT``, ``NOT_FOUND``, ``OUTSIDE_MAX_AGE``) and ``event_timestamps`` (RFC 3339 UTC, ``Z``, with
  milliseconds or microseconds only when there are some; ``1970-01-01T00:00:00Z`` where there is no row, for
  join keys and for on-demand features, as Feast). Timestamp values are whole epoch seconds (Feast's
  ``UnixTimestamp`` values), non-finite floats the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.dtypes import DType, from_micros, to_micros
from features.errors import BadRequestError, RequestDataError
from features.lookup import EXPIRED, MISSING, PRESENT, Lookup, LookupResult

PATH = "/get-online-features"
NO_TIME = "1970-01-01T00:00:00Z"  # Feast's empty protobuf Timestamp, where there is no event time
STATUSES = {PRESENT: "PRESENT", MISSING: "NOT_FOUND", EXPIRED: "OUTSIDE_MAX_AGE"}


class FeastRequest(BaseModel):
    """Feast's ``GetOnlineFeaturesRequest``. Fields Feast's server does not know are ignored, as it ignores them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "features": ["card_profile:credit_limit", "payment_checks:amount_eur"],
                    "entities": {"card_id": [1, 2], "amount": [25.0, 80.0], "fx_rate": [1.0, 0.92]},
                    "full_feature_names": True,
                }
            ]
        }
    )

    entities: dict[str, list[Any]] = Field(
        description="join-key columns, and the request fields of on-demand views: one list per column"
    )
    feature_service: str | None = None
    features: list[str] | None = Field(None, description="'view:feature' references")
    full_feature_names: bool = Field(False, description="name features 'view__feature' instead of 'feature'")
    include_feature_view_version_metadata: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> FeastRequest:
        if bool(self.features) == (self.feature_service is not None):
            raise ValueError("give exactly one of 'features' (non-empty) and 'feature_service'")
        self.features = self.features or None  # Feast's client may send an empty list beside a service
        return self


class FeastResult(BaseModel):
    values: list[Any]
    statuses: list[str] = Field(description="'PRESENT', 'NOT_FOUND' or 'OUTSIDE_MAX_AGE' per entity")
    event_timestamps: list[str] = Field(description="RFC 3339 UTC; 1970-01-01T00:00:00Z where there is no row")


class FeastAnswer(BaseModel):
    metadata: dict[str, Any] = Field(description="'feature_names': the join keys, then the features")
    results: list[FeastResult]


class FeastDialect:
    """Feast's request in, Feast's answer out (see the module's docstring); a :class:`LookupDialect`."""

    def parse(self, raw_body: bytes) -> FeastRequest:
        return FeastRequest.model_validate_json(raw_body)

    def inputs(self, request: FeastRequest, lookup: Lookup) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
        fields = {
            spec.name: spec.dtype
            for view in dict.fromkeys(ref.view for ref in lookup.on_demand)
            for _, spec in lookup.plan.on_demand_view(view).request_fields()
        }
        missing = [f"{name} ({dtype.value})" for name, dtype in fields.items() if name not in request.entities]
        if missing:
            raise RequestDataError(
                f"entities lack the request field(s) {', '.join(missing)} of the on-demand features asked for: "
                "Feast's request carries them among the entity columns, one value per entity"
            )
        keys = set(lookup.key_columns)
        entities = {name: values for name, values in request.entities.items() if name in keys}
        request_data = {name: values for name, values in request.entities.items() if name in fields}
        return entities, request_data

    def answer(self, request: FeastRequest, lookup: Lookup, result: LookupResult) -> bytes:
        names = [ref.column if request.full_feature_names else ref.feature for ref in lookup.refs]
        if not request.full_feature_names and len(set(names)) < len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise BadRequestError(
                f"feature name(s) {', '.join(repeated)} appear in more than one view; "
                "ask with full_feature_names=true to name them 'view__feature'"
            )
        keys = [name for name in request.entities if name in result.entities]
        results = [_key_column(result.entities[key]) for key in keys]
        stamps: dict[int, list[str]] = {}  # the features of one view share their event times
        for ref in lookup.refs:
            column = result.features[ref.column]
            found = stamps.get(id(column.event_micros))
            if found is None:
                found = stamps[id(column.event_micros)] = [_feast_time(t) for t in column.event_micros]
            results.append(
                {
                    "values": _feast_values(column.dtype, column.values),
                    "statuses": [STATUSES[s] for s in column.statuses],
                    "event_timestamps": found,
                }
            )
        metadata: dict[str, Any] = {"feature_names": keys + names}
        if request.include_feature_view_version_metadata:
            # skewless versions plans, not views: Feast leaves out a version 0, and so does this.
            metadata["feature_view_metadata"] = [{"name": view} for view in dict.fromkeys(r.view for r in lookup.refs)]
        return orjson.dumps({"metadata": metadata, "results": results})


FEAST = FeastDialect()


def add_feast_door(
    app: FastAPI, endpoint: Callable[[Request], Awaitable[Response]], errors: dict[int | str, dict[str, Any]]
) -> None:
    """Route ``POST /get-online-features`` to ``endpoint`` (:func:`serving_api.app.lookup_endpoint` of a lookup
    handler speaking :data:`FEAST`), documented in /docs with its error answers (``errors``)."""
    app.post(
        PATH,
        responses={200: {"model": FeastAnswer}, **errors},
        summary="Look up online feature values, Feast's way",
        description="Feast's feature server request and answer (see serving_api/feast_door.py): "
        "point Feast's `remote` online store, or a Feast client, at this service.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": FeastRequest.model_json_schema()}},
            }
        },
    )(endpoint)


def _key_column(values: list[Any]) -> dict[str, Any]:
    count = len(values)
    return {
        "values": _feast_values(None, values),
        "statuses": ["PRESENT"] * count,
        "event_timestamps": [NO_TIME] * count,
    }


def _feast_values(dtype: DType | None, values: list[Any]) -> list[Any]:
    if dtype in (DType.INT64, DType.STRING, DType.BOOL):
        return values
    return [_feast_value(v) for v in values]


def _feast_value(value: Any) -> Any:
    if isinstance(value, float) and value - value != 0:  # NaN or an infinity, as protobuf's JSON writes them
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime):
        return to_micros(value) // 1_000_000  # Feast's UnixTimestamp values are epoch seconds
    return value


def _feast_time(micros: int | None) -> str:
    """Feast's text of an event time: RFC 3339 in UTC with a ``Z``, its fraction as short as it is exact."""
    if micros is None:
        return NO_TIME
    text = from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = micros % 1_000_000
    if fraction == 0:
        return text + "Z"
    if fraction % 1000 == 0:
        return f"{text}.{fraction // 1000:03d}Z"
    return f"{text}.{fraction:06d}Z"
