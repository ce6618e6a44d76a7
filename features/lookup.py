"""The online read path: the one function both ``FeatureStore.get_online_features`` and the HTTP service call.

It checks the entity columns against the views' join keys, reads every view in one ``OnlineStore.read``
call, and gives each value a status:

- ``present``: the store holds a row for the entity and it is not older than the view's TTL
  (``now - event_timestamp <= ttl``: exactly at the TTL is still present, the same rule as the offline
  point-in-time join);
- ``expired``: the row is older than the TTL; its value is returned as null;
- ``missing``: no row for the entity, or the live snapshot does not hold this feature (not published yet, or
  published from a different definition of it).

>>> result = lookup(plan, store, plan.resolve_refs(["card_profile:credit_limit"]), {"card_id": [1, 2]})
... # doctest: +SKIP
>>> result.to_dict()["features"]["card_profile__credit_limit"]["statuses"]  # doctest: +SKIP
['present', 'missing']
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import orjson

from features.dtypes import DType, from_micros, to_micros
from features.errors import EntityKeyError, OfflineOnlyViewError, RequestDataError
from features.on_demand import arrow_type, compute
from features.plan import FeatureRefPlan, Plan, ViewPlan
from features.protocols import (
    AsyncReadableStore,
    ColumnText,
    OnlineStore,
    OnlineValues,
    column_values,
    online_key_columns,
)

if TYPE_CHECKING:
    import pandas as pd

PRESENT = "present"
MISSING = "missing"
EXPIRED = "expired"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_KEY_TYPE_NAMES = {
    DType.INT64: "an integer",
    DType.STRING: "a string",
    DType.BOOL: "a boolean",
    DType.TIMESTAMP: "a timezone-aware datetime",
    DType.FLOAT64: "a number",
}


class FeatureValues(NamedTuple):
    """One output column: a value, a status and the row's event time (microseconds since the epoch, UTC) per
    entity. The features of one view share their ``statuses`` and ``event_micros`` lists: read, never mutate.
    ``stored`` is the values as the store read gave them: a list, or their JSON text (:class:`ColumnText`, which
    the HTTP answer splices as it is); :attr:`values` is always the list.

    A named tuple rather than a frozen dataclass: a lookup makes one per feature, and a frozen dataclass's
    ``__init__`` (an ``object.__setattr__`` per field) cost ~0.3 µs more each, ~3% of a one-entity lookup."""

    dtype: DType
    stored: list[Any] | ColumnText
    statuses: list[str]
    event_micros: list[int | None]

    @property
    def values(self) -> list[Any]:
        return column_values(self.stored)

    @property
    def event_timestamps(self) -> list[datetime | None]:
        return [None if t is None else from_micros(t) for t in self.event_micros]


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The answer to one lookup, columnar: the entity columns as given, then ``<view>__<feature>``."""

    plan_version: int | None
    entities: dict[str, list[Any]]
    features: dict[str, FeatureValues]
    #: The publication version of each stored view's snapshot read (None: unpublished): what the served-feature
    #: log records, so an audit knows which snapshot answered.
    snapshots: dict[str, str | None] = field(default_factory=dict)
    #: The time the statuses were worked out at (microseconds since the epoch, UTC): the log's ``served_at``, so
    #: an audit applies the TTL at the very instant the lookup did.
    at_micros: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The HTTP answer as a JSON-ready dict: :meth:`to_json` read back, so both have one shape.

        Timestamps are ISO-8601 strings in UTC (``"2024-01-01T00:00:00Z"``, with ``.ffffff`` when there are
        microseconds). JSON has no NaN or infinity: non-finite floats are the strings ``"NaN"``, ``"Infinity"``
        and ``"-Infinity"``, so they stay distinct from null (no value).
        """
        answer: dict[str, Any] = orjson.loads(self.to_json())
        return answer

    def to_json(self) -> bytes:
        """The HTTP answer's bytes (:meth:`to_dict` describes its values). The statuses and event times the
        features of a view share are rendered once per view and spliced in
        (:class:`orjson.Fragment`) instead of once per feature. For 100 entities of two views of five features
        (a 44 KB answer) they are three quarters of the bytes: this took ~34 µs where building the dict and
        dumping it took ~38 µs (the values' own formatting, ~11 µs, and the event-time texts, ~5 µs, stay). Below
        :data:`_SPLICED_FROM` entities the lists are written as they are (a fragment's own dump cost more than it
        saved: ~0.7 µs more for one entity)."""
        spliced = len(next(iter(self.entities.values()), ())) >= _SPLICED_FROM
        shared: dict[int, Any] = {}  # by the id of a list the features of one view share: its JSON
        features: dict[str, dict[str, Any]] = {}
        for column, fv in self.features.items():
            statuses = shared.get(id(fv.statuses))
            if statuses is None:
                statuses = shared[id(fv.statuses)] = _spliced(fv.statuses) if spliced else fv.statuses
            stamps = shared.get(id(fv.event_micros))
            if stamps is None:
                stamps = iso_from_micros(fv.event_micros)
                stamps = shared[id(fv.event_micros)] = _spliced(stamps) if spliced else stamps
            stored = fv.stored
            features[column] = {
                # A column read as text is the answer's JSON already (online/encoding.py, rows_decoder).
                "values": (
                    orjson.Fragment(stored.text)
                    if type(stored) is ColumnText
                    else _json_column(fv.dtype, cast("list[Any]", stored))
                ),
                "statuses": statuses,
                "event_timestamps": stamps,
            }
        entities = {name: _json_values(values) for name, values in self.entities.items()}
        return orjson.dumps({"plan_version": self.plan_version, "entities": entities, "features": features})

    def to_pandas(self, *, statuses: bool = False) -> pd.DataFrame:
        """A DataFrame: entity columns, then one column per feature (nulls for missing and expired values).

        ``statuses=True`` adds ``<column>__status`` and ``<column>__event_timestamp`` after each feature.
        """
        import pandas as pd

        data: dict[str, Any] = dict(self.entities)
        for column, fv in self.features.items():
            data[column] = pd.Series(fv.values, dtype=_pandas_dtype(fv.dtype))
            if statuses:
                data[f"{column}__status"] = fv.statuses
                data[f"{column}__event_timestamp"] = pd.to_datetime(
                    pd.Series(fv.event_timestamps, dtype=object), utc=True
                )
        return pd.DataFrame(data)


def lookup(
    plan: Plan,
    store: OnlineStore,
    refs: Sequence[FeatureRefPlan],
    entities: Mapping[str, Iterable[Any]],
    *,
    now: datetime | None = None,
    plan_version: int | None = None,
    request_data: Mapping[str, Iterable[Any]] | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
) -> LookupResult:
    """Read ``refs`` for the entities given as columns of join-key values (``{"card_id": [1, 2]}``).

    On-demand features are computed here, after the one store read that also fetched their stored inputs,
    by :mod:`features.evaluator` (the code that computes them in training sets too), from ``request_data``
    (one list per request field, one value per entity) and those inputs. Their status is the worst status of
    their stored inputs: a value computed from an expired input is flagged ``expired``. A function view runs
    its function (``functions[view]``, loaded by :class:`features.functions.FunctionLoader`; imported by
    name when not given) on the whole batch of entities at once: an error in it is an
    :class:`~features.on_demand.OnDemandFunctionError`.

    Servers call :func:`prepare` once per selection and :meth:`Lookup.run` per request instead.
    """
    return Lookup(plan, refs).run(
        store, entities, now=now, plan_version=plan_version, request_data=request_data, functions=functions
    )


class Lookup:
    """A lookup worked out for one plan and one selection of features: the views to read and which of their
    features, the entity columns to check, the on-demand features to compute after the read. Building it
    walks the plan; :meth:`run` touches only what a request carries."""

    def __init__(self, plan: Plan, refs: Sequence[FeatureRefPlan]) -> None:
        self.plan = plan
        self.refs = tuple(refs)
        self.columns = tuple(ref.column for ref in refs)
        self.on_demand = tuple(r for r in refs if plan.is_on_demand(r.view))
        stored = [r for r in refs if not plan.is_on_demand(r.view)]
        hidden = [i for r in self.on_demand for i in plan.on_demand_view(r.view).inputs if i not in stored]
        views: list[ViewPlan] = []
        wanted: dict[str, list[str]] = {}
        for ref in [*stored, *dict.fromkeys(hidden)]:
            view = plan.view(ref.view)
            if not view.online:
                raise OfflineOnlyViewError(view.name, [v.name for v in plan.views if v.online])
            view.feature(ref.feature)
            if view.name not in wanted:
                views.append(view)
                wanted[view.name] = []
            if ref.feature not in wanted[view.name]:
                wanted[view.name].append(ref.feature)
        #: What one store read asks for: (view, feature names) per view.
        self.requests = tuple((v, tuple(wanted[v.name])) for v in views)
        self.key_columns = online_key_columns(views)
        self.key_types = {k.name: k.dtype for v in views for k in v.join_keys}
        self.expected_keys = ", ".join(f"{c} ({self.key_types[c].value})" for c in self.key_columns) or "(none)"
        #: The request fields the on-demand features read: named when a caller passes one among the entities.
        self.request_fields = tuple(
            dict.fromkeys(spec.name for r in self.on_demand for _, spec in plan.on_demand_view(r.view).request_fields())
        )
        #: Per view: its TTL in microseconds (None: never expires) and the (output column, type) of each feature.
        self.outputs = tuple(
            (
                None if v.ttl_seconds is None else v.ttl_seconds * 1_000_000,
                tuple((FeatureRefPlan(v.name, n).column, v.feature(n).dtype) for n in wanted[v.name]),
            )
            for v in views
        )

    def run(
        self,
        store: OnlineStore,
        entities: Mapping[str, Iterable[Any]],
        *,
        now: datetime | None = None,
        plan_version: int | None = None,
        request_data: Mapping[str, Iterable[Any]] | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
    ) -> LookupResult:
        """Look the features up for ``entities`` (see :func:`lookup`)."""
        given = _check_entities(entities, self.key_columns, self.key_types, self.expected_keys, self.request_fields)
        answers = store.read(self.requests, given) if self.requests else []
        return self._result(answers, given, now, plan_version, request_data, functions)

    async def run_async(
        self,
        store: OnlineStore,
        entities: Mapping[str, Iterable[Any]],
        *,
        plan_version: int | None = None,
        request_data: Mapping[str, Iterable[Any]] | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
    ) -> LookupResult:
        """:meth:`run` on a server's event loop: the store read is awaited when the store can read
        asynchronously (:class:`~features.protocols.AsyncReadableStore`), and blocks otherwise."""
        given = _check_entities(entities, self.key_columns, self.key_types, self.expected_keys, self.request_fields)
        if not self.requests:
            answers = []
        elif _reads_async(store):
            answers = await cast(AsyncReadableStore, store).read_async(self.requests, given)
        else:
            answers = store.read(self.requests, given)
        return self._result(answers, given, None, plan_version, request_data, functions)

    def _result(
        self,
        answers: Sequence[OnlineValues],
        given: dict[str, list[Any]],
        now: datetime | None,
        plan_version: int | None,
        request_data: Mapping[str, Iterable[Any]] | None,
        functions: Mapping[str, Callable[..., Any]] | None,
    ) -> LookupResult:
        """Statuses, expired values hidden, on-demand features computed: the answer from the store's rows."""
        count = len(given[self.key_columns[0]]) if self.key_columns else 0
        now_micros = time.time_ns() // 1000 if now is None else to_micros(now)  # a naive `now` is UTC
        features: dict[str, FeatureValues] = {}
        for (ttl, outputs), answer in zip(self.outputs, answers, strict=True):
            # Status and event time depend on the row only: computed once per view, shared by its features.
            events = answer.event_micros
            limit = None if ttl is None else now_micros - ttl  # exactly at the TTL is still present
            if _all_present(events, limit):  # the common case, checked in C
                statuses, expired = [PRESENT] * count, []
            else:
                statuses = [
                    MISSING if t is None else EXPIRED if limit is not None and t < limit else PRESENT for t in events
                ]
                expired = [i for i, s in enumerate(statuses) if s is EXPIRED] if EXPIRED in statuses else []
            for (column, dtype), name, values in zip(outputs, answer.features, answer.columns, strict=True):
                if name in answer.unavailable:
                    features[column] = FeatureValues(dtype, [None] * count, [MISSING] * count, [None] * count)
                    continue
                if expired and type(values) is ColumnText:  # an expired row's values are not served
                    values = values.without(expired)
                elif expired:
                    values = cast("list[Any]", values).copy()
                    for i in expired:
                        values[i] = None
                features[column] = FeatureValues(dtype, values, statuses, events)
        if self.on_demand:
            computed = _compute_on_demand(
                self.plan, self.on_demand, features, given, request_data or {}, functions or {}
            )
            features.update(computed)
        snapshots = {answer.view: answer.snapshot for answer in answers}
        return LookupResult(
            plan_version, given, {column: features[column] for column in self.columns}, snapshots, now_micros
        )


_SPLICED_FROM = 8  # entities from which LookupResult.to_json renders a view's shared lists once


def _spliced(values: list[Any]) -> orjson.Fragment:
    return orjson.Fragment(orjson.dumps(values))


def _all_present(events: list[int | None], limit: int | None) -> bool:
    """Whether every entity has a row (no None) no older than ``limit`` (None: no TTL)."""
    if not events:
        return True
    try:
        oldest = min(events)  # type: ignore[type-var]  # a None among ints raises TypeError: a row is missing
    except TypeError:
        return False
    return oldest is not None and (limit is None or oldest >= limit)


_ASYNC_STORE_TYPES: dict[type, bool] = {}


def _reads_async(store: OnlineStore) -> bool:
    """Whether the store has ``read_async``, asked once per store type (``isinstance`` against a runtime
    protocol costs ~4 µs, a tenth of a lookup's own Python work)."""
    kind = type(store)
    found = _ASYNC_STORE_TYPES.get(kind)
    if found is None:
        found = _ASYNC_STORE_TYPES[kind] = isinstance(store, AsyncReadableStore)
    return found


_PREPARED: dict[tuple[int, tuple[Any, ...] | None, str | None], Lookup] = {}
_PREPARED_LIMIT = 256


def prepare(plan: Plan, *, features: Iterable[str] | None = None, feature_service: str | None = None) -> Lookup:
    """The :class:`Lookup` of a selection (``view:feature`` references, or a feature service), built once per
    plan and selection and kept: a server sees the same few selections over and over. Raises what
    :meth:`Plan.select` raises for an unknown or malformed selection (nothing is kept then)."""
    selection = None if features is None else tuple(features)
    key = (id(plan), selection, feature_service)
    found = _PREPARED.get(key)
    if found is not None and found.plan is plan:  # the same plan object, not one that reused its id
        return found
    built = Lookup(plan, plan.select(features=selection, feature_service=feature_service))
    if len(_PREPARED) >= _PREPARED_LIMIT:
        _PREPARED.clear()
    _PREPARED[key] = built
    return built


_STATUS_RANK = {PRESENT: 0, EXPIRED: 1, MISSING: 2}


def _compute_on_demand(
    plan: Plan,
    refs: Sequence[FeatureRefPlan],
    stored: Mapping[str, FeatureValues],
    entities: Mapping[str, list[Any]],
    request_data: Mapping[str, Iterable[Any]],
    functions: Mapping[str, Callable[..., Any]],
) -> dict[str, FeatureValues]:
    import pyarrow as pa

    lengths = {len(v) for v in entities.values()}
    count = lengths.pop() if lengths else None
    out: dict[str, FeatureValues] = {}
    for view_name in dict.fromkeys(r.view for r in refs):
        view = plan.on_demand_view(view_name)
        inputs: dict[str, pa.Array] = {}
        for source, spec in view.request_fields():
            values = _request_field(request_data, spec.name, spec.dtype, count)
            count = len(values) if count is None else count
            inputs[f"{source}.{spec.name}"] = pa.array(values, type=arrow_type(spec.dtype))
        count = count or 0
        for ref in view.inputs:
            found = stored[ref.column]
            inputs[f"{ref.view}.{ref.feature}"] = pa.array(found.values, type=arrow_type(found.dtype))
        names = [r.feature for r in refs if r.view == view_name]
        for name, array in compute(view, names, inputs, count, functions.get(view_name)).items():
            # A value is as good as the stored inputs it was computed from: the worst of their statuses.
            statuses = [PRESENT] * count
            used = view.used_columns(name)
            for ref in view.inputs:
                if f"{ref.view}.{ref.feature}" in used:
                    worse = stored[ref.column].statuses
                    statuses = [max(a, b, key=_STATUS_RANK.__getitem__) for a, b in zip(statuses, worse, strict=True)]
            out[FeatureRefPlan(view_name, name).column] = FeatureValues(
                view.feature(name).dtype, array.to_pylist(), statuses, [None] * count
            )
    return out


def _request_field(request_data: Mapping[str, Iterable[Any]], name: str, dtype: DType, count: int | None) -> list[Any]:
    if name not in request_data:
        known = ", ".join(sorted(map(str, request_data))) or "(none)"
        raise RequestDataError(f"request_data lacks the field '{name}' ({dtype.value}); it has: {known}")
    values = request_data[name]
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise RequestDataError(f"request_data field '{name}' must be a list with one value per entity")
    values = list(values)
    if count is not None and len(values) != count:
        raise RequestDataError(f"request_data field '{name}' has {len(values)} values for {count} entities")
    return [None if v is None else _request_value(name, dtype, v, i) for i, v in enumerate(values)]


def _request_value(name: str, dtype: DType, value: Any, index: int) -> Any:
    if dtype is DType.FLOAT64 and isinstance(value, numbers.Real) and not _is_bool(value):
        return float(value)
    if dtype is DType.TIMESTAMP and isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RequestDataError(
                f"request_data field '{name}': value {index} ({value!r}) is not an ISO time"
            ) from None
        return _utc(parsed)
    try:
        return _check_key(name, dtype, value, index)
    except EntityKeyError as exc:
        raise RequestDataError(str(exc).replace("entity column", "request_data field")) from None


def _check_entities(
    entities: Mapping[str, Iterable[Any]],
    columns: Sequence[str],
    key_types: Mapping[str, DType],
    expected: str,
    request_fields: Sequence[str] = (),
) -> dict[str, list[Any]]:
    """The entity columns as lists of normalised key values; EntityKeyError names what is wrong (``expected``:
    the columns and types the request needs, ``request_fields``: the fields that belong in ``request_data``,
    for the messages)."""
    if not isinstance(entities, Mapping):
        raise EntityKeyError(f"entities must map join-key columns to lists of values; expected columns: {expected}")
    missing = [c for c in columns if c not in entities]
    if missing:
        raise EntityKeyError(f"missing entity column(s) {', '.join(missing)}; the requested features need {expected}")
    if len(entities) > len(columns):  # every column is there: more names means names that are no column
        extra = sorted(str(c) for c in entities if c not in columns)
        misplaced = [c for c in extra if c in request_fields]
        hint = (
            f"; {', '.join(misplaced)} {'is a request field' if len(misplaced) == 1 else 'are request fields'} of "
            'the on-demand features: pass it in request_data (request_data= in Python, "request_data" over HTTP), '
            "not among the entities"
            if misplaced
            else ""
        )
        raise EntityKeyError(
            f"unknown entity column(s) {', '.join(extra)}; the requested features need {expected}{hint}"
        )
    checked: dict[str, list[Any]] = {}
    lengths: dict[str, int] = {}
    for column in columns:
        values = entities[column]
        if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
            raise EntityKeyError(f"entity column '{column}' must be a list of values, not {type(values).__name__}")
        dtype = key_types[column]
        if _plain_keys(dtype, values):
            checked[column] = list(values)
        else:
            checked[column] = [_check_key(column, dtype, v, i) for i, v in enumerate(values)]
        lengths[column] = len(checked[column])
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{c}: {n}" for c, n in lengths.items())
        raise EntityKeyError(f"entity columns must have the same length; got {shown}")
    return checked


def _plain_keys(dtype: DType, values: Any) -> bool:
    """Whether every key is already a plain int (in int64 range) or str: the common case, checked in C."""
    kinds = set(map(type, values))
    if dtype is DType.INT64 and kinds == {int}:
        return bool(min(values) >= _INT64_MIN and max(values) <= _INT64_MAX)
    return dtype is DType.STRING and kinds == {str}


def _check_key(column: str, dtype: DType, value: Any, index: int) -> Any:
    ok = False
    if dtype is DType.INT64:
        ok = isinstance(value, numbers.Integral) and not _is_bool(value) and _INT64_MIN <= int(value) <= _INT64_MAX
        value = int(value) if ok else value
    elif dtype is DType.STRING:
        ok = isinstance(value, str)
        value = str(value) if ok else value
    elif dtype is DType.BOOL:
        ok = _is_bool(value)
        value = bool(value) if ok else value
    elif dtype is DType.TIMESTAMP:
        ok = isinstance(value, datetime) and value.tzinfo is not None
    elif dtype is DType.FLOAT64:
        ok = isinstance(value, numbers.Real) and not _is_bool(value)
        value = float(value) if ok else value
    if not ok:
        raise EntityKeyError(
            f"entity column '{column}' is {dtype.value}: value {index} ({value!r}, "
            f"{type(value).__name__}) is not {_KEY_TYPE_NAMES[dtype]}"
        )
    return value


def _is_bool(value: Any) -> bool:
    kind = type(value)  # numpy.bool_ too, without importing numpy
    return kind is bool or (kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def iso_utc(value: datetime) -> str:
    """``2024-01-01T00:00:00Z`` (``.ffffff`` added when there are microseconds)."""
    if value.tzinfo is not UTC:
        value = _utc(value).astimezone(UTC)
    return value.isoformat()[:-6] + "Z"  # drop "+00:00"


def iso_from_micros(micros: Sequence[int | None]) -> list[str | None]:
    """:func:`iso_utc` of many times given as microseconds since the epoch (None stays None).

    The text of each time is kept (up to :data:`_ISO_KEPT` of them): a row's event time is served again and again
    until the next materialization, and a dictionary look-up costs a hundredth of formatting it (~0.5 µs a time,
    ~50 µs for a 100-entity view even vectorised). The times not kept are formatted in one go."""
    kept = _ISO_TEXT
    try:  # every time kept (None too, as None): one look-up each, and no second pass for the ones not kept
        return list(map(kept.__getitem__, micros))
    except KeyError:
        pass
    out = list(map(kept.get, micros))
    where = [i for i, (text, t) in enumerate(zip(out, micros, strict=True)) if text is None and t is not None]
    if len(kept) + len(where) >= _ISO_KEPT:  # None takes one place
        kept.clear()
    kept[None] = None
    new = cast("list[int]", [micros[i] for i in where])
    for i, t, text in zip(where, new, _format_iso(new), strict=True):
        out[i] = kept[t] = text
    return out


_ISO_KEPT = 32_768  # texts of event times kept per process (~4 MiB): many requests' worth of rows
_ISO_TEXT: dict[int | None, str | None] = {None: None}


def _format_iso(micros: Sequence[int]) -> list[str]:
    """:func:`iso_utc` of many times (none of them None); vectorised by numpy beyond a few, with the same text."""
    if len(micros) <= _FEW:
        return [iso_utc(from_micros(t)) for t in micros]
    import numpy as np

    numbers = np.array(micros, dtype=np.int64)
    whole = numbers % 1_000_000 == 0
    stamps = numbers.view("datetime64[us]")
    text = np.datetime_as_string(stamps, unit="s", timezone="UTC")
    if not whole.all():
        text = np.where(whole, text, np.datetime_as_string(stamps, unit="us", timezone="UTC"))
    out: list[str] = text.tolist()
    return out


_FEW = 16  # below this many, formatting one by one beats setting up numpy


_PLAIN_JSON = frozenset({int, str, bool, type(None)})


def _json_values(values: list[Any]) -> list[Any]:
    return values if set(map(type, values)) <= _PLAIN_JSON else [_json_value(v) for v in values]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime):
        return iso_utc(value)
    return value


def _json_column(dtype: DType, values: list[Any]) -> list[Any]:
    if dtype is DType.FLOAT64:
        # A sum is finite only when every term is (a finite sum that overflows only takes the slow path).
        if math.isfinite(sum(filter(None, values))):
            return values
        isfinite = math.isfinite
        return [v if v is None or isfinite(v) else _json_value(v) for v in values]
    if dtype is DType.TIMESTAMP:
        return [None if v is None else iso_utc(v) for v in values]
    return values


def _pandas_dtype(dtype: DType) -> str:
    return {
        DType.INT64: "Int64",
        DType.FLOAT64: "float64",
        DType.STRING: "object",
        DType.BOOL: "boolean",
        DType.TIMESTAMP: "datetime64[us, UTC]",
    }[dtype]
