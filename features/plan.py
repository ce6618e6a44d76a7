"""The compiled plan: pure, serialisable data that every engine executes.

Neither Spark nor the serving path reads the user's Python files; they read a :class:`Plan`. The plan is
stored in the registry as JSON, versioned, with a fingerprint per feature: a hash of everything that
determines its values (source, keys, expression, type). A changed fingerprint means values computed
before are stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from features.checks import CheckPlan
from features.dtypes import DType
from features.errors import PlanError, UnknownNameError
from features.expressions import Expr, expr_from_dict

# Columns every offline feature table and point-in-time join uses besides keys and features.
EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
PUBLISHED_AT = "published_at"


def stable_hash(data: Any) -> str:
    """A short, stable hash of JSON-able data."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    dtype: DType

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "dtype": self.dtype.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> ColumnSpec:
        return cls(data["name"], DType(data["dtype"]))


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """A SQL source as the engines see it. ``connection`` is kept as written (secrets stay unresolved)."""

    name: str
    connection: str
    table: str | None
    query: str | None
    timestamp_column: str
    created_column: str | None
    columns: tuple[ColumnSpec, ...]
    #: How late a row may arrive and still be read by an incremental run (seconds; 0: not at all).
    late_rows_seconds: int = 0
    #: The column the database sets when a row is written or changed: incremental runs read by it.
    changed_column: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "connection": self.connection,
            "table": self.table,
            "query": self.query,
            "timestamp_column": self.timestamp_column,
            "created_column": self.created_column,
            "columns": [c.to_dict() for c in self.columns],
        }
        # Only when declared: how a run finds new rows changes no stored value, and plans written before
        # these fields existed keep their bytes (and their fingerprints).
        if self.late_rows_seconds:
            data["late_rows_seconds"] = self.late_rows_seconds
        if self.changed_column is not None:
            data["changed_column"] = self.changed_column
        return data

    @property
    def cursor_column(self) -> str:
        """The column an incremental run reads new rows by: the change column, else the event time."""
        return self.changed_column or self.timestamp_column

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourcePlan:
        return cls(
            name=data["name"],
            connection=data["connection"],
            table=data["table"],
            query=data["query"],
            timestamp_column=data["timestamp_column"],
            created_column=data["created_column"],
            columns=tuple(ColumnSpec.from_dict(c) for c in data["columns"]),
            late_rows_seconds=int(data.get("late_rows_seconds", 0)),
            changed_column=data.get("changed_column"),
        )

    def column_types(self) -> dict[str, DType]:
        return {c.name: c.dtype for c in self.columns}


@dataclass(frozen=True, slots=True)
class AggregatePlan:
    """How a windowed feature aggregates its input (the feature's ``expr``) per entity at each tick.

    ``window_seconds`` None is unbounded; ``filter`` keeps the rows where it is true.
    """

    function: str
    window_seconds: int | None
    filter: Expr | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "window_seconds": self.window_seconds,
            "filter": None if self.filter is None else self.filter.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AggregatePlan:
        filter_ = data["filter"]
        return cls(data["function"], data["window_seconds"], None if filter_ is None else expr_from_dict(filter_))


@dataclass(frozen=True, slots=True)
class FeaturePlan:
    """One feature: ``expr`` over source columns, aggregated per tick when ``aggregation`` is set.

    ``expr`` is None only for the outputs of an on-demand function (see :class:`FunctionPlan`).
    """

    name: str
    dtype: DType
    expr: Expr | None
    fingerprint: str
    location: str
    aggregation: AggregatePlan | None = None

    @property
    def expression(self) -> Expr:
        """The feature's expression; an error for a function output, which has none."""
        if self.expr is None:
            raise PlanError(f"feature '{self.name}' is computed by an on-demand function, not an expression")
        return self.expr

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype.value,
            "fingerprint": self.fingerprint,
            "location": self.location,
        }
        if self.expr is not None:
            data["expr"] = self.expr.to_dict()
        if self.aggregation is not None:  # absent for row features, so their plans keep their fingerprints
            data["aggregation"] = self.aggregation.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeaturePlan:
        aggregation = data.get("aggregation")
        expr = data.get("expr")
        return cls(
            data["name"],
            DType(data["dtype"]),
            None if expr is None else expr_from_dict(expr),
            data["fingerprint"],
            data["location"],
            None if aggregation is None else AggregatePlan.from_dict(aggregation),
        )


@dataclass(frozen=True, slots=True)
class ViewPlan:
    """A feature view. ``storage_fingerprint`` names the offline table: it changes when stored values would.

    A windowed view has a ``cadence_seconds`` and only aggregated features; its offline rows are values at
    ticks (see ``offline/spark/windows.py``).
    """

    name: str
    entities: tuple[str, ...]
    join_keys: tuple[ColumnSpec, ...]
    source: SourcePlan
    features: tuple[FeaturePlan, ...]
    ttl_seconds: int | None
    online: bool
    storage_fingerprint: str
    location: str
    cadence_seconds: int | None = None
    #: Declared checks (features/checks.py): in the plan's fingerprint, never in a feature's or the table's.
    checks: tuple[CheckPlan, ...] = ()
    #: Where the online store keeps this view's snapshots when not under its name: set (never stored in a plan)
    #: for an earlier definition kept side by side for a training contract (``features.contracts``).
    online_key: str = ""

    @property
    def is_windowed(self) -> bool:
        return self.cadence_seconds is not None

    @property
    def online_name(self) -> str:
        """The name the online store keys this view's snapshots by: its name, or its ``online_key``."""
        return self.online_key or self.name

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> FeaturePlan:
        return _feature_named(self.name, self.features, name)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "entities": list(self.entities),
            "join_keys": [k.to_dict() for k in self.join_keys],
            "source": self.source.to_dict(),
            "features": [f.to_dict() for f in self.features],
            "ttl_seconds": self.ttl_seconds,
            "online": self.online,
            "storage_fingerprint": self.storage_fingerprint,
            "location": self.location,
        }
        if self.cadence_seconds is not None:
            data["cadence_seconds"] = self.cadence_seconds
        if self.checks:  # absent without checks, so plans without them keep their fingerprints
            data["checks"] = [c.to_dict() for c in self.checks]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ViewPlan:
        return cls(
            name=data["name"],
            entities=tuple(data["entities"]),
            join_keys=tuple(ColumnSpec.from_dict(k) for k in data["join_keys"]),
            source=SourcePlan.from_dict(data["source"]),
            features=tuple(FeaturePlan.from_dict(f) for f in data["features"]),
            ttl_seconds=data["ttl_seconds"],
            online=data["online"],
            storage_fingerprint=data["storage_fingerprint"],
            location=data["location"],
            cadence_seconds=data.get("cadence_seconds"),
            checks=tuple(CheckPlan.from_dict(c) for c in data.get("checks", ())),
        )


@dataclass(frozen=True, slots=True)
class EntityPlan:
    name: str
    join_keys: tuple[ColumnSpec, ...]
    location: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "join_keys": [k.to_dict() for k in self.join_keys], "location": self.location}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntityPlan:
        return cls(data["name"], tuple(ColumnSpec.from_dict(k) for k in data["join_keys"]), data["location"])


@dataclass(frozen=True, slots=True)
class FeatureRefPlan:
    """One ``view:feature`` reference; its output column is ``view__feature``."""

    view: str
    feature: str

    @property
    def column(self) -> str:
        return f"{self.view}__{self.feature}"

    def __str__(self) -> str:
        return f"{self.view}:{self.feature}"

    @classmethod
    def parse(cls, text: str) -> FeatureRefPlan:
        view, sep, feature = text.partition(":")
        if not sep or not view or not feature:
            raise ValueError(f"feature reference {text!r} must look like 'view:feature'")
        return cls(view, feature)


@dataclass(frozen=True, slots=True)
class ServicePlan:
    name: str
    features: tuple[FeatureRefPlan, ...]
    location: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "features": [str(f) for f in self.features], "location": self.location}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServicePlan:
        return cls(data["name"], tuple(FeatureRefPlan.parse(f) for f in data["features"]), data["location"])


@dataclass(frozen=True, slots=True)
class RequestSourcePlan:
    """Fields a request carries (``request_data`` online, entity-row columns in training)."""

    name: str
    fields: tuple[ColumnSpec, ...]
    location: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fields": [f.to_dict() for f in self.fields], "location": self.location}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestSourcePlan:
        return cls(data["name"], tuple(ColumnSpec.from_dict(f) for f in data["fields"]), data["location"])


@dataclass(frozen=True, slots=True)
class FunctionPlan:
    """A plain Python function computing an on-demand view's features, imported by ``module`` and
    ``qualname`` wherever it runs. ``source_fingerprint`` hashes its source text: a loader refuses a function
    whose current source differs. ``inputs`` are the ``<source>.<field>`` columns it receives, in order, with
    their types.
    """

    module: str
    qualname: str
    mode: str
    source_fingerprint: str
    inputs: tuple[ColumnSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.inputs)

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "qualname": self.qualname,
            "mode": self.mode,
            "source_fingerprint": self.source_fingerprint,
            "inputs": [c.to_dict() for c in self.inputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FunctionPlan:
        inputs = tuple(ColumnSpec.from_dict(c) for c in data["inputs"])
        return cls(data["module"], data["qualname"], data["mode"], data["source_fingerprint"], inputs)


@dataclass(frozen=True, slots=True)
class OnDemandViewPlan:
    """Features computed per request from request fields and stored features.

    Expressions (or the view's ``function``) read columns named ``<request source>.<field>`` and
    ``<view>.<feature>``; ``inputs`` lists the stored features they need, which are fetched (online) or joined
    point-in-time (offline) first. For a function view, ``request_sources`` hold only the fields it reads.
    """

    name: str
    request_sources: tuple[RequestSourcePlan, ...]
    inputs: tuple[FeatureRefPlan, ...]
    features: tuple[FeaturePlan, ...]
    location: str
    function: FunctionPlan | None = None

    def used_columns(self, feature: str) -> frozenset[str]:
        """The ``<source>.<field>`` columns one feature is computed from."""
        if self.function is not None:
            return frozenset(self.function.input_names)
        return self.feature(feature).expression.columns()

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> FeaturePlan:
        return _feature_named(self.name, self.features, name)

    def request_fields(self) -> tuple[tuple[str, ColumnSpec], ...]:
        """(source name, field) pairs, in definition order."""
        return tuple((s.name, f) for s in self.request_sources for f in s.fields)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "request_sources": [s.to_dict() for s in self.request_sources],
            "inputs": [str(r) for r in self.inputs],
            "features": [f.to_dict() for f in self.features],
            "location": self.location,
        }
        if self.function is not None:  # absent for expression views, so their plans keep their fingerprints
            data["function"] = self.function.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OnDemandViewPlan:
        function = data.get("function")
        return cls(
            name=data["name"],
            request_sources=tuple(RequestSourcePlan.from_dict(s) for s in data["request_sources"]),
            inputs=tuple(FeatureRefPlan.parse(r) for r in data["inputs"]),
            features=tuple(FeaturePlan.from_dict(f) for f in data["features"]),
            location=data["location"],
            function=None if function is None else FunctionPlan.from_dict(function),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the engines need, and nothing they would have to re-derive from Python files."""

    entities: tuple[EntityPlan, ...]
    views: tuple[ViewPlan, ...]
    services: tuple[ServicePlan, ...]
    on_demand_views: tuple[OnDemandViewPlan, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Identity of the plan's meaning; source locations are left out so moving a line changes nothing."""
        return stable_hash(_without_locations(self.to_dict()))

    def view(self, name: str) -> ViewPlan:
        """A stored feature view (for an on-demand one, see :meth:`on_demand_view`)."""
        for v in self.views:
            if v.name == name:
                return v
        raise UnknownNameError("feature view", name, self.view_names())

    def on_demand_view(self, name: str) -> OnDemandViewPlan:
        for v in self.on_demand_views:
            if v.name == name:
                return v
        raise UnknownNameError("on-demand feature view", name, [v.name for v in self.on_demand_views])

    def is_on_demand(self, name: str) -> bool:
        return any(v.name == name for v in self.on_demand_views)

    def view_names(self) -> list[str]:
        """Every name a ``view:feature`` reference may start with."""
        return [v.name for v in self.views] + [v.name for v in self.on_demand_views]

    def any_view(self, name: str) -> ViewPlan | OnDemandViewPlan:
        views: tuple[ViewPlan | OnDemandViewPlan, ...] = (*self.views, *self.on_demand_views)
        for v in views:
            if v.name == name:
                return v
        raise UnknownNameError("feature view", name, self.view_names())

    def feature_plan(self, ref: FeatureRefPlan) -> FeaturePlan:
        return self.any_view(ref.view).feature(ref.feature)

    def service(self, name: str) -> ServicePlan:
        for s in self.services:
            if s.name == name:
                return s
        raise UnknownNameError("feature service", name, [s.name for s in self.services])

    def select(
        self, *, features: Iterable[str] | None = None, feature_service: str | None = None
    ) -> tuple[FeatureRefPlan, ...]:
        """The features a request names: a feature service's, or ``view:feature`` references."""
        if (features is None) == (feature_service is None):
            raise ValueError("give exactly one of features=[...] or feature_service=...")
        if feature_service is not None:
            return self.service(feature_service).features
        assert features is not None
        return self.resolve_refs(features)

    def resolve_refs(self, refs: Iterable[str | FeatureRefPlan]) -> tuple[FeatureRefPlan, ...]:
        """Check ``view:feature`` references (``view:*`` selects the whole view) against the plan."""
        resolved: list[FeatureRefPlan] = []
        for ref in refs:
            parsed = ref if isinstance(ref, FeatureRefPlan) else FeatureRefPlan.parse(ref)
            view = self.any_view(parsed.view)
            if parsed.feature == "*":
                resolved.extend(FeatureRefPlan(view.name, f) for f in view.feature_names)
            else:
                view.feature(parsed.feature)
                resolved.append(parsed)
        seen: set[FeatureRefPlan] = set()
        return tuple(r for r in resolved if not (r in seen or seen.add(r)))  # type: ignore[func-returns-value]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": 1,
            "entities": [e.to_dict() for e in self.entities],
            "views": [v.to_dict() for v in self.views],
            "services": [s.to_dict() for s in self.services],
        }
        if self.on_demand_views:  # absent when unused, so plans without them keep their fingerprints
            data["on_demand_views"] = [v.to_dict() for v in self.on_demand_views]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            entities=tuple(EntityPlan.from_dict(e) for e in data["entities"]),
            views=tuple(ViewPlan.from_dict(v) for v in data["views"]),
            services=tuple(ServicePlan.from_dict(s) for s in data["services"]),
            on_demand_views=tuple(OnDemandViewPlan.from_dict(v) for v in data.get("on_demand_views", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


def _feature_named(view: str, features: tuple[FeaturePlan, ...], name: str) -> FeaturePlan:
    for f in features:
        if f.name == name:
            return f
    raise UnknownNameError("feature", name, [f.name for f in features], context=f"in view '{view}'")


def _without_locations(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_locations(v) for k, v in data.items() if k != "location"}
    if isinstance(data, list):
        return [_without_locations(v) for v in data]
    return data
