"""The Feast import's conversion and its checks, without Feast: plain JSON in (what features/feast_export.py
prints), definition files and the list of what was not converted out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from features import feast_import
from features.discovery import discover
from features.errors import ConfigError
from features.feast_import import convert, export_feast_repo, feast_python, write


def field(name: str, dtype: str) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "description": ""}


def view(name: str, entities: list[str], features: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    source = {"name": "events", "kind": "PostgreSQLSource", "table": "events", "timestamp_field": "ts"}
    source.update(created_timestamp_column=None, field_mapping={"amount_cents": "amount"})
    return {
        "name": name,
        "kind": "FeatureView",
        "entities": entities,
        "entity_columns": [field("user_id", "Int64")] if entities else [],
        "features": features,
        "ttl_seconds": 3600,
        "online": True,
        "description": "",
        "source": source,
        **extra,
    }


def odfv(name: str, mode: str, foreign: list[str]) -> dict[str, Any]:
    source = f"def {name}(inputs):\n    return inputs[['amount']]\n"
    return {
        "name": name,
        "mode": mode,
        "description": "",
        "features": [field("amount", "Float64")],
        "request_sources": [],
        "view_sources": ["payments"],
        "write_to_online_store": False,
        "function": {"name": name, "source": source, "imports": [], "foreign_names": foreign},
    }


EXPORTED = {
    "project": "shop",
    "offline_store": {"type": "postgres", "host": "db", "port": 5432, "database": "shop", "user": "u", "password": "p"},
    "entities": [
        {"name": "user", "join_key": "user_id", "value_type": "INT64", "description": "A user."},
        {"name": "blob", "join_key": "blob_id", "value_type": "BYTES", "description": ""},
    ],
    "feature_views": [
        view("payments", ["user"], [field("amount", "Float32"), field("items", "Array(Int64)")]),
        view("global_stats", [], [field("total", "Float64")]),
        view("by_blob", ["blob"], [field("x", "Int64")]),
        {**view("labels", ["user"], [field("ok", "Bool")]), "kind": "LabelView"},
    ],
    "on_demand_feature_views": [
        {**odfv("carried", "pandas", []), "write_to_online_store": True},
        odfv("in_python", "python", []),
        odfv("helper", "pandas", ["_scale"]),
    ],
    "feature_services": [
        {
            "name": "model",
            "description": "",
            "projections": [
                {"view": "payments", "alias": None, "features": ["amount", "items"]},
                {"view": "payments", "alias": "p2", "features": ["amount"]},
                {"view": "in_python", "alias": None, "features": ["amount"]},
                {"view": "carried", "alias": None, "features": ["amount"]},
            ],
        },
        {"name": "empty", "description": "", "projections": [{"view": "by_blob", "alias": None, "features": ["x"]}]},
    ],
    "notes": [],
}


def test_what_is_not_converted_is_listed_with_its_reason() -> None:
    listed = {n.item: n.reason for n in convert(EXPORTED).not_converted}
    assert set(listed) == {
        "entity blob",
        "feature view payments: feature items",
        "feature view global_stats",
        "feature view by_blob",
        "feature view labels",
        "on-demand view in_python",
        "on-demand view helper",
        "feature service model: payments:items",
        "feature service model: payments as p2",
        "feature service model: in_python",
        "feature service empty: by_blob",
        "feature service empty",
    }
    assert listed["entity blob"] == "join key blob_id has type BYTES, which skewless lacks"
    assert "Array(Int64)" in listed["feature view payments: feature items"]
    assert listed["feature view global_stats"] == "it has no entities"
    assert "blob" in listed["feature view by_blob"]
    assert "LabelView" in listed["feature view labels"]
    assert "python" in listed["on-demand view in_python"]
    assert "_scale" in listed["on-demand view helper"]
    assert [n for n in convert(EXPORTED).notes if "carried" in n and "write_to_online_store" in n]


def test_the_files_load_as_skewless_definitions(tmp_path: Path) -> None:
    conversion = convert(EXPORTED)
    write(conversion, tmp_path)
    found = dict(discover(tmp_path / "definitions").objects)
    assert {"user", "payments", "events", "carried", "model"} <= set(found)
    payments = found["payments"]
    assert [(f.name, f.dtype.value, f.expr) for f in payments.features] == [("amount", "float64", "amount_cents")]
    assert payments.ttl.total_seconds() == 3600
    config = (tmp_path / "skewless.yaml").read_text()
    assert "feast_postgres: postgresql://u:${FEAST_POSTGRES_PASSWORD}@db:5432/shop" in config
    with pytest.raises(ConfigError, match="already holds"):
        write(conversion, tmp_path)


def test_without_a_feast_the_error_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert feast_python("/opt/feast/bin/python") == "/opt/feast/bin/python"
    monkeypatch.setattr(feast_import, "FEAST_VENV_PYTHON", tmp_path / "missing" / "python")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "feast" not in p])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"--feast-python.*bash bench/feast-venv\.sh"):
        feast_python()
    with pytest.raises(ConfigError, match=r"no feature_store\.yaml"):
        export_feast_repo(tmp_path, sys.executable)
