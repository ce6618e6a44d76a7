"""The engines under test: each evaluates a batch of plan expressions over one Arrow table.

``EvaluatorEngine`` is ``features.evaluator``; ``SparkEngine`` translates with ``offline.spark.translate`` and runs one
Spark query per batch on a DataFrame built from the same Arrow data, with whole-stage code generation (the
path materialization takes: small local data would otherwise be evaluated by the optimizer's interpreter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from features.evaluator import evaluate
from features.expressions import Expr

ROW = "__row"
INTERPRETED_LOCAL_RELATIONS = "org.apache.spark.sql.catalyst.optimizer.ConvertToLocalRelation"


class Engine(Protocol):
    name: str

    def evaluate(self, exprs: Sequence[Expr], table: pa.Table) -> list[pa.Array]: ...


class EvaluatorEngine:
    name = "evaluator"

    def evaluate(self, exprs: Sequence[Expr], table: pa.Table) -> list[pa.Array]:
        columns = {name: table.column(name) for name in table.column_names}
        return [evaluate(e, columns, table.num_rows) for e in exprs]


class SparkEngine:
    """Spark as materialization runs it (whole-stage code generation). ``interpreted=True`` turns code
    generation off, so Spark's interpreted expression evaluation (its fallback when generated code fails to
    compile) is held to the same rules."""

    def __init__(self, spark: Any, *, interpreted: bool = False) -> None:
        self.spark = spark
        self.interpreted = interpreted
        self.name = "spark-interpreted" if interpreted else "spark"

    def evaluate(self, exprs: Sequence[Expr], table: pa.Table) -> list[pa.Array]:
        from offline.spark.translate import SparkTranslator

        translator = SparkTranslator()
        columns = [translator.translate(e).alias(f"e{n}") for n, e in enumerate(exprs)]
        frame = self.spark.createDataFrame(table.append_column(ROW, pa.array(range(table.num_rows), pa.int64())))
        settings = {"spark.sql.optimizer.excludedRules": INTERPRETED_LOCAL_RELATIONS}
        if self.interpreted:
            settings |= {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
        conf = self.spark.conf
        previous = {key: conf.get(key, None) for key in settings}
        for key, value in settings.items():
            conf.set(key, value)
        try:
            result = frame.select(ROW, *columns).toArrow()
        finally:
            for key, value in previous.items():
                if value is None:
                    conf.unset(key)
                else:
                    conf.set(key, value)
        result = result.sort_by(ROW)
        return [_normalise(result.column(f"e{n}").combine_chunks()) for n in range(len(exprs))]


def _normalise(array: pa.Array) -> pa.Array:
    # Spark may hand strings over as large_string: the same logical type, compared as pa.string().
    if pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    return array
