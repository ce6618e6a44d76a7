"""The architecture a newcomer reads from the folder names, enforced.

DESIGN.md: dependencies run one way, features <- offline, online <- serving_api; offline and online never
import each other; features imports no engine, store or web stack.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "features": {"offline", "online", "serving_api", "pyspark", "delta", "redis", "fastapi", "starlette", "uvicorn"},
    "offline": {"online", "serving_api", "redis", "fastapi", "starlette", "uvicorn"},
    "online": {"offline", "serving_api", "pyspark", "delta", "fastapi", "starlette", "uvicorn"},
    "serving_api": {"offline", "pyspark", "delta"},
    "definitions": {"offline", "online", "serving_api", "pyspark", "redis", "fastapi"},
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"{package}/ imports what DESIGN.md forbids"


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import pyspark.sql\n    from redis import Redis\n")
    assert imported_modules(sample) == {"pyspark", "redis"}


# The offline engines are peers (offline/jobs.py): none imports another, the shared modules beside them import
# none, and only the router knows them all. The warm engine's caller side sends jobs without Spark.
OFFLINE_ENGINES = ("offline.arrow", "offline.spark", "offline.warm")
OFFLINE_FORBIDDEN = {
    "offline/arrow": {"offline.spark", "offline.warm", "pyspark", "delta"},
    "offline/spark": {"offline.arrow", "offline.warm"},
    "offline/warm/client.py": {"offline.arrow", "offline.spark", "pyspark", "delta"},
    "offline/warm/commands.py": {"offline.arrow", "offline.spark", "pyspark", "delta"},
}


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full dotted name (``from offline.arrow import join`` gives
    ``offline.arrow`` and ``offline.arrow.join``), lazy imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _matches(names: set[str], prefixes: set[str] | tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_offline_engines_do_not_import_each_other() -> None:
    offenders: dict[str, list[str]] = {}
    for place, forbidden in OFFLINE_FORBIDDEN.items():
        paths = [ROOT / place] if place.endswith(".py") else sorted((ROOT / place).rglob("*.py"))
        for path in paths:
            found = _matches(imported_names(path), forbidden)
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    for path in sorted((ROOT / "offline").glob("*.py")):  # the shared modules
        if path.name not in ("router.py", "__init__.py"):
            found = _matches(imported_names(path), (*OFFLINE_ENGINES, "pyspark", "delta"))
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "an offline engine or shared module imports another engine"


def test_no_import_cycle_in_offline() -> None:
    """Lazy imports included: a circle that only lazy imports close is still one module needing the other."""
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "offline").rglob("*.py")
    }
    graph = {name: {m for m in imported_names(path) if m in modules and m != name} for name, path in modules.items()}
    for name in graph:  # a package's __init__ is imported with each of its modules: not a dependency to follow
        graph[name] -= {p for p in graph[name] if name.startswith(p + ".")}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*trail, nxt]):
                return True
        state[node] = 2
        return False

    for name in sorted(graph):
        if state.get(name) is None and visit(name, [name]):
            break
    assert cycle == [], f"import circle: {' -> '.join(cycle)}"


PUBLIC_API = {
    "features": [
        "AllowedValues",
        "ChecksFailedError",
        "Drift",
        "MaxNulls",
        "Range",
        "RowCount",
        "UniqueKeys",
        "Aggregation",
        "Bool",
        "ConfigError",
        "DType",
        "DefinitionError",
        "Entity",
        "EntityKeyError",
        "Feature",
        "FeatureRef",
        "FeatureService",
        "FeatureStore",
        "FeatureView",
        "Float64",
        "FunctionLoadError",
        "Int64",
        "MaterializationError",
        "OnDemandFeatureView",
        "OnDemandFunctionError",
        "OnlineStoreError",
        "PushConflictError",
        "PushError",
        "RegistryError",
        "RequestSource",
        "SchemaMismatchError",
        "SkewlessError",
        "SqlSource",
        "String",
        "Timestamp",
        "UnknownNameError",
        "on_demand_function",
    ],
}


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_public_api_is_pinned(package: str) -> None:
    module = __import__(package)
    assert sorted(module.__all__) == sorted(PUBLIC_API[package])
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_error_hierarchy_matches_builtins() -> None:
    from features import errors

    assert issubclass(errors.DefinitionError, ValueError)
    assert issubclass(errors.UnknownNameError, LookupError)
    assert issubclass(errors.OnlineStoreError, ConnectionError)
    for name in (
        "DefinitionError",
        "ConfigError",
        "RegistryError",
        "UnknownNameError",
        "SchemaMismatchError",
        "MaterializationError",
        "OnlineStoreError",
        "EntityKeyError",
    ):
        assert issubclass(getattr(errors, name), errors.SkewlessError)


def test_every_error_is_defined_once_in_one_tree() -> None:
    """features/errors.py holds every error class, each under SkewlessError and a matching built-in; the
    modules that raise them import them from there."""
    import inspect

    from features import errors

    elsewhere = {}
    for package in ("features", "offline", "online", "serving_api"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "features" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ClassDef):
                    bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                    if any(b.endswith(("Error", "Exception")) for b in bases):
                        elsewhere[f"{path.relative_to(ROOT)}:{node.lineno}"] = node.name
    assert elsewhere == {}, "error classes outside features/errors.py"
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)]
    assert len(classes) > 20
    for error in classes:
        assert issubclass(error, errors.SkewlessError), error
        assert error is errors.SkewlessError or len(error.__mro__) > 3, f"{error.__name__} has no built-in kind"
