"""Translating plan expressions into Spark columns: one method per node, one per operator.

The semantics are those documented in :mod:`features.expressions` and shared with the serving path:
SQL null propagation, ``/`` always float64, division or modulo by zero gives null, three-valued
``and``/``or``. Spark 4 runs with ANSI mode on, so the zero cases are guarded explicitly rather than by
switching ANSI off for the whole session.

>>> from features.expressions import parse_expression
>>> from features.dtypes import DType
>>> to_spark(parse_expression("a / b", {"a": DType.INT64, "b": DType.INT64}))  # doctest: +SKIP
Column<'...'>
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from features.errors import SkewlessError
from features.expressions import Call, Column, Expr, Literal
from offline.jdbc import quote_spark, spark_type

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn


class UnsupportedExpressionError(SkewlessError, NotImplementedError):
    """A plan expression node or operator that the Spark translator has no rule for."""


class SparkTranslator:
    """Turns an :class:`~features.expressions.Expr` tree into a Spark ``Column``."""

    def translate(self, expr: Expr) -> SparkColumn:
        """The Spark column computing ``expr``, cast to the expression's plan type."""
        method: Callable[[Expr], SparkColumn] | None = getattr(self, f"visit_{type(expr).__name__}", None)
        if method is None:
            raise UnsupportedExpressionError(f"no Spark rule for expression node {type(expr).__name__}")
        return method(expr)

    def visit_Column(self, expr: Column) -> SparkColumn:
        from pyspark.sql import functions as F

        return F.col(quote_spark(expr.name)).cast(spark_type(expr.dtype))

    def visit_Literal(self, expr: Literal) -> SparkColumn:
        from pyspark.sql import functions as F

        return F.lit(expr.value).cast(spark_type(expr.dtype))

    def visit_Call(self, expr: Call) -> SparkColumn:
        rule: Callable[..., SparkColumn] | None = getattr(self, f"op_{expr.op}", None)
        if rule is None:
            known = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))
            raise UnsupportedExpressionError(f"no Spark rule for operator '{expr.op}'; supported: {known}")
        args = [self.translate(a) for a in expr.args]
        return rule(expr, *args).cast(spark_type(expr.dtype))

    # Arithmetic. Operands are cast to the result type first, so int + float is a float addition.
    def op_add(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        return a.cast(t) + b.cast(t)

    def op_sub(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        return a.cast(t) - b.cast(t)

    def op_mul(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        return a.cast(t) * b.cast(t)

    def op_div(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        # try_divide is null for a zero divisor whatever ANSI says; both sides as double give a float64.
        return F.try_divide(a.cast("double"), b.cast("double"))

    def op_mod(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        t = spark_type(expr.dtype)
        a, b = a.cast(t), b.cast(t)
        # Spark's % takes the dividend's sign; Python's (the serving evaluator's) takes the divisor's, so a
        # remainder whose sign differs from the divisor's moves by one divisor. CASE is evaluated lazily, so
        # the remainder never sees a zero divisor under ANSI mode.
        remainder = a % b
        floored = F.when((remainder != 0) & ((remainder < 0) != (b < 0)), remainder + b).otherwise(remainder)
        return F.when(b == 0, F.lit(None).cast(t)).otherwise(floored)

    def op_neg(self, expr: Call, a: SparkColumn) -> SparkColumn:
        return -a

    def op_abs(self, expr: Call, a: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        return F.abs(a)

    # Strings.
    def op_concat(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        return F.concat(a, b)  # null if either side is null

    def op_lower(self, expr: Call, a: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        return F.lower(a)

    def op_upper(self, expr: Call, a: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        return F.upper(a)

    def op_length(self, expr: Call, a: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        return F.char_length(a)  # characters (code points), like Python's len

    # Comparisons: numbers compare as float64 when the two sides differ in type.
    def _comparable(self, expr: Call, a: SparkColumn, b: SparkColumn) -> tuple[SparkColumn, SparkColumn]:
        left, right = expr.args
        if left.dtype is not right.dtype:
            return a.cast("double"), b.cast("double")
        return a, b

    def op_eq(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        a, b = self._comparable(expr, a, b)
        return a == b

    def op_ne(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        a, b = self._comparable(expr, a, b)
        return a != b

    def op_lt(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        a, b = self._comparable(expr, a, b)
        return a < b

    def op_le(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        a, b = self._comparable(expr, a, b)
        return a <= b

    def op_gt(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        a, b = self._comparable(expr, a, b)
        return a > b

    def op_ge(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        a, b = self._comparable(expr, a, b)
        return a >= b

    # Logic: Spark's AND / OR / NOT are SQL's three-valued ones.
    def op_and(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        return a & b

    def op_or(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        return a | b

    def op_not(self, expr: Call, a: SparkColumn) -> SparkColumn:
        return ~a

    # Functions.
    def op_coalesce(self, expr: Call, *args: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        t = spark_type(expr.dtype)
        return F.coalesce(*(a.cast(t) for a in args))

    def op_if_else(self, expr: Call, cond: SparkColumn, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        from pyspark.sql import functions as F

        t = spark_type(expr.dtype)
        # A null condition is not true: the "else" branch, as SQL's CASE WHEN.
        return F.when(cond, a.cast(t)).otherwise(b.cast(t))

    def op_is_null(self, expr: Call, a: SparkColumn) -> SparkColumn:
        return a.isNull()

    def op_cast(self, expr: Call, a: SparkColumn) -> SparkColumn:
        # try_cast: a value that does not convert ("abc" to int64) becomes null instead of failing the job.
        return a.try_cast(spark_type(expr.dtype))


def to_spark(expr: Expr) -> SparkColumn:
    """Translate one plan expression into a Spark column."""
    return SparkTranslator().translate(expr)
