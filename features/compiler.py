"""Compiling discovered definitions into a :class:`~features.plan.Plan`.

Everything a definition can get wrong is checked here, before anything is stored: unknown columns, types
that do not fit, duplicate names, keys missing from a source. Each error names the file, the line and the
valid choices.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import NoReturn

from features.checks import (
    CHECK_TYPES,
    FEATURE_CHECKS,
    AllowedValues,
    Check,
    CheckPlan,
    MaxNulls,
    Range,
    RowCount,
    UniqueKeys,
)
from features.config import RepoConfig
from features.definitions import (
    Entity,
    FeatureRef,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    RequestSource,
    SqlSource,
)
from features.discovery import Discovered
from features.dtypes import DType
from features.errors import DefinitionError
from features.expressions import Expr, ExpressionError, Literal, parse_expression
from features.functions import resolve_qualname, source_fingerprint
from features.plan import (
    AggregatePlan,
    ColumnSpec,
    EntityPlan,
    FeaturePlan,
    FeatureRefPlan,
    FunctionPlan,
    OnDemandViewPlan,
    Plan,
    RequestSourcePlan,
    ServicePlan,
    SourcePlan,
    ViewPlan,
    stable_hash,
)
from features.sources import SourceUnavailableError, merge_declared, reflect_columns

# Reads a source's columns: (connection url, table, query) -> {column: type or None}.
ColumnReader = Callable[[str, str | None, str | None], Mapping[str, DType | None]]


def reflect_with(config: RepoConfig) -> ColumnReader:
    def read(connection: str, table: str | None, query: str | None) -> Mapping[str, DType | None]:
        return reflect_columns(config.connection_url(connection), table=table, query=query)

    return read


def compile_plan(discovered: Discovered, read_columns: ColumnReader) -> Plan:
    """Turn definitions into a plan, checking each against its source's real columns."""
    compiler = _Compiler(discovered, read_columns)
    for _, entity in discovered.of_kind(Entity):
        compiler.entity(entity)
    views = tuple(compiler.view(name, v) for name, v in discovered.of_kind(FeatureView))
    entities = tuple(sorted(compiler.entities.values(), key=lambda e: e.name))
    by_name = {v.name: v for v in views}
    on_demand = tuple(compiler.on_demand(name, v, by_name) for name, v in discovered.of_kind(OnDemandFeatureView))
    services = tuple(compiler.service(name, s, views) for name, s in discovered.of_kind(FeatureService))
    return Plan(
        on_demand_views=tuple(sorted(on_demand, key=lambda v: v.name)),
        entities=entities,
        views=tuple(sorted(views, key=lambda v: v.name)),
        services=tuple(sorted(services, key=lambda s: s.name)),
    )


class _Compiler:
    def __init__(self, discovered: Discovered, read_columns: ColumnReader) -> None:
        self.discovered = discovered
        self.read_columns = read_columns
        self.entities: dict[str, EntityPlan] = {}
        self.source_columns: dict[int, Mapping[str, DType | None]] = {}

    def entity(self, entity: Entity) -> EntityPlan:
        name = self.discovered.name_of(entity) or "_".join(entity.key_names)
        plan = EntityPlan(name, tuple(ColumnSpec(k, t) for k, t in entity.keys), self.discovered.where(entity))
        existing = self.entities.get(name)
        if existing is not None and existing.join_keys != plan.join_keys:
            raise DefinitionError(
                f"two different entities are named '{name}' (other at {existing.location})", location=plan.location
            )
        self.entities[name] = plan
        return plan

    def columns_of(self, source: SqlSource) -> Mapping[str, DType | None]:
        if id(source) not in self.source_columns:
            try:
                reflected = self.read_columns(source.connection, source.table, source.query)
            except DefinitionError as exc:  # the query itself is refused (features.sources.check_select)
                raise DefinitionError(f"query source: {exc}", location=self.discovered.where(source)) from None
            except (SourceUnavailableError, ValueError) as exc:
                raise DefinitionError(
                    f"cannot read the source's columns: {exc}", location=self.discovered.where(source)
                ) from exc
            declared = dict(source.schema or ())
            self.source_columns[id(source)] = merge_declared(reflected, declared)
        return self.source_columns[id(source)]

    def source(self, source: SqlSource, view_name: str, used: set[str]) -> SourcePlan:
        columns = self.columns_of(source)
        where = self.discovered.where(source)
        for role, column, expected in (
            ("timestamp", source.timestamp, DType.TIMESTAMP),
            ("created", source.created, DType.TIMESTAMP),
            ("changed_at", source.changed_at, DType.TIMESTAMP),
        ):
            if column is None:
                continue
            _require_column(columns, column, f"{role} column", where)
            if columns[column] is not expected:
                raise DefinitionError(
                    f"{role} column '{column}' has type {_type_name(columns[column])}; it must be a timestamp",
                    location=where,
                )
        unknown_types = sorted(c for c in used if columns.get(c) is None)
        if unknown_types:
            raise DefinitionError(
                f"the database does not tell the type of column(s) {unknown_types}; "
                f"declare them with schema={{...}} on the SqlSource",
                location=where,
            )
        keep = [c for c in columns if c in used]
        name = self.discovered.name_of(source) or f"{view_name}_source"
        return SourcePlan(
            name=name,
            connection=source.connection,
            table=source.table,
            query=source.query,
            timestamp_column=source.timestamp,
            created_column=source.created,
            columns=tuple(ColumnSpec(c, columns[c]) for c in keep),  # type: ignore[arg-type]
            late_rows_seconds=source.late_rows_seconds,
            changed_column=source.changed_at,
        )

    def view(self, name: str, view: FeatureView) -> ViewPlan:
        entity_plans = [self.entity(e) for e in view.entities]
        join_keys: list[ColumnSpec] = []
        for entity in entity_plans:
            join_keys.extend(k for k in entity.join_keys if k not in join_keys)
        columns = self.columns_of(view.source)
        for key in join_keys:
            _require_column(columns, key.name, "join key column", self.discovered.where(view))
            found = columns[key.name]
            if found is not None and found is not key.dtype:
                raise DefinitionError(
                    f"join key '{key.name}' is {key.dtype.value} on the entity but {found.value} in the source",
                    location=self.discovered.where(view),
                )
        typed = {c: t for c, t in columns.items() if t is not None}
        key_names = {k.name for k in join_keys}
        used: set[str] = set(key_names)
        if view.aggregations:
            features = self.aggregated_features(view, columns, typed, key_names, used)
        else:
            features = self.row_features(view, columns, typed, key_names, used)
        used.add(view.source.timestamp)
        if view.source.created:
            used.add(view.source.created)
        if view.source.changed_at:
            used.add(view.source.changed_at)
        source = self.source(view.source, name, used)
        # How runs find new rows (late_rows, changed_at) changes no stored value: not part of the table's identity.
        source_identity = {
            k: v
            for k, v in source.to_dict().items()
            if k not in ("name", "columns", "late_rows_seconds", "changed_column")
        }
        keys = [k.to_dict() for k in join_keys]
        cadence = view.cadence_seconds
        features = [
            FeaturePlan(
                f.name,
                f.dtype,
                f.expr,
                stable_hash(
                    {"source": source_identity, "keys": keys, "expr": f.expression.to_dict(), "dtype": f.dtype.value}
                    | ({} if f.aggregation is None else {"aggregation": f.aggregation.to_dict(), "cadence": cadence})
                ),
                f.location,
                f.aggregation,
            )
            for f in features
        ]
        identity = {"source": source_identity, "keys": keys, "features": [[f.name, f.fingerprint] for f in features]}
        storage = stable_hash(identity if cadence is None else identity | {"cadence": cadence})
        return ViewPlan(
            name=name,
            entities=tuple(e.name for e in entity_plans),
            join_keys=tuple(join_keys),
            source=source,
            features=tuple(features),
            ttl_seconds=_seconds(view.ttl),
            online=view.online,
            storage_fingerprint=storage,
            location=self.discovered.where(view),
            cadence_seconds=cadence,
            checks=compile_checks(
                name,
                [(f.name, f.checks, self.discovered.where(f)) for f in view.features],
                view.checks,
                self.discovered.where(view),
                {f.name: f.dtype for f in features},
                windowed=cadence is not None,
                where=self.discovered.where,
            ),
        )

    def row_features(
        self,
        view: FeatureView,
        columns: Mapping[str, DType | None],
        typed: Mapping[str, DType],
        key_names: set[str],
        used: set[str],
    ) -> list[FeaturePlan]:
        features: list[FeaturePlan] = []
        for feature in view.features:
            where = self.discovered.where(feature)
            if feature.name in key_names:
                raise DefinitionError(f"feature '{feature.name}' has the name of a join key", location=where)
            expr = _parse(feature.expression, typed, columns, f"feature '{feature.name}'", where)
            if not feature.dtype.accepts(expr.dtype):
                raise DefinitionError(
                    f"feature '{feature.name}' is declared {feature.dtype.value} but `{feature.expression}` is "
                    f"{expr.dtype.value}; declare dtype={expr.dtype.value} or use cast()",
                    location=where,
                )
            used |= expr.columns()
            features.append(FeaturePlan(feature.name, feature.dtype, expr, "", where))
        return features

    def aggregated_features(
        self,
        view: FeatureView,
        columns: Mapping[str, DType | None],
        typed: Mapping[str, DType],
        key_names: set[str],
        used: set[str],
    ) -> list[FeaturePlan]:
        """One feature per (aggregation, window), typed by the function and its input."""
        features: list[FeaturePlan] = []
        for aggregation in view.aggregations:
            where = self.discovered.where(aggregation)
            what = f"aggregation '{aggregation.prefix}'"
            if aggregation.column is None:
                expr: Expr = Literal(DType.INT64, 1)  # count() counts rows: an input that is never null
            else:
                expr = _parse(aggregation.column, typed, columns, what, where)
            filter_expr = None
            if aggregation.filter is not None:
                filter_expr = _parse(aggregation.filter, typed, columns, f"{what} filter", where)
                if filter_expr.dtype is not DType.BOOL:
                    raise DefinitionError(
                        f"{what}: filter `{aggregation.filter}` is {filter_expr.dtype.value}; it must be a boolean "
                        f"expression such as `amount > 100`",
                        location=where,
                    )
                used |= filter_expr.columns()
            dtype = _aggregate_type(aggregation.function, expr.dtype)
            if dtype is None:
                raise DefinitionError(
                    f"{what}: {aggregation.function} needs a numeric input (int64 or float64), but "
                    f"`{aggregation.column}` is {expr.dtype.value}; use cast()",
                    location=where,
                )
            used |= expr.columns()
            for name, window in zip(aggregation.feature_names(), aggregation.window_seconds, strict=True):
                if name in key_names:
                    raise DefinitionError(f"feature '{name}' has the name of a join key", location=where)
                plan = AggregatePlan(aggregation.function, window, filter_expr)
                features.append(FeaturePlan(name, dtype, expr, "", where, plan))
        return features

    def on_demand(self, name: str, view: OnDemandFeatureView, views: dict[str, ViewPlan]) -> OnDemandViewPlan:
        """Type the expressions against ``<source>.<field>`` inputs: request fields and stored features."""
        available: dict[str, DType] = {}
        requests: list[RequestSourcePlan] = []
        stored: dict[str, ViewPlan] = {}
        for source in view.sources:
            if isinstance(source, RequestSource):
                source_name = self.discovered.name_of(source) or f"{name}_request"
                requests.append(
                    RequestSourcePlan(
                        source_name, tuple(ColumnSpec(f, t) for f, t in source.fields), self.discovered.where(source)
                    )
                )
                available.update({f"{source_name}.{f}": t for f, t in source.fields})
            else:
                view_name = self.discovered.name_of(source) or source.name
                if view_name is None or view_name not in views:
                    raise DefinitionError(
                        "an on-demand view reads a feature view that is not bound to a module-level name "
                        "in definitions/",
                        location=self.discovered.where(view),
                    )
                stored[view_name] = views[view_name]
                available.update({f"{view_name}.{f.name}": f.dtype for f in views[view_name].features})
        if view.function is not None:
            return self.function_view(name, view, available, requests, stored)
        features: list[FeaturePlan] = []
        inputs: list[FeatureRefPlan] = []
        for feature in view.features:
            where = self.discovered.where(feature)
            try:
                expr = parse_expression(feature.expression, available)
            except ExpressionError as exc:
                raise DefinitionError(f"feature '{feature.name}': {exc}", location=where) from None
            if not feature.dtype.accepts(expr.dtype):
                raise DefinitionError(
                    f"feature '{feature.name}' is declared {feature.dtype.value} but `{feature.expression}` is "
                    f"{expr.dtype.value}; declare dtype={expr.dtype.value} or use cast()",
                    location=where,
                )
            used = sorted(expr.columns())
            refs = [FeatureRefPlan(*c.split(".", 1)) for c in used if c.split(".", 1)[0] in stored]
            inputs.extend(r for r in refs if r not in inputs)
            fingerprint = stable_hash(
                {
                    "expr": expr.to_dict(),
                    "dtype": feature.dtype.value,
                    "inputs": {str(r): stored[r.view].feature(r.feature).fingerprint for r in refs},
                    "request": [c for c in used if c.split(".", 1)[0] not in stored],
                }
            )
            features.append(FeaturePlan(feature.name, feature.dtype, expr, fingerprint, where))
        return OnDemandViewPlan(name, tuple(requests), tuple(inputs), tuple(features), self.discovered.where(view))

    def function_view(
        self,
        name: str,
        view: OnDemandFeatureView,
        available: dict[str, DType],
        requests: list[RequestSourcePlan],
        stored: dict[str, ViewPlan],
    ) -> OnDemandViewPlan:
        """A view computed by a plain Python function: check it can be imported by name, resolve its inputs,
        and fingerprint each output with the function's source."""
        where = self.discovered.where(view)
        function = _function_plan(name, view, available, where)
        names = function.input_names
        refs = [FeatureRefPlan(*c.split(".", 1)) for c in names if c.split(".", 1)[0] in stored]
        request_inputs = [c for c in names if c.split(".", 1)[0] not in stored]
        # Only the request fields the function reads are asked of a request (or of the training rows).
        requests = [
            RequestSourcePlan(r.name, fields, r.location)
            for r in requests
            if (fields := tuple(f for f in r.fields if f"{r.name}.{f.name}" in request_inputs))
        ]
        identity = {
            "function": function.to_dict(),  # its source hash, mode and typed inputs
            "inputs": {str(r): stored[r.view].feature(r.feature).fingerprint for r in refs},
            "request": request_inputs,
        }
        features = [
            FeaturePlan(
                f.name,
                f.dtype,
                None,
                stable_hash(identity | {"output": f.name, "dtype": f.dtype.value}),
                self.discovered.where(f),
            )
            for f in view.features
        ]
        return OnDemandViewPlan(name, tuple(requests), tuple(refs), tuple(features), where, function)

    def service(self, name: str, service: FeatureService, views: tuple[ViewPlan, ...]) -> ServicePlan:
        refs: list[FeatureRefPlan] = []
        for item in service.features:
            view_obj = item.view if isinstance(item, FeatureRef) else item
            view_name = self.discovered.name_of(view_obj) or view_obj.name
            if view_name is None:
                raise DefinitionError(
                    "a feature service uses a view that is not bound to a module-level name in definitions/",
                    location=self.discovered.where(service),
                )
            names = item.feature_names
            refs.extend(FeatureRefPlan(view_name, n) for n in names if FeatureRefPlan(view_name, n) not in refs)
        return ServicePlan(name, tuple(refs), self.discovered.where(service))


def _function_plan(name: str, view: OnDemandFeatureView, available: Mapping[str, DType], where: str) -> FunctionPlan:
    """The plan of an on-demand view's function: importable by module and qualified name, with known inputs."""
    function = view.function
    qualname = str(getattr(function, "__qualname__", "") or "")
    module_name = str(getattr(function, "__module__", "") or "")
    label = f"function '{qualname or function}' of on-demand view '{name}'"
    if not qualname or "<" in qualname or not module_name or module_name == "__main__":
        raise DefinitionError(
            f"{label} must be defined with 'def' at the top level of a definitions module (not a lambda, a "
            f"nested function or a method), so that serving and Spark can import it by name",
            location=where,
        )
    module = sys.modules.get(module_name)
    found = None if module is None else resolve_qualname(module, qualname)
    if found is not function:
        raise DefinitionError(
            f"{label} cannot be imported as {module_name}:{qualname} (is the name bound to something else?); "
            f"define it with 'def' at the top level of a module",
            location=where,
        )
    try:
        fingerprint = source_fingerprint(function)  # type: ignore[arg-type]
    except (OSError, TypeError) as exc:
        raise DefinitionError(f"cannot read the source of the {label}: {exc}", location=where) from None
    if view.inputs is None:
        inputs = tuple(available)
    else:
        inputs = tuple(view.inputs)
        unknown = [i for i in inputs if i not in available]
        if unknown:
            raise DefinitionError(
                f"unknown input(s) {unknown} of {label}; known: {', '.join(available)}", location=where
            )
        duplicates = sorted({i for i in inputs if inputs.count(i) > 1})
        if duplicates:
            raise DefinitionError(f"duplicate input(s) {duplicates} of {label}", location=where)
    typed = tuple(ColumnSpec(i, available[i]) for i in inputs)
    return FunctionPlan(module_name, qualname, view.mode, fingerprint, typed)


_NUMERIC_ONLY = ("sum", "mean", "stddev")


def _aggregate_type(function: str, input_type: DType) -> DType | None:
    """The type of an aggregate of ``input_type``; None when the function does not apply to it."""
    if function in ("count", "count_distinct"):
        return DType.INT64
    if function in _NUMERIC_ONLY and not input_type.is_numeric:
        return None
    if function in ("mean", "stddev"):
        return DType.FLOAT64
    return input_type  # sum keeps int64 exact; min, max, first, last keep the input's type


def _parse(text: str, typed: Mapping[str, DType], columns: Mapping[str, DType | None], what: str, where: str) -> Expr:
    try:
        return parse_expression(text, typed)
    except ExpressionError as exc:
        hint = ""
        untyped = sorted(c for c, t in columns.items() if t is None)
        if untyped:
            hint = f" (columns of unknown type, declare them in schema=: {', '.join(untyped)})"
        raise DefinitionError(f"{what}: {exc}{hint}", location=where) from None


def _require_column(columns: Mapping[str, DType | None], column: str, role: str, where: str) -> None:
    if column not in columns:
        raise DefinitionError(f"unknown {role} '{column}'; the source has: {', '.join(columns)}", location=where)


def _type_name(dtype: DType | None) -> str:
    return dtype.value if dtype is not None else "unknown"


def _seconds(ttl: timedelta | None) -> int | None:
    return None if ttl is None else int(ttl.total_seconds())


# -- checks (features/checks.py): each against the view's features and their types ------------------------------


def check_plan(check: Check, feature: str | None, where: str) -> CheckPlan:
    """The plan of a declared check, on ``feature`` (its own ``feature=`` or the Feature it sits on), written at
    ``where`` (``definitions/cards.py:12``)."""
    if isinstance(check, Range):
        return CheckPlan("range", feature, {"min": check.min, "max": check.max}, check.level, where)
    if isinstance(check, AllowedValues):
        return CheckPlan("allowed_values", feature, {"values": list(check.values)}, check.level, where)
    if isinstance(check, MaxNulls):
        return CheckPlan("max_nulls", feature, {"share": float(check.share)}, check.level, where)
    if isinstance(check, RowCount):
        return CheckPlan("row_count", None, {"min": check.min, "max": check.max}, check.level, where)
    if isinstance(check, UniqueKeys):
        return CheckPlan("unique_keys", None, {}, check.level, where)
    params = {"against": check.against, "tolerance": float(check.tolerance)}
    return CheckPlan("drift", feature, params, check.level, where)


def compile_checks(
    view_name: str,
    feature_checks: Sequence[tuple[str, Sequence[object], str]],
    view_checks: Sequence[object],
    view_where: str,
    features: dict[str, DType],
    *,
    windowed: bool,
    where: Callable[[object], str],
) -> tuple[CheckPlan, ...]:
    """The plans of a view's checks, each checked against the view's features and their types: a wrong check
    is a :class:`~features.errors.DefinitionError` naming the check's file and line and the valid choices."""
    plans: list[CheckPlan] = []
    for feature, checks, feature_where in feature_checks:
        for check in checks:
            if not isinstance(check, FEATURE_CHECKS):
                raise DefinitionError(_not_a_check(check, FEATURE_CHECKS), location=feature_where)
            if check.feature is not None and check.feature != feature:
                raise DefinitionError(
                    f"a check on feature '{feature}' names feature={check.feature!r}; drop feature= (or declare "
                    f"it in the view's checks=[...])",
                    location=where(check),
                )
            plans.append(check_plan(check, feature, where(check)))
    for check in view_checks:
        if not isinstance(check, CHECK_TYPES):
            raise DefinitionError(_not_a_check(check, CHECK_TYPES), location=view_where)
        target = getattr(check, "feature", None)
        if target is None and isinstance(check, Range | AllowedValues | MaxNulls):
            raise DefinitionError(
                f"{type(check).__name__} in a view's checks needs feature=...; features of view '{view_name}': "
                f"{', '.join(features)}",
                location=where(check),
            )
        plans.append(check_plan(check, target, where(check)))
    for plan in plans:
        _validate(view_name, plan, features, windowed)
    return tuple(plans)


def _not_a_check(check: object, allowed: tuple[type, ...]) -> str:
    names = ", ".join(t.__name__ for t in allowed)
    return f"{check!r} is not a check; valid choices here: {names}"


def _validate(view_name: str, plan: CheckPlan, features: dict[str, DType], windowed: bool) -> None:
    def fail(message: str) -> NoReturn:
        raise DefinitionError(message, location=plan.location)

    if plan.feature is not None and plan.feature not in features:
        fail(
            f"{plan.kind} check on unknown feature '{plan.feature}' of view '{view_name}'; known: {', '.join(features)}"
        )
    dtype = features.get(plan.feature) if plan.feature is not None else None
    if plan.kind == "range" and dtype is not None and not dtype.is_numeric:
        fail(
            f"a Range on feature '{plan.feature}' of type {dtype.value}: ranges apply to int64 and float64 "
            f"features; for strings and booleans use AllowedValues"
        )
    if plan.kind == "allowed_values" and dtype is not None:
        wanted = {DType.STRING: str, DType.INT64: int, DType.BOOL: bool}.get(dtype)
        if wanted is None:
            fail(
                f"AllowedValues on feature '{plan.feature}' of type {dtype.value}: allowed values apply to "
                f"string, int64 and bool features; for numbers use Range"
            )
        wrong = [
            v for v in plan.params["values"] if not isinstance(v, wanted) or (wanted is int and isinstance(v, bool))
        ]
        if wrong:
            fail(
                f"AllowedValues on feature '{plan.feature}' ({dtype.value}) has values of another type: {wrong!r}; "
                f"give {wanted.__name__} values"
            )
    if plan.kind == "drift" and dtype is DType.TIMESTAMP:
        fail(f"Drift on timestamp feature '{plan.feature}': drift is measured on numbers, strings and booleans")
    if plan.kind == "unique_keys" and windowed:
        fail(
            f"UniqueKeys on windowed view '{view_name}': it writes one row per entity and tick, so keys repeat "
            f"by design"
        )
