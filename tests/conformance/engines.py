"""The engines under test: each evaluates a batch of plan expressions over one Arrow table.

``EvaluatorEngine`` is ``features.evaluator``; ``SparkEngine`` translates with ``offline.translate`` and runs one
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
    name = "spark"

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def evaluate(self, exprs: Sequence[Expr], table: pa.Table) -> list[pa.Array]:
        from offline.translate import SparkTranslator

        translator = SparkTranslator()
        columns = [translator.translate(e).alias(f"e{n}") for n, e in enumerate(exprs)]
        frame = self.spark.createDataFrame(table.append_column(ROW, pa.array(range(table.num_rows), pa.int64())))
        conf = self.spark.conf
        previous = conf.get("spark.sql.optimizer.excludedRules", None)
        conf.set("spark.sql.optimizer.excludedRules", INTERPRETED_LOCAL_RELATIONS)
        try:
            result = frame.select(ROW, *columns).toArrow()
        finally:
            if previous is None:
                conf.unset("spark.sql.optimizer.excludedRules")
            else:
                conf.set("spark.sql.optimizer.excludedRules", previous)
        result = result.sort_by(ROW)
        return [_normalise(result.column(f"e{n}").combine_chunks()) for n in range(len(exprs))]


def _normalise(array: pa.Array) -> pa.Array:
    # Spark may hand strings over as large_string: the same logical type, compared as pa.string().
    if pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    return array
