"""Every operator, on every type it accepts, over generated tables full of edge values."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given

from tests.conformance.engines import Engine
from tests.conformance.runner import budget, check
from tests.conformance.strategies import COLUMNS, tables

ARITHMETIC = [f"{a} {op} {b}" for op in "+-*/%" for a, b in [("i", "j"), ("x", "y"), ("i", "x"), ("y", "j")]]
UNARY = ["-i", "-x", "abs(i)", "abs(x)"]
STRINGS = ["s + u", "lower(s)", "upper(s)", "length(s)", "s + 'é'"]
COMPARISONS = [
    f"{a} {op} {b}"
    for op in ("==", "!=", "<", "<=", ">", ">=")
    for a, b in [("i", "j"), ("x", "y"), ("i", "x"), ("s", "u"), ("p", "q"), ("t", "w")]
]
LOGIC = ["p and q", "p or q", "not p", "p and x > 0", "q or i < 0"]
FUNCTIONS = [
    "coalesce(i, j)",
    "coalesce(x, i, 0)",
    "coalesce(y, x)",
    "coalesce(s, u, '')",
    "coalesce(p, q)",
    "coalesce(t, w)",
    "if_else(p, i, j)",
    "if_else(p, x, i)",
    "if_else(q, s, u)",
    "if_else(p, q, p)",
    "if_else(q, t, w)",
    *(f"is_null({c})" for c in COLUMNS),
]
CASTS = [
    'cast(i, "float64")',
    'cast(i, "string")',
    'cast(i, "bool")',
    'cast(x, "int64")',
    'cast(x, "bool")',
    'cast(s, "int64")',
    'cast(s, "float64")',
    'cast(s, "bool")',
    'cast(p, "int64")',
    'cast(p, "float64")',
    'cast(p, "string")',
    'cast(t, "string")',
    'cast(i, "int64")',
    'cast(s, "string")',
]
# Constants next to columns: Spark's optimizer folds and reorders them, the results must not move.
LITERALS = [
    "i + 9223372036854775807",
    "(i + 1) + (-1)",
    "(i - 1) + 1",
    "(i * 2) * 0",
    "(2 * i) * 3",
    "x * 1e308",
    "x + (-0.0)",
    "(x + 1.0) - 1.0",
    "i % (-1)",
    "x / (-0.0)",
    "1e999 - x",
    "if_else(p, -0.0, 0.0)",
    "upper(lower(s))",
    "lower(upper(s))",
    "upper(if_else(p, lower(s), lower(s)))",
]
EXPRESSIONS = ARITHMETIC + UNARY + STRINGS + COMPARISONS + LOGIC + FUNCTIONS + CASTS + LITERALS


def test_every_operator(engine: Engine) -> None:
    @budget(engine)
    @given(table=tables())
    def run(table: pa.Table) -> None:
        check(engine, EXPRESSIONS, table, COLUMNS)

    run()
