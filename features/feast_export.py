"""Print a Feast feature repository as JSON, read by Feast's own parser: run by an interpreter that has Feast
(``python feast_export.py REPO``), never imported by skewless (:mod:`features.feast_import` reads its output).

It imports only Feast and the standard library. Feast's inference (join-key types, timestamp columns from the
data) runs when the sources can be read; when it fails the declared definitions are printed, with a warning.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

CARRIED_MODULES = ("pandas", "numpy")  # modules an on-demand function may use and still be carried


def main(repo: str) -> None:
    warnings.simplefilter("ignore")
    from feast import FeatureStore
    from feast.repo_operations import parse_repo

    root = Path(repo).resolve()
    os.chdir(root)
    sys.path.insert(0, str(root))
    sys.dont_write_bytecode = True
    contents = parse_repo(root)
    store = FeatureStore(repo_path=str(root))
    notes = []
    try:
        store._make_inferences(
            list(contents.data_sources),
            list(contents.entities),
            list(contents.feature_views),
            list(contents.on_demand_feature_views),
            list(contents.stream_feature_views),
            list(contents.feature_services),
            list(contents.label_views),
        )
    except Exception as exc:  # an unreachable source: what is declared is still worth converting
        notes.append(f"Feast could not infer from the data ({type(exc).__name__}: {exc}); declared types only")
    offline = store.config.offline_store
    print(
        json.dumps(
            {
                "project": store.config.project,
                "offline_store": {k: v for k, v in dict(offline).items() if isinstance(v, str | int | None)},
                "entities": [_entity(e) for e in contents.entities],
                "feature_views": [_view(v, "FeatureView") for v in contents.feature_views]
                + [_view(v, "StreamFeatureView") for v in contents.stream_feature_views]
                + [_view(v, "LabelView") for v in contents.label_views],
                "on_demand_feature_views": [_on_demand(v) for v in contents.on_demand_feature_views],
                "feature_services": [_service(s) for s in contents.feature_services],
                "notes": notes,
            }
        )
    )


def _entity(entity: Any) -> dict[str, Any]:
    return {
        "name": entity.name,
        "join_key": entity.join_key,
        "value_type": entity.value_type.name,
        "description": entity.description,
    }


def _field(field: Any) -> dict[str, Any]:
    return {"name": field.name, "dtype": str(field.dtype), "description": getattr(field, "description", "")}


def _seconds(ttl: timedelta | None) -> int | None:
    return None if ttl is None else int(ttl.total_seconds())


def _view(view: Any, kind: str) -> dict[str, Any]:
    return {
        "name": view.name,
        "kind": kind,
        "entities": list(view.entities),
        "entity_columns": [_field(f) for f in view.entity_columns],
        "features": [_field(f) for f in view.features],
        "ttl_seconds": _seconds(view.ttl),
        "online": bool(view.online),
        "description": view.description,
        "source": _source(view.stream_source or view.batch_source),
    }


def _source(source: Any) -> dict[str, Any] | None:
    if source is None:
        return None
    found: dict[str, Any] = {
        "name": source.name,
        "kind": type(source).__name__,
        "timestamp_field": source.timestamp_field or None,
        "created_timestamp_column": source.created_timestamp_column or None,
        "field_mapping": dict(source.field_mapping or {}),
    }
    # PostgreSQLSource keeps its table and query in _postgres_options only; other sources have properties.
    options = getattr(source, "_postgres_options", None)
    for attribute in ("table", "query", "path"):
        try:
            value = getattr(source, attribute, None) or getattr(options, f"_{attribute}", None)
        except Exception:  # some sources compute these and fail without a connection
            value = None
        if isinstance(value, str) and value:
            found[attribute] = value
    batch = getattr(source, "batch_source", None)
    if batch is not None:
        found["batch_source"] = _source(batch)
    return found


def _on_demand(view: Any) -> dict[str, Any]:
    transformation = view.feature_transformation
    udf = getattr(transformation, "udf", None)
    return {
        "name": view.name,
        "mode": view.mode,
        "description": view.description,
        "features": [_field(f) for f in view.features],
        "request_sources": [
            {"name": s.name, "fields": [_field(f) for f in s.schema]} for s in view.source_request_sources.values()
        ],
        "view_sources": [p.name for p in view.source_feature_view_projections.values()],
        "write_to_online_store": bool(getattr(view, "write_to_online_store", False)),
        "function": None if udf is None else _function(udf, getattr(transformation, "udf_string", "") or ""),
    }


def _function(udf: Any, source: str) -> dict[str, Any]:
    """The function's source and whether it can be carried: every global it reads must be a builtin, or come
    from :data:`CARRIED_MODULES` (a module, or a class or function of one); the imports that bind them are given."""
    imports: list[str] = []
    foreign: list[str] = []
    for name in sorted(_global_names(udf.__code__)):
        if name not in udf.__globals__:
            continue  # a builtin, or the name of an attribute
        statement = _import_of(name, udf.__globals__[name])
        if statement is not None:
            imports.append(statement)
        elif not hasattr(builtins, name):
            foreign.append(name)
    try:
        ast.parse(source)
    except SyntaxError:
        source = ""
    return {"name": udf.__name__, "source": source, "imports": imports, "foreign_names": foreign}


def _import_of(name: str, value: Any) -> str | None:
    """The import statement binding ``name`` to ``value``, when ``value`` comes from a carried module."""
    if type(value).__name__ == "module":
        module = value.__name__
        if module.split(".")[0] not in CARRIED_MODULES:
            return None
        return f"import {module}" if name == module else f"import {module} as {name}"
    module, own_name = getattr(value, "__module__", None) or "", getattr(value, "__name__", None)
    if module.split(".")[0] not in CARRIED_MODULES or not own_name:
        return None
    return f"from {module} import {own_name}" + ("" if own_name == name else f" as {name}")


def _global_names(code: Any) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if hasattr(constant, "co_names"):
            names |= _global_names(constant)
    return names


def _service(service: Any) -> dict[str, Any]:
    return {
        "name": service.name,
        "description": service.description,
        "projections": [
            {
                "view": p.name,
                "alias": p.name_alias or None,
                "features": [f.name for f in p.features],
            }
            for p in service.feature_view_projections
        ],
    }


if __name__ == "__main__":
    main(sys.argv[1])
