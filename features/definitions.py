"""The definitions SDK: what a data scientist writes in ``definitions/*.py``.

Definitions are plain frozen data, validated when constructed. They carry no runtime state; the names come
from the module-level variables they are bound to (see :mod:`features.discovery`), unless given explicitly.

>>> from datetime import timedelta
>>> card = Entity(join_keys={"card_id": Int64})
>>> payments = SqlSource(connection="shop", table="card_payments", timestamp="paid_at")
>>> card_spend = FeatureView(
...     entities=[card], source=payments, ttl=timedelta(days=7),
...     features=[Feature("amount", Float64), Feature("amount_eur", Float64, expr="amount * fx_rate")],
... )
"""

from __future__ import annotations

import keyword
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from features.dtypes import Bool, DType, Float64, Int64, String, Timestamp
from features.errors import DefinitionError

__all__ = [
    "Bool",
    "Entity",
    "Feature",
    "FeatureRef",
    "FeatureService",
    "FeatureView",
    "Float64",
    "Int64",
    "OnDemandFeatureView",
    "RequestSource",
    "SourceLocation",
    "SqlSource",
    "String",
    "Timestamp",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a definition was written: used for error messages and for discovery."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _caller_location() -> SourceLocation:
    """The first stack frame outside this package: the line in the user's file that built the object."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        generated = frame.f_code.co_filename.startswith("<")  # dataclass-generated __init__
        if not generated and not filename.startswith(_PACKAGE_DIR + os.sep):
            return SourceLocation(filename, frame.f_lineno)
        frame = frame.f_back  # type: ignore[assignment]
    return SourceLocation("<unknown>", 0)


def _check_name(name: str | None, kind: str, location: SourceLocation) -> None:
    if name is None:
        return
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or "__" in name:
        raise DefinitionError(
            f"{kind} name {name!r} must be a Python identifier without '__' (it becomes part of column names)",
            location=str(location),
        )


def _location() -> SourceLocation:
    return _caller_location()


@dataclass(frozen=True, slots=True)
class Entity:
    """The thing features describe, identified by one or more typed join keys.

    ``join_keys`` maps key column names to types, in the order that forms the key:
    ``Entity(join_keys={"card_id": Int64})``.
    """

    join_keys: Mapping[str, DType] | Sequence[tuple[str, DType]]
    description: str = ""
    name: str | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        pairs = list(self.join_keys.items()) if isinstance(self.join_keys, Mapping) else list(self.join_keys)
        if not pairs:
            raise DefinitionError(
                "an entity needs at least one join key, e.g. join_keys={'card_id': Int64}", location=str(self.location)
            )
        keys: list[tuple[str, DType]] = []
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise DefinitionError(f"join key {pair!r} must be a (name, dtype) pair", location=str(self.location))
            try:
                dtype = DType.parse(pair[1])
            except ValueError as exc:
                raise DefinitionError(f"join key '{pair[0]}': {exc}", location=str(self.location)) from None
            if dtype in (DType.FLOAT64, DType.TIMESTAMP):
                raise DefinitionError(
                    f"join key '{pair[0]}' has type {dtype.value}; valid choices: int64, string, bool",
                    location=str(self.location),
                )
            keys.append((pair[0], dtype))
        names = [k for k, _ in keys]
        if len(set(names)) != len(names):
            raise DefinitionError(f"duplicate join key in {names}", location=str(self.location))
        _check_name(self.name, "entity", self.location)
        object.__setattr__(self, "join_keys", tuple(keys))

    @property
    def keys(self) -> tuple[tuple[str, DType], ...]:
        """The join keys as (name, type) pairs, in key order."""
        return cast(tuple[tuple[str, DType], ...], self.join_keys)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keys)


@dataclass(frozen=True, slots=True)
class SqlSource:
    """A table or query in a SQL database, read by Spark over JDBC.

    ``connection`` is a SQLAlchemy URL (``postgresql://user:${PGPASSWORD}@host/db``) or the name of a
    connection in ``skewless.yaml``. ``timestamp`` is the event-time column; ``created`` optionally orders
    rows that share an event time (the later-created row wins). ``schema`` declares column types where the
    database cannot tell them (for instance the columns of a query on SQLite).
    """

    connection: str
    timestamp: str
    table: str | None = None
    query: str | None = None
    created: str | None = None
    schema: Mapping[str, DType] | None = None
    description: str = ""
    name: str | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        if (self.table is None) == (self.query is None):
            raise DefinitionError("a SqlSource needs exactly one of table=... or query=...", location=where)
        if not self.connection:
            raise DefinitionError(
                "a SqlSource needs a connection: a SQLAlchemy URL or a name from skewless.yaml", location=where
            )
        if self.schema is not None:
            try:
                parsed = tuple((str(k), DType.parse(v)) for k, v in dict(self.schema).items())
            except ValueError as exc:
                raise DefinitionError(f"schema: {exc}", location=where) from None
            object.__setattr__(self, "schema", parsed)
        _check_name(self.name, "source", self.location)


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature: a source column (``expr=None``) or a row expression over source columns."""

    name: str
    dtype: DType
    expr: str | None = None
    description: str = ""
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "feature", self.location)
        try:
            object.__setattr__(self, "dtype", DType.parse(self.dtype))
        except ValueError as exc:
            raise DefinitionError(f"feature '{self.name}': {exc}", location=str(self.location)) from None

    @property
    def expression(self) -> str:
        return self.expr if self.expr is not None else self.name


@dataclass(frozen=True, slots=True)
class FeatureView:
    """A group of features computed from one source for the same entities.

    ``ttl`` bounds how old a value may be and still be served (and joined into a training row);
    ``None`` means values never expire. ``online=False`` keeps the view out of the online store.
    """

    entities: Sequence[Entity]
    source: SqlSource
    features: Sequence[Feature]
    ttl: timedelta | None = None
    online: bool = True
    description: str = ""
    name: str | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        entities = tuple(self.entities) if isinstance(self.entities, Sequence) else (self.entities,)
        if not entities or not all(isinstance(e, Entity) for e in entities):
            raise DefinitionError("entities must be a non-empty list of Entity objects", location=where)
        if not isinstance(self.source, SqlSource):
            raise DefinitionError(f"source must be a SqlSource, got {type(self.source).__name__}", location=where)
        features = tuple(self.features)
        if not features or not all(isinstance(f, Feature) for f in features):
            raise DefinitionError("features must be a non-empty list of Feature objects", location=where)
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DefinitionError(f"duplicate feature name(s) {duplicates} in one view", location=where)
        if self.ttl is not None and (not isinstance(self.ttl, timedelta) or self.ttl <= timedelta(0)):
            raise DefinitionError(f"ttl must be a positive timedelta or None, got {self.ttl!r}", location=where)
        _check_name(self.name, "feature view", self.location)
        object.__setattr__(self, "entities", entities)
        object.__setattr__(self, "features", features)

    def __getitem__(self, feature_name: str) -> FeatureRef:
        """``view["amount"]`` selects one feature, for a FeatureService."""
        return self.select(feature_name)

    def select(self, *feature_names: str) -> FeatureRef:
        """Some of the view's features, for a FeatureService."""
        return _select(self, feature_names)


@dataclass(frozen=True, slots=True)
class RequestSource:
    """Values that arrive with each request: ``request_data`` over HTTP, columns of the entity rows in
    training. ``RequestSource(schema={"amount": Float64})``; expressions read them as ``<name>.amount``."""

    schema: Mapping[str, DType]
    description: str = ""
    name: str | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        try:
            fields = tuple((str(k), DType.parse(v)) for k, v in dict(self.schema).items())
        except ValueError as exc:
            raise DefinitionError(f"schema: {exc}", location=where) from None
        if not fields:
            raise DefinitionError("a RequestSource needs at least one field in schema={...}", location=where)
        for field_name, _ in fields:
            _check_name(field_name, "request field", self.location)
        _check_name(self.name, "request source", self.location)
        object.__setattr__(self, "schema", fields)

    @property
    def fields(self) -> tuple[tuple[str, DType], ...]:
        return cast(tuple[tuple[str, DType], ...], self.schema)


@dataclass(frozen=True, slots=True)
class OnDemandFeatureView:
    """Features computed at request time from request data and stored features, with one definition that
    runs both in training sets (Spark, through Arrow) and in serving.

    >>> payment = RequestSource(schema={"amount": Float64})                      # doctest: +SKIP
    >>> payment_checks = OnDemandFeatureView(                                   # doctest: +SKIP
    ...     sources=[payment, card_profile],
    ...     features=[Feature("amount_vs_limit", Float64, expr="payment.amount / card_profile.credit_limit")],
    ... )

    Expressions name inputs as ``<source>.<field>``: a request source's field, or a feature view's feature.
    """

    sources: Sequence[RequestSource | FeatureView]
    features: Sequence[Feature]
    description: str = ""
    name: str | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        sources = tuple(self.sources)
        if not sources or not all(isinstance(s, RequestSource | FeatureView) for s in sources):
            raise DefinitionError(
                "sources must be a non-empty list of RequestSource and FeatureView objects", location=where
            )
        features = tuple(self.features)
        if not features or not all(isinstance(f, Feature) for f in features):
            raise DefinitionError("features must be a non-empty list of Feature objects", location=where)
        missing = [f.name for f in features if f.expr is None]
        if missing:
            raise DefinitionError(
                f"on-demand feature(s) {missing} need expr=...: they have no source column", location=where
            )
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DefinitionError(f"duplicate feature name(s) {duplicates} in one view", location=where)
        _check_name(self.name, "on-demand feature view", self.location)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "features", features)

    def __getitem__(self, feature_name: str) -> FeatureRef:
        return self.select(feature_name)

    def select(self, *feature_names: str) -> FeatureRef:
        """Some of the view's features, for a FeatureService."""
        return _select(self, feature_names)


def _select(view: FeatureView | OnDemandFeatureView, feature_names: tuple[str, ...]) -> FeatureRef:
    known = [f.name for f in view.features]
    for name in feature_names:
        if name not in known:
            raise DefinitionError(
                f"unknown feature '{name}'; known: {', '.join(known)}", location=str(_caller_location())
            )
    return FeatureRef(view, feature_names)


@dataclass(frozen=True, slots=True)
class FeatureRef:
    """A selection of features from one view, made with ``view["feature"]`` or ``view.select(...)``."""

    view: FeatureView | OnDemandFeatureView
    feature_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FeatureService:
    """A named selection of features served together to one model."""

    features: Sequence[FeatureView | OnDemandFeatureView | FeatureRef]
    description: str = ""
    name: str | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        items = tuple(self.features)
        if not items or not all(isinstance(i, FeatureView | OnDemandFeatureView | FeatureRef) for i in items):
            raise DefinitionError(
                "features must be a non-empty list of FeatureView or view['feature'] items", location=str(self.location)
            )
        _check_name(self.name, "feature service", self.location)
        object.__setattr__(self, "features", items)


Definition = Entity | SqlSource | FeatureView | FeatureService | RequestSource | OnDemandFeatureView

# Re-exported so a definitions file needs one import line.
_ = (Bool, Float64, Int64, String, Timestamp, Any)
