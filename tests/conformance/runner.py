"""Running one batch of expressions through an engine and the oracle, with per-engine hypothesis budgets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, Phase, settings

from features.dtypes import DType
from features.expressions import Expr, parse_expression
from tests.conformance import oracle
from tests.conformance.compare import assert_all_same
from tests.conformance.engines import Engine

# Spark answers one query in a fraction of a second, the evaluator in milliseconds: each example is a whole
# table (up to 120 rows) and a batch of expressions, so Spark needs far fewer examples for the same coverage.
EXAMPLES = {"evaluator": 50, "spark": 10, "spark-interpreted": 4}


def budget(engine: Engine, scale: float = 1.0) -> Callable[[Any], Any]:
    return settings(
        max_examples=max(1, int(EXAMPLES[engine.name] * scale)),
        deadline=None,
        database=None,
        # No shrinking: a mismatch message already names the expression and the row, and shrinking tables of
        # a hundred rows through Spark takes minutes.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


def check(engine: Engine, texts: Sequence[str], table: pa.Table, columns: dict[str, DType]) -> None:
    exprs = [parse_expression(t, columns) for t in texts]
    check_exprs(engine, exprs, texts, table)


def check_exprs(engine: Engine, exprs: Sequence[Expr], labels: Sequence[str], table: pa.Table) -> None:
    actual = engine.evaluate(exprs, table)
    expected = oracle.expected(exprs, table)
    assert_all_same(engine.name, labels, actual, expected, table)
