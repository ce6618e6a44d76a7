"""Random well-typed expression trees, parsed from generated text, over generated tables."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from features.dtypes import DType
from features.expressions import parse_expression
from tests.conformance.engines import Engine
from tests.conformance.runner import budget, check
from tests.conformance.strategies import COLUMNS, expressions, tables

RESULT_TYPES = [DType.INT64, DType.FLOAT64, DType.STRING, DType.BOOL, DType.TIMESTAMP]


@st.composite
def batches(draw: st.DrawFn) -> list[str]:
    """Expressions of every result type, checked to parse to the type they were built for."""
    texts = []
    for dtype in RESULT_TYPES:
        for text in draw(st.lists(expressions(dtype), min_size=4, max_size=8)):
            assert parse_expression(text, COLUMNS).dtype is dtype, text
            texts.append(text)
    return texts


def test_generated_expressions(engine: Engine) -> None:
    @budget(engine)
    @given(table=tables(max_rows=80), texts=batches())
    def run(table: pa.Table, texts: list[str]) -> None:
        check(engine, texts, table, COLUMNS)

    run()
