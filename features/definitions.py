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
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from features.dtypes import Bool, DType, Float64, Int64, String, Timestamp
from features.errors import DefinitionError

__all__ = [
    "AGGREGATION_FUNCTIONS",
    "ON_DEMAND_MODES",
    "Aggregation",
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
    "on_demand_function",
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

    Runs of a view without aggregations read only the rows they have not seen. By default a row is new when
    its event time is at or after the latest event time read so far minus ``late_rows`` (a duration such as
    ``"2h"``: how late a row may arrive and still be read; default none). ``changed_at`` names a timestamp
    column the database sets when a row is written or changed: runs then read the rows whose ``changed_at`` is
    at or after the latest one read minus ``late_rows``, whatever their event time.
    """

    connection: str
    timestamp: str
    table: str | None = None
    query: str | None = None
    created: str | None = None
    schema: Mapping[str, DType] | None = None
    description: str = ""
    name: str | None = None
    late_rows: str | timedelta | None = None
    changed_at: str | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        if self.late_rows is not None:
            try:
                unbounded = parse_window(self.late_rows) is None
            except ValueError as exc:
                raise DefinitionError(f"late_rows: {exc}".replace(", 'unbounded'", ""), location=where) from None
            if unbounded:
                raise DefinitionError(
                    f"late_rows {self.late_rows!r}: a lookback cannot be unbounded; write a duration such as '2h'",
                    location=where,
                )
        if self.changed_at is not None and (not isinstance(self.changed_at, str) or not self.changed_at):
            raise DefinitionError(
                f"changed_at must name a timestamp column of the source, got {self.changed_at!r}", location=where
            )
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

    @property
    def late_rows_seconds(self) -> int:
        """How late a row may arrive and still be read by the next run, in seconds (0 by default)."""
        if self.late_rows is None:
            return 0
        return parse_window(self.late_rows) or 0


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature: a source column (``expr=None``) or a row expression over source columns. ``checks``: what
    every run's values must satisfy (:mod:`features.checks`: ``[Range(0, 1), MaxNulls(0.01)]``)."""

    name: str
    dtype: DType
    expr: str | None = None
    description: str = ""
    checks: Sequence[Any] = ()
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "feature", self.location)
        object.__setattr__(self, "checks", _as_tuple(self.checks, self.location))
        try:
            object.__setattr__(self, "dtype", DType.parse(self.dtype))
        except ValueError as exc:
            raise DefinitionError(f"feature '{self.name}': {exc}", location=str(self.location)) from None

    @property
    def expression(self) -> str:
        return self.expr if self.expr is not None else self.name


AGGREGATION_FUNCTIONS = ("count", "sum", "mean", "min", "max", "stddev", "last", "first", "count_distinct")

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# The longest window, cadence or ttl: the span from the first timestamp (0001-01-01) to the Unix epoch, where
# ticks are counted from, so a tick minus a window (or a value's time plus its ttl, in microseconds) is always
# a valid timestamp in Python, Arrow and Spark. Longer ones used to fail only at materialize, deep in an engine.
MAX_DURATION = datetime(1970, 1, 1) - datetime(1, 1, 1)  # 719162 days
DURATION_RANGE = f"from 1s to {MAX_DURATION.days}d (the span from 0001-01-01 to the Unix epoch)"


def parse_window(value: str | timedelta | None) -> int | None:
    """Seconds of a window or cadence written ``"1h"``, ``"7d"``, a timedelta, or ``"unbounded"``/None (None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "unbounded"):
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and (match := _DURATION.match(value.lower())):
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration; write e.g. '1h', '1d', '7d', '30d', 'unbounded' or a timedelta")
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"{value!r} must be a positive whole number of seconds")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{value!r} is beyond the timestamp range; a window or cadence goes {DURATION_RANGE}")
    return int(seconds)


def check_ttl(ttl: object) -> None:
    """A ttl is a timedelta of whole seconds, at least one (the plan, the online store and the point-in-time
    joins count ttls in whole seconds: a sub-second ttl would be stored as 0s), within the timestamp range."""
    if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
        raise ValueError(f"ttl must be a positive timedelta or None, got {ttl!r}")
    if ttl < timedelta(seconds=1) or ttl.microseconds:
        raise ValueError(f"ttl must be a whole number of seconds, at least 1s (ttls are kept in seconds), got {ttl!r}")
    if ttl > MAX_DURATION:
        raise ValueError(f"ttl {ttl.days}d is beyond the timestamp range; a ttl goes {DURATION_RANGE}")


def window_suffix(seconds: int | None) -> str:
    """The name part of a window: ``1h``, ``7d``, ``90m``; ``all`` when unbounded."""
    if seconds is None:
        return "all"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Aggregation:
    """An aggregate of a source column per entity over one or more time windows, for a windowed FeatureView.

    ``Aggregation("sum", "amount", windows=["1d", "7d", "30d"])`` yields the features ``amount_sum_1d``,
    ``amount_sum_7d`` and ``amount_sum_30d``. ``column`` is a column or an expression over the source's
    columns (then ``name=`` is required); ``count`` without a column counts rows. ``filter`` is a boolean
    expression: rows where it is not true are left out. ``name`` replaces the ``<column>_<function>`` prefix.
    Windows are ``"<n>m|h|d|w"``, a timedelta, or ``"unbounded"``; a window may be shorter than the cadence
    (``"1h"`` at a daily cadence: the last hour before each tick).
    """

    function: str
    column: str | None = None
    windows: Sequence[str | timedelta | None] = ("unbounded",)
    filter: str | None = None
    name: str | None = None
    description: str = ""
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        if self.function not in AGGREGATION_FUNCTIONS:
            raise DefinitionError(
                f"unknown aggregation {self.function!r}; valid choices: {', '.join(AGGREGATION_FUNCTIONS)}",
                location=where,
            )
        if self.column is None and self.function != "count":
            raise DefinitionError(f"aggregation '{self.function}' needs a column", location=where)
        windows = (self.windows,) if isinstance(self.windows, str | timedelta) else tuple(self.windows)
        if not windows:
            raise DefinitionError("an aggregation needs at least one window", location=where)
        try:
            seconds = tuple(parse_window(w) for w in windows)
        except ValueError as exc:
            raise DefinitionError(f"window: {exc}", location=where) from None
        if len(set(seconds)) != len(seconds):
            raise DefinitionError(f"duplicate window in {list(windows)}", location=where)
        _check_name(self.name, "aggregation", self.location)
        if self.name is None and self.column is not None and not self.column.isidentifier():
            raise DefinitionError(
                f"aggregation of the expression `{self.column}` needs name=... (the features are named "
                f"<name>_<window>)",
                location=where,
            )
        object.__setattr__(self, "windows", seconds)

    @property
    def window_seconds(self) -> tuple[int | None, ...]:
        return cast(tuple[int | None, ...], self.windows)

    @property
    def prefix(self) -> str:
        if self.name is not None:
            return self.name
        return self.function if self.column is None else f"{self.column}_{self.function}"

    def feature_names(self) -> tuple[str, ...]:
        """One generated name per window, in window order: ``<prefix>_<window>``."""
        return tuple(f"{self.prefix}_{window_suffix(w)}" for w in self.window_seconds)


@dataclass(frozen=True, slots=True)
class FeatureView:
    """A group of features computed from one source for the same entities.

    Either row features (``features=[Feature(...)]``: one value per source row, the latest is served) or
    windowed aggregations (``aggregations=[Aggregation(...)]`` with a ``cadence``: at every tick, a multiple of
    the cadence since the Unix epoch in UTC, each window aggregates the rows with
    ``tick - window < event time <= tick``).

    ``checks`` (:mod:`features.checks`) test every run's rows before it is committed and published: checks of
    the whole run (``RowCount``, ``UniqueKeys``) and checks naming a feature (``Range(0, 1, feature="x")``,
    handy for aggregated features; a row feature's checks may sit on its ``Feature`` instead).

    ``ttl`` bounds how old a value may be and still be served (and joined into a training row); ``None`` means
    values never expire. For a windowed view the age is counted from the last tick materialized, so ``ttl``
    says how long a missed run may go unnoticed; it must be at least the cadence. ``online=False`` keeps the
    view out of the online store.
    """

    entities: Sequence[Entity]
    source: SqlSource
    features: Sequence[Feature] = ()
    ttl: timedelta | None = None
    online: bool = True
    description: str = ""
    name: str | None = None
    aggregations: Sequence[Aggregation] = ()
    cadence: str | timedelta | None = None
    checks: Sequence[Any] = ()
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        object.__setattr__(self, "checks", _as_tuple(self.checks, self.location))
        entities = tuple(self.entities) if isinstance(self.entities, Sequence) else (self.entities,)
        if not entities or not all(isinstance(e, Entity) for e in entities):
            raise DefinitionError("entities must be a non-empty list of Entity objects", location=where)
        if not isinstance(self.source, SqlSource):
            raise DefinitionError(f"source must be a SqlSource, got {type(self.source).__name__}", location=where)
        features = tuple(self.features)
        aggregations = tuple(self.aggregations)
        if bool(features) == bool(aggregations):
            raise DefinitionError(
                "a feature view needs either features=[Feature(...)] or aggregations=[Aggregation(...)], not both",
                location=where,
            )
        if not all(isinstance(f, Feature) for f in features):
            raise DefinitionError("features must be a list of Feature objects", location=where)
        if not all(isinstance(a, Aggregation) for a in aggregations):
            raise DefinitionError("aggregations must be a list of Aggregation objects", location=where)
        if self.ttl is not None:
            try:
                check_ttl(self.ttl)
            except ValueError as exc:
                raise DefinitionError(str(exc), location=where) from None
        cadence = self._check_cadence(aggregations, where)
        object.__setattr__(self, "entities", entities)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "aggregations", aggregations)
        object.__setattr__(self, "cadence", cadence)
        names = list(self.feature_names)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            hint = " (give the aggregations different name=...)" if aggregations else ""
            raise DefinitionError(f"duplicate feature name(s) {duplicates} in one view{hint}", location=where)
        _check_name(self.name, "feature view", self.location)

    def _check_cadence(self, aggregations: tuple[Aggregation, ...], where: str) -> int | None:
        if not aggregations:
            if self.cadence is not None:
                raise DefinitionError("cadence= applies to aggregations=[...] only", location=where)
            return None
        if self.cadence is None:
            raise DefinitionError("a view with aggregations needs a cadence, e.g. cadence='1d' or '1h'", location=where)
        try:
            cadence = parse_window(self.cadence)
        except ValueError as exc:
            raise DefinitionError(f"cadence: {exc}", location=where) from None
        if cadence is None or cadence < 60:
            raise DefinitionError(
                "cadence must be a duration of at least one minute, e.g. '1h' or '1d'", location=where
            )
        if self.ttl is not None and self.ttl.total_seconds() < cadence:
            raise DefinitionError(
                f"ttl {self.ttl} is shorter than the cadence {window_suffix(cadence)}: every value would expire "
                f"before the next tick",
                location=where,
            )
        return cadence

    @property
    def cadence_seconds(self) -> int | None:
        return cast(int | None, self.cadence)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The view's feature names: declared ones, or the names generated for its aggregations."""
        if self.aggregations:
            return tuple(n for a in self.aggregations for n in a.feature_names())
        return tuple(f.name for f in self.features)

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


ON_DEMAND_MODES = ("pandas", "arrow")


@dataclass(frozen=True, slots=True)
class OnDemandFeatureView:
    """Features computed at request time from request data and stored features, with one definition that
    runs both in training sets (Spark, through Arrow) and in serving.

    Two forms. Typed expressions (``features=[Feature(name, dtype, expr=...)]``), evaluated by the shared
    evaluator:

    >>> payment = RequestSource(schema={"amount": Float64})                      # doctest: +SKIP
    >>> payment_checks = OnDemandFeatureView(                                   # doctest: +SKIP
    ...     sources=[payment, card_profile],
    ...     features=[Feature("amount_vs_limit", Float64, expr="payment.amount / card_profile.credit_limit")],
    ... )

    Expressions name inputs as ``<source>.<field>``: a request source's field, or a feature view's feature.

    Or a plain Python function (``function=f, outputs={...}``, usually written with :func:`on_demand_function`)
    for what an expression cannot say. It receives one pandas DataFrame (``mode="pandas"``) or one
    ``pyarrow.Table`` (``mode="arrow"``) with a column ``<source>.<field>`` per input, one row per entity, and
    returns a DataFrame, a Table or a dict of columns holding exactly the ``outputs``. ``inputs`` lists the
    columns it reads (``["payment.amount", "card_profile.credit_limit"]``); by default every field of every
    source. The function must be defined with ``def`` at the top level of a module, so that serving and Spark
    import the same code by name.
    """

    sources: Sequence[RequestSource | FeatureView]
    features: Sequence[Feature] = ()
    description: str = ""
    name: str | None = None
    function: Callable[..., Any] | None = None
    outputs: Mapping[str, DType] | Sequence[Feature] | None = None
    mode: str = "pandas"
    inputs: Sequence[str] | None = None
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.location)
        sources = tuple(self.sources) if isinstance(self.sources, Sequence) else (self.sources,)
        if not sources or not all(isinstance(s, RequestSource | FeatureView) for s in sources):
            raise DefinitionError(
                "sources must be a non-empty list of RequestSource and FeatureView objects", location=where
            )
        features = self._expression_features(where) if self.function is None else self._function_outputs(where)
        checked = [f.name for f in features if f.checks]
        if checked:
            raise DefinitionError(
                f"on-demand feature(s) {checked} have checks: checks test the rows a materialization writes, and "
                f"on-demand features are computed per request; declare them on the stored views they read",
                location=where,
            )
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DefinitionError(f"duplicate feature name(s) {duplicates} in one view", location=where)
        _check_name(self.name, "on-demand feature view", self.location)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "features", features)
        if self.function is not None:
            object.__setattr__(self, "outputs", features)

    def _expression_features(self, where: str) -> tuple[Feature, ...]:
        if self.outputs is not None or self.inputs is not None or self.mode != "pandas":
            raise DefinitionError(
                "outputs=, inputs= and mode= go with function=...; expression features are "
                "features=[Feature(name, dtype, expr=...)]",
                location=where,
            )
        features = tuple(self.features)
        if not features or not all(isinstance(f, Feature) for f in features):
            raise DefinitionError(
                "an on-demand view needs features=[Feature(name, dtype, expr=...)] or function=... with outputs={...}",
                location=where,
            )
        missing = [f.name for f in features if f.expr is None]
        if missing:
            raise DefinitionError(
                f"on-demand feature(s) {missing} need expr=...: they have no source column", location=where
            )
        return features

    def _function_outputs(self, where: str) -> tuple[Feature, ...]:
        if tuple(self.features):
            raise DefinitionError(
                "give either features=[Feature(..., expr=...)] or function=... with outputs=..., not both",
                location=where,
            )
        if not callable(self.function):
            raise DefinitionError(f"function must be a Python function, got {self.function!r}", location=where)
        if self.mode not in ON_DEMAND_MODES:
            raise DefinitionError(
                f"unknown mode {self.mode!r} for function '{_function_label(self.function)}'; valid choices: "
                f"{', '.join(ON_DEMAND_MODES)}",
                location=where,
            )
        outputs: tuple[Feature, ...]
        if isinstance(self.outputs, Mapping):
            outputs = tuple(Feature(str(n), t, location=self.location) for n, t in self.outputs.items())
        elif isinstance(self.outputs, Sequence) and not isinstance(self.outputs, str):
            outputs = tuple(self.outputs)
            if not all(isinstance(f, Feature) for f in outputs):
                raise DefinitionError(
                    "outputs must map names to types ({'log_amount': Float64}) or be a list of Feature objects",
                    location=where,
                )
        else:
            outputs = ()
        if not outputs:
            raise DefinitionError(
                f"function '{_function_label(self.function)}' needs outputs=..., e.g. outputs={{'log_amount': "
                f"Float64}}",
                location=where,
            )
        with_expr = [f.name for f in outputs if f.expr is not None]
        if with_expr:
            raise DefinitionError(
                f"output(s) {with_expr} have expr=...: the function computes them, so drop expr", location=where
            )
        if self.inputs is not None:
            inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs)
            bad = [i for i in inputs if not (isinstance(i, str) and i.count(".") == 1 and all(i.split(".")))]
            if bad or not inputs:
                raise DefinitionError(
                    f"inputs must be a non-empty list of '<source>.<field>' names, e.g. ['payment.amount']; "
                    f"got {list(inputs)!r}",
                    location=where,
                )
            object.__setattr__(self, "inputs", inputs)
        return outputs

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def __getitem__(self, feature_name: str) -> FeatureRef:
        return self.select(feature_name)

    def select(self, *feature_names: str) -> FeatureRef:
        """Some of the view's features, for a FeatureService."""
        return _select(self, feature_names)


def on_demand_function(
    *,
    sources: Sequence[RequestSource | FeatureView],
    outputs: Mapping[str, DType] | Sequence[Feature],
    mode: str = "pandas",
    inputs: Sequence[str] | None = None,
    description: str = "",
    name: str | None = None,
) -> Callable[[Callable[..., Any]], OnDemandFeatureView]:
    """Turn a plain Python function into an on-demand feature view (the module-level name is the view's).

    >>> @on_demand_function(                                                   # doctest: +SKIP
    ...     sources=[payment], inputs=["payment.amount"], outputs={"log_amount": Float64}, mode="pandas"
    ... )
    ... def payment_shape(frame):
    ...     return {"log_amount": np.log10(frame["payment.amount"])}

    See :class:`OnDemandFeatureView` for what the function receives and returns. The description defaults to
    the first line of the function's docstring.
    """

    def wrap(function: Callable[..., Any]) -> OnDemandFeatureView:
        doc = (getattr(function, "__doc__", None) or "").strip().split("\n")[0]
        return OnDemandFeatureView(
            sources=sources,
            function=function,
            outputs=outputs,
            mode=mode,
            inputs=inputs,
            description=description or doc,
            name=name,
        )

    return wrap


def _as_tuple(checks: object, location: SourceLocation) -> tuple[Any, ...]:
    """``checks=`` as a tuple; each item is checked by the compiler, which knows the view's features."""
    if isinstance(checks, str) or not isinstance(checks, Sequence):
        raise DefinitionError(
            f"checks must be a list of checks (Range, AllowedValues, MaxNulls, RowCount, UniqueKeys, Drift), "
            f"got {checks!r}",
            location=str(location),
        )
    return tuple(checks)


def _function_label(function: Any) -> str:
    return str(getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or function)


def _select(view: FeatureView | OnDemandFeatureView, feature_names: tuple[str, ...]) -> FeatureRef:
    known = list(view.feature_names)
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
