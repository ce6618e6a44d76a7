"""The router plugs in by name, every engine implements one protocol, and plain imports keep pyspark out."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import offline
from features.config import RepoConfig
from features.protocols import OfflineEngine
from offline.jobs import Engine
from offline.router import Router, default_engines


def test_entry_points_load_the_router() -> None:
    found = {e.name: e.load() for e in entry_points(group="skewless.offline_engines")}
    assert found["spark"] is Router and found["auto"] is Router


def test_router_and_engines_have_every_protocol_method(tmp_path: Path) -> None:
    router: OfflineEngine = Router(RepoConfig(root=tmp_path))
    for name in ("materialize", "training_dataset", "reproduce", "stop"):
        assert callable(getattr(router, name))
    engines: list[Engine] = default_engines(RepoConfig(root=tmp_path))
    assert [e.name for e in engines] == ["arrow", "warm", "spark"]
    for engine in engines:
        for name in ("refusal", "materialize", "training_set", "stop"):
            assert callable(getattr(engine, name)), (engine.name, name)
    in_process = default_engines(RepoConfig(root=tmp_path), in_process=True)
    assert [e.name for e in in_process] == ["arrow", "spark"]


def test_public_api_is_pinned() -> None:
    assert sorted(offline.__all__) == [
        "DatasetError",
        "Engine",
        "JoinedSet",
        "Manifest",
        "Materialization",
        "Router",
        "TrainingSet",
    ]


def test_importing_offline_does_not_start_or_import_spark() -> None:
    code = (
        "import sys, offline, offline.router, offline.spark.engine, offline.warm.client; "
        "from features.config import RepoConfig; offline.Router(RepoConfig(root='.')); "
        "print('pyspark' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_one_type_table_names_every_system_s_type() -> None:
    """features.dtypes.TYPE_NAMES against the systems themselves: Spark's JSON name of each Spark type is the
    Delta schema's, pandas and Arrow know their names, and Arrow's is what the evaluator computes in."""
    import pandas as pd
    from pyspark.sql import types as T

    from features.dtypes import TYPE_NAMES, DType, arrow_type
    from features.evaluator import ARROW_TYPES
    from offline.spark.jdbc import spark_type

    assert set(TYPE_NAMES) == set(DType)
    for dtype, names in TYPE_NAMES.items():
        assert spark_type(dtype).typeName() == names.delta, dtype
        assert isinstance(spark_type(dtype), getattr(T, names.spark))
        assert str(pd.Series([], dtype=names.pandas).dtype) == names.pandas, dtype
        assert arrow_type(dtype) == ARROW_TYPES[dtype] and str(arrow_type(dtype)) == names.arrow, dtype
