"""The public names of online/ and serving_api/, and the one-way imports DESIGN.md asks for."""

from __future__ import annotations

import ast
from pathlib import Path

import online
import serving_api

ROOT = Path(__file__).resolve().parents[2]


def test_public_names_are_pinned() -> None:
    assert online.__all__ == [
        "RedisOnlineStore",
        "RedisPublication",
        "decode_row",
        "encode_entity_key",
        "encode_row",
        "ensure_embedded_server",
        "stop_embedded_server",
    ]
    assert serving_api.__all__ == [
        "AccessDeniedError",
        "InvalidRequestError",
        "ServerError",
        "ServiceUnavailableError",
        "SkewlessClient",
        "create_app",
    ]
    assert all(hasattr(online, n) for n in online.__all__)
    assert all(hasattr(serving_api, n) for n in serving_api.__all__)


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_imports_run_one_way() -> None:
    for path in (ROOT / "online").glob("*.py"):
        assert not imported_roots(path) & {"offline", "pyspark", "serving_api", "fastapi"}, path
    for path in (ROOT / "serving_api").glob("*.py"):
        if path.name != "demo.py":  # the demo drives the whole store, Spark included
            assert not imported_roots(path) & {"offline", "pyspark"}, path
    assert not imported_roots(ROOT / "features" / "lookup.py") & {
        "redis",
        "fastapi",
        "online",
        "offline",
        "pyspark",
        "httpx",
    }
