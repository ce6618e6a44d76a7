"""The Spark translator against a plain-Python evaluation of every operator, nulls and zeros included."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from features.dtypes import DType
from features.expressions import Call, Column, Expr, Literal, parse_expression
from offline.spark.translate import SparkTranslator, UnsupportedExpressionError

COLUMNS = {
    "a": DType.INT64,
    "b": DType.INT64,
    "x": DType.FLOAT64,
    "y": DType.FLOAT64,
    "s": DType.STRING,
    "t": DType.STRING,
    "p": DType.BOOL,
    "q": DType.BOOL,
}

EXPRESSIONS = [
    "a + b",
    "a - b",
    "a * b",
    "a / b",
    "a % b",
    "-a",
    "x + a",
    "x - y",
    "x * y",
    "x / y",
    "x % y",
    "a / x",
    "x % b",
    "-x",
    "abs(a)",
    "abs(x)",
    "s + t",
    "lower(s)",
    "upper(s)",
    "length(s)",
    "a == b",
    "a != b",
    "a < b",
    "a <= b",
    "a > b",
    "a >= b",
    "x == a",
    "x < y",
    "s == t",
    "s < t",
    "p == q",
    "p and q",
    "p or q",
    "not p",
    "p and a > 0",
    "coalesce(a, b)",
    "coalesce(x, a, 0)",
    "coalesce(s, t, 'z')",
    "if_else(p, a, b)",
    "if_else(p, x, a)",
    "if_else(q, s, t)",
    "is_null(a)",
    "is_null(s)",
    'cast(a, "float64")',
    'cast(x, "int64")',
    'cast(a, "string")',
    'cast(s, "int64")',
    'cast(a, "bool")',
    'cast(s, "float64")',
    "a / 0",
    "a % 0",
    "x / 0.0",
    "(a + 1) * 2 - b % 3",
]


# --- the oracle: plain Python, written from the semantics in features/expressions.py -------------------------
def _null_safe(fn: Any) -> Any:
    def apply(*args: Any) -> Any:
        return None if any(a is None for a in args) else fn(*args)

    return apply


def _div(a: Any, b: Any) -> Any:
    return None if b == 0 else float(a) / float(b)


def _mod(a: Any, b: Any) -> Any:
    return None if b == 0 else a % b  # Python's sign rule: the result takes the divisor's sign


def _and(a: Any, b: Any) -> Any:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: Any, b: Any) -> Any:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _cast(value: Any, dtype: DType) -> Any:
    if value is None:
        return None
    try:
        if dtype is DType.FLOAT64:
            return float(value)
        if dtype is DType.INT64:
            return int(value) if not isinstance(value, str) else int(value.strip())
        if dtype is DType.BOOL:
            return bool(value)
        if dtype is DType.STRING:
            return str(value).lower() if isinstance(value, bool) else str(value)
    except ValueError:
        return None
    raise AssertionError(dtype)


OPS: dict[str, Any] = {
    "add": _null_safe(lambda a, b: a + b),
    "sub": _null_safe(lambda a, b: a - b),
    "mul": _null_safe(lambda a, b: a * b),
    "div": _null_safe(_div),
    "mod": _null_safe(_mod),
    "neg": _null_safe(lambda a: -a),
    "abs": _null_safe(abs),
    "concat": _null_safe(lambda a, b: a + b),
    "lower": _null_safe(str.lower),
    "upper": _null_safe(str.upper),
    "length": _null_safe(len),
    "eq": _null_safe(lambda a, b: a == b),
    "ne": _null_safe(lambda a, b: a != b),
    "lt": _null_safe(lambda a, b: a < b),
    "le": _null_safe(lambda a, b: a <= b),
    "gt": _null_safe(lambda a, b: a > b),
    "ge": _null_safe(lambda a, b: a >= b),
    "and": _and,
    "or": _or,
    "not": _null_safe(lambda a: not a),
    "coalesce": lambda *args: next((a for a in args if a is not None), None),
    "if_else": lambda c, a, b: a if c is True else b,
    "is_null": lambda a: a is None,
}


def evaluate(expr: Expr, row: dict[str, Any]) -> Any:
    if isinstance(expr, Column):
        return row[expr.name]
    if isinstance(expr, Literal):
        return expr.value
    assert isinstance(expr, Call)
    args = [evaluate(a, row) for a in expr.args]
    if expr.op == "cast":
        return _cast(args[0], expr.dtype)
    value = OPS[expr.op](*args)
    if value is not None and expr.dtype is DType.FLOAT64:
        value = float(value)
    return value


def _rows() -> list[dict[str, Any]]:
    rng = random.Random(7)
    words = ["Alpha", "beta", "ÉCOLE", "", "42", " 7", "x1", "Zeta"]
    rows = []
    for i in range(60):
        rows.append(
            {
                "a": rng.choice([None, 0, -7, 3, rng.randint(-50, 50)]),
                "b": rng.choice([None, 0, 3, -4, rng.randint(-9, 9)]),
                "x": rng.choice([None, 0.0, -2.5, 1.25, round(rng.uniform(-10, 10), 3)]),
                "y": rng.choice([None, 0.0, 4.0, -0.5, round(rng.uniform(-10, 10), 3)]),
                "s": rng.choice([None, *words]),
                "t": rng.choice([None, *words]),
                "p": rng.choice([None, True, False]),
                "q": rng.choice([None, True, False]),
                "i": i,
            }
        )
    return rows


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(actual, float):
        return math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-12) or (
            math.isnan(actual) and math.isnan(expected)
        )
    return type(actual) is type(expected) and actual == expected


@pytest.mark.spark
def test_every_operator_matches_plain_python(spark: Any) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    rows = _rows()
    schema = T.StructType(
        [
            T.StructField("a", T.LongType()),
            T.StructField("b", T.LongType()),
            T.StructField("x", T.DoubleType()),
            T.StructField("y", T.DoubleType()),
            T.StructField("s", T.StringType()),
            T.StructField("t", T.StringType()),
            T.StructField("p", T.BooleanType()),
            T.StructField("q", T.BooleanType()),
            T.StructField("i", T.LongType()),
        ]
    )
    frame = spark.createDataFrame([tuple(r[c] for c in schema.names) for r in rows], schema)
    translator = SparkTranslator()
    exprs = [parse_expression(text, COLUMNS) for text in EXPRESSIONS]
    result = frame.select("i", *(translator.translate(e).alias(f"e{n}") for n, e in enumerate(exprs)))
    got = {r["i"]: r for r in result.orderBy(F.col("i")).collect()}
    mismatches = []
    for row in rows:
        for n, (text, expr) in enumerate(zip(EXPRESSIONS, exprs, strict=True)):
            expected = evaluate(expr, row)
            actual = got[row["i"]][f"e{n}"]
            if not _same(actual, expected):
                mismatches.append(f"{text} on {row}: spark {actual!r}, python {expected!r}")
    assert not mismatches, "\n".join(mismatches[:20])


@pytest.mark.spark
def test_division_by_literal_zero_is_null_under_ansi(spark: Any) -> None:
    assert spark.conf.get("spark.sql.ansi.enabled") == "true"
    expr = parse_expression("a / 0 + a % 0", {"a": DType.INT64})
    frame = spark.range(2).withColumnRenamed("id", "a")
    assert frame.select(SparkTranslator().translate(expr).alias("v")).collect()[0]["v"] is None


def test_unknown_operator_has_a_named_error() -> None:
    bad = Call(DType.INT64, "power", (Column(DType.INT64, "a"), Literal(DType.INT64, 2)))
    with pytest.raises(UnsupportedExpressionError, match=r"power.*supported: .*add"):
        SparkTranslator().translate(bad)
    assert issubclass(UnsupportedExpressionError, NotImplementedError)


def test_unknown_node_has_a_named_error() -> None:
    class Weird(Expr):
        pass

    with pytest.raises(UnsupportedExpressionError, match="Weird"):
        SparkTranslator().translate(Weird(DType.INT64))


@pytest.mark.spark
def test_the_deepest_expression_the_parser_allows_runs_in_spark_like_python(spark: Any) -> None:
    """A sum of MAX_EXPRESSION_DEPTH terms (and a deeper and/or chain one level under the limit): Spark gets
    them, barriers and all, and computes what plain Python does."""
    from features.expressions import MAX_EXPRESSION_DEPTH

    total = parse_expression(" + ".join(["a", "b"] * (MAX_EXPRESSION_DEPTH // 2)), {"a": DType.INT64, "b": DType.INT64})
    either = parse_expression(" or ".join(["a > 5"] * (MAX_EXPRESSION_DEPTH - 2)), {"a": DType.INT64})
    frame = spark.createDataFrame([(1, 2), (7, None), (None, 3)], "a bigint, b bigint")
    got = frame.select(
        SparkTranslator().translate(total).alias("total"), SparkTranslator().translate(either).alias("either")
    ).collect()
    half = MAX_EXPRESSION_DEPTH // 2
    assert [(r["total"], r["either"]) for r in got] == [(half * 3, False), (None, True), (None, None)]


def test_the_translator_refuses_an_expression_deeper_than_the_parser_allows() -> None:
    # Plans are JSON: one edited by hand must not make the translator recurse without bound.
    from functools import reduce

    from features.expressions import MAX_EXPRESSION_DEPTH, ExpressionError

    column = Column(DType.INT64, "a")
    deep = reduce(lambda left, _: Call(DType.INT64, "add", (left, column)), range(3000), column)
    with pytest.raises(ExpressionError, match=f"3001 levels, at most {MAX_EXPRESSION_DEPTH}"):
        SparkTranslator().translate(deep)
