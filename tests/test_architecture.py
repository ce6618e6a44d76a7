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


PUBLIC_API = {
    "features": [
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
