"""One conformance suite, parametrised over every engine that evaluates plan expressions."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.engines import Engine, EvaluatorEngine, SparkEngine


@pytest.fixture(
    params=[
        "evaluator",
        pytest.param("spark", marks=pytest.mark.spark),
        pytest.param("spark-interpreted", marks=pytest.mark.spark),
    ]
)
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param.startswith("spark"):
        spark: Any = request.getfixturevalue("spark")
        return SparkEngine(spark, interpreted=request.param == "spark-interpreted")
    return EvaluatorEngine()
