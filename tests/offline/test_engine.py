"""The engine plugs in by name, pins its public API, and keeps pyspark out of plain imports."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import offline
from features.config import RepoConfig
from features.protocols import OfflineEngine
from offline.engine import SparkEngine


def test_entry_point_loads_the_spark_engine() -> None:
    (found,) = [e for e in entry_points(group="skewless.offline_engines") if e.name == "spark"]
    assert found.load() is SparkEngine


def test_engine_has_every_protocol_method(tmp_path: Path) -> None:
    engine: OfflineEngine = SparkEngine(RepoConfig(root=tmp_path))
    for name in ("materialize", "training_dataset", "reproduce", "stop"):
        assert callable(getattr(engine, name))


def test_public_api_is_pinned() -> None:
    assert sorted(offline.__all__) == [
        "DatasetError",
        "JavaNotFoundError",
        "SparkEngine",
        "SparkTranslator",
        "UnsupportedExpressionError",
        "ViewInput",
        "get_spark",
        "materialize",
        "point_in_time_join",
        "reproduce",
        "stop_spark",
        "to_spark",
        "training_dataset",
    ]


def test_importing_offline_does_not_start_or_import_spark() -> None:
    code = "import sys, offline, offline.engine; print('pyspark' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
