"""What a repository defines, as a person reads it: the objects of a plan listed by kind, one described whole,
and each feature's definition written back as the expression a user would write.

``skewless list`` and ``skewless describe`` print these; ``--json`` prints the same dictionaries.
"""

from __future__ import annotations

from typing import Any

from features.errors import UnknownNameError
from features.expressions import Call, Column, Expr, Literal
from features.plan import FeaturePlan, OnDemandViewPlan, Plan, ViewPlan
from features.registry import RunRecord

KINDS = ("entities", "views", "services", "features")

_INFIX = {
    "add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "concat": "+",
    "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and": "and", "or": "or",
}  # fmt: skip


def expression_text(expr: Expr) -> str:
    """``expr`` as the text a user would write for it: parsing it again gives the same plan node.

    >>> from features.dtypes import DType
    >>> from features.expressions import parse_expression
    >>> expression_text(parse_expression("amount * 2 > limit", {"amount": DType.INT64, "limit": DType.INT64}))
    '((amount * 2) > limit)'
    """
    if isinstance(expr, Column):
        return expr.name
    if isinstance(expr, Literal):
        return repr(expr.value)
    assert isinstance(expr, Call)
    args = [expression_text(a) for a in expr.args]
    if expr.op in _INFIX:
        return f"({args[0]} {_INFIX[expr.op]} {args[1]})"
    if expr.op == "neg":
        return f"(-{args[0]})"
    if expr.op == "not":
        return f"(not {args[0]})"
    if expr.op == "cast":
        return f'cast({args[0]}, "{expr.dtype.value}")'
    return f"{expr.op}({', '.join(args)})"


def feature_definition(feature: FeaturePlan) -> str:
    """How a feature is computed, in one line: its expression, or its aggregation over a window."""
    text = "" if feature.expr is None else expression_text(feature.expr)
    aggregation = feature.aggregation
    if aggregation is None:
        return text
    window = "all rows" if aggregation.window_seconds is None else _duration(aggregation.window_seconds)
    where = "" if aggregation.filter is None else f" where {expression_text(aggregation.filter)}"
    return f"{aggregation.function}({text}) over {window}{where}"


def list_objects(plan: Plan, kind: str) -> list[dict[str, Any]]:
    """The plan's objects of ``kind`` (one of :data:`KINDS`), one dictionary each."""
    if kind == "entities":
        return [
            {"name": e.name, "join_keys": [k.to_dict() for k in e.join_keys], "defined_in": e.location}
            for e in plan.entities
        ]
    if kind == "views":
        return [_view_summary(v) for v in _all_views(plan)]
    if kind == "services":
        return [
            {"name": s.name, "features": [str(r) for r in s.features], "defined_in": s.location} for s in plan.services
        ]
    if kind == "features":
        return [
            {
                "name": f"{view.name}:{feature.name}",
                "dtype": feature.dtype.value,
                "definition": feature_definition(feature),
                "defined_in": feature.location,
            }
            for view in _all_views(plan)
            for feature in view.features
        ]
    raise UnknownNameError("kind", kind, KINDS)


def describe(plan: Plan, name: str) -> dict[str, Any]:
    """Everything the plan says of the entity, view or service ``name``."""
    for view in plan.views:
        if view.name == name:
            source = view.source
            return {
                **_view_summary(view),
                "source": {
                    "name": source.name,
                    "connection": source.connection,
                    "table": source.table,
                    "query": source.query,
                    "timestamp_column": source.timestamp_column,
                    "created_column": source.created_column,
                },
                "entities": list(view.entities),
                "features": [_feature(f) for f in view.features],
                "checks": [{"check": c.label, "level": c.level, "location": c.location} for c in view.checks],
                "storage_fingerprint": view.storage_fingerprint,
            }
    for odfv in plan.on_demand_views:
        if odfv.name == name:
            function = odfv.function
            return {
                **_view_summary(odfv),
                "function": None if function is None else f"{function.module}:{function.qualname} ({function.mode})",
                "features": [_feature(f) for f in odfv.features],
            }
    for kind in ("entities", "services"):
        for item in list_objects(plan, kind):
            if item["name"] == name:
                return {"kind": {"entities": "entity", "services": "service"}[kind], **item}
    known = [v.name for v in _all_views(plan)] + [e.name for e in plan.entities]
    raise UnknownNameError("name", name, [*known, *(s.name for s in plan.services)])


def run_summary(record: RunRecord) -> dict[str, Any]:
    """One run of the registry as ``skewless runs`` and the catalog show it (times to the second)."""
    started = record.started_at
    return {
        "started_at": None if started is None else started.isoformat(timespec="seconds"),
        "finished_at": record.finished_at.isoformat(timespec="seconds"),
        "plan_version": record.plan_version,
        "rows_read": record.rows_read,
        "rows_landed": record.rows_landed or 0,
        "rows_written": record.rows_written_offline,
        "offline_version": record.offline_version,
        "keys_published": record.rows_published,
        "engine": record.engine,
        "outcome": record.outcome,
        "error": record.error,
    }


def _all_views(plan: Plan) -> list[ViewPlan | OnDemandViewPlan]:
    return [*plan.views, *plan.on_demand_views]


def _view_summary(view: ViewPlan | OnDemandViewPlan) -> dict[str, Any]:
    if isinstance(view, OnDemandViewPlan):
        return {
            "kind": "on-demand view",
            "name": view.name,
            "inputs": [str(r) for r in view.inputs] + [f"{s.name} (request)" for s in view.request_sources],
            "features": len(view.features),
            "defined_in": view.location,
        }
    return {
        "kind": "windowed view" if view.is_windowed else "view",
        "name": view.name,
        "join_keys": [k.to_dict() for k in view.join_keys],
        "features": len(view.features),
        "ttl": None if view.ttl_seconds is None else _duration(view.ttl_seconds),
        "cadence": None if view.cadence_seconds is None else _duration(view.cadence_seconds),
        "online": view.online,
        "defined_in": view.location,
    }


def _feature(feature: FeaturePlan) -> dict[str, Any]:
    return {
        "name": feature.name,
        "dtype": feature.dtype.value,
        "definition": feature_definition(feature),
        "fingerprint": feature.fingerprint,
        "defined_in": feature.location,
    }


def _duration(seconds: int) -> str:
    """``604800`` -> ``"7d"``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
