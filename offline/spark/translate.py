"""Translating plan expressions into Spark columns: one method per node, one per operator.

The semantics are those documented in :mod:`features.expressions` and :mod:`features.evaluator` (the
serving path's evaluator, proven equal to this translator by ``tests/conformance``): SQL null propagation,
``/`` always float64, division or modulo by zero gives null, three-valued ``and``/``or``, int64 overflow gives
null, a ``cast`` that does not convert gives null. Spark 4 runs with ANSI mode on, so every operator is
written with functions that cannot fail (``try_add``, ``try_mod``, ``try_cast``...) rather than by switching
ANSI off for the whole session: no row can fail a job, whatever order Spark evaluates it in.

>>> from features.expressions import parse_expression
>>> from features.dtypes import DType
>>> to_spark(parse_expression("a / b", {"a": DType.INT64, "b": DType.INT64}))  # doctest: +SKIP
Column<'...'>
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column as SparkColumn
from pyspark.sql import functions as F

from features.dtypes import DType
from features.evaluator import (
    FALSE_TEXT,
    FLOAT_TEXT,
    INT64_MIN,
    INT_TEXT,
    TRUE_TEXT,
    UnsupportedExpressionError,
    text_pattern,
)
from features.expressions import Call, Column, Expr, Literal, check_expression_depth
from offline.spark.jdbc import quote_spark, spark_type

__all__ = ["SparkTranslator", "UnsupportedExpressionError", "to_spark"]


class SparkTranslator:
    """Turns an :class:`~features.expressions.Expr` tree into a Spark ``Column``."""

    def translate(self, expr: Expr) -> SparkColumn:
        """The Spark column computing ``expr``, cast to the expression's plan type; an expression nested deeper
        than the parser allows is refused first, so the recursion below stays bounded."""
        check_expression_depth(expr)
        return self._visit(expr)

    def _visit(self, expr: Expr) -> SparkColumn:
        method: Callable[[Expr], SparkColumn] | None = getattr(self, f"visit_{type(expr).__name__}", None)
        if method is None:
            raise UnsupportedExpressionError(f"no Spark rule for expression node {type(expr).__name__}")
        return method(expr)

    def visit_Column(self, expr: Column) -> SparkColumn:
        return F.col(quote_spark(expr.name)).cast(spark_type(expr.dtype))

    def visit_Literal(self, expr: Literal) -> SparkColumn:
        return F.lit(expr.value).cast(spark_type(expr.dtype))

    def visit_Call(self, expr: Call) -> SparkColumn:
        rule: Callable[..., SparkColumn] | None = getattr(self, f"op_{expr.op}", None)
        if rule is None:
            known = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))
            raise UnsupportedExpressionError(f"no Spark rule for operator '{expr.op}'; supported: {known}")
        args = [self._visit(a) for a in expr.args]
        return rule(expr, *args).cast(spark_type(expr.dtype))

    # Arithmetic. Operands are cast to the result type first, so int + float is a float addition; int64
    # overflow gives null (try_*), float64 follows IEEE 754.
    def op_add(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        if expr.dtype is DType.INT64:
            a, b = self._unassociated(expr, a, b)
            return F.try_add(a.cast(t), b.cast(t))
        return a.cast(t) + b.cast(t)

    def op_sub(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        return F.try_subtract(a.cast(t), b.cast(t)) if expr.dtype is DType.INT64 else a.cast(t) - b.cast(t)

    def op_mul(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        if expr.dtype is DType.INT64:
            a, b = self._unassociated(expr, a, b)
            return F.try_multiply(a.cast(t), b.cast(t))
        return a.cast(t) * b.cast(t)

    def _unassociated(self, expr: Call, a: SparkColumn, b: SparkColumn) -> tuple[SparkColumn, SparkColumn]:
        # Spark's optimizer regroups nested integer + and * to fold their constants ((i + 1) + -1 becomes
        # i + 0), which changes which rows overflow to null. ~~x (the identity) between two operations stops it.
        def barrier(arg: Expr, column: SparkColumn) -> SparkColumn:
            return F.bitwise_not(F.bitwise_not(column)) if isinstance(arg, Call) else column

        return barrier(expr.args[0], a), barrier(expr.args[1], b)

    def op_div(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        # try_divide is null for a zero divisor (-0.0 included) whatever ANSI says; as doubles: a float64.
        return F.try_divide(a.cast("double"), b.cast("double"))

    def op_mod(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        a, b = a.cast(t), b.cast(t)
        # Spark's % takes the dividend's sign (Java's, C's fmod); Python's (the evaluator's) takes the divisor's,
        # so a remainder whose sign differs from the divisor's moves by one divisor, and a zero remainder takes
        # the divisor's sign (-3.0 % 3.0 is 0.0, 3.0 % -3.0 is -0.0). try_mod is null for a zero divisor.
        remainder = F.try_mod(a, b)
        rule = F.when((remainder != 0) & ((remainder < 0) != (b < 0)), remainder + b)
        if expr.dtype is DType.FLOAT64:
            # 0.0 * signum(b), not CASE ... THEN -0.0 ELSE 0.0: Spark's optimizer takes those literals for equal
            # and folds the CASE into 0.0.
            rule = F.when(remainder == 0, F.lit(0.0) * F.signum(b)).when(
                (remainder != 0) & ((remainder < 0) != (b < 0)), remainder + b
            )
        return rule.otherwise(remainder)

    def op_neg(self, expr: Call, a: SparkColumn) -> SparkColumn:
        if expr.dtype is DType.INT64:
            return F.try_subtract(F.lit(0).cast("bigint"), a)  # -(-2**63) overflows: null
        return -a

    def op_abs(self, expr: Call, a: SparkColumn) -> SparkColumn:
        if expr.dtype is DType.INT64:
            # Not F.abs: under ANSI it fails on -2**63, whose absolute value is no int64 (null here).
            return F.when(a < 0, F.try_subtract(F.lit(0).cast("bigint"), a)).otherwise(a)
        return F.abs(a)

    # Strings.
    def op_concat(self, expr: Call, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        return F.concat(a, b)  # null if either side is null

    # Spark 4 maps case with ICU (Unicode 16, full mappings: upper("ß") is "SS"), without locale.
    def op_lower(self, expr: Call, a: SparkColumn) -> SparkColumn:
        return F.lower(self._opaque(expr, a))

    def op_upper(self, expr: Call, a: SparkColumn) -> SparkColumn:
        return F.upper(self._opaque(expr, a))

    def _opaque(self, expr: Call, a: SparkColumn) -> SparkColumn:
        # Spark's optimizer rewrites upper(lower(s)) to upper(s), wrong with full case mappings
        # (upper(lower("İ")) is "I\u0307", upper("İ") is "İ"): a computed argument goes through concat(s, '').
        return F.concat(a, F.lit("")) if isinstance(expr.args[0], Call) else a

    def op_length(self, expr: Call, a: SparkColumn) -> SparkColumn:
        return F.char_length(a)  # characters (code points), like Python's len

    # Comparisons: numbers compare as float64 when the two sides differ in type. Spark orders floats as SQL
    # does (NaN == NaN, NaN above +inf, -0.0 == 0.0): that is the documented rule, the evaluator follows it.
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
        t = spark_type(expr.dtype)
        return F.coalesce(*(a.cast(t) for a in args))

    def op_if_else(self, expr: Call, cond: SparkColumn, a: SparkColumn, b: SparkColumn) -> SparkColumn:
        t = spark_type(expr.dtype)
        _, then, otherwise = expr.args
        if expr.dtype is DType.FLOAT64 and not (then.columns() or otherwise.columns()):
            # Two constant branches: Spark's optimizer folds CASE WHEN c THEN -0.0 ELSE 0.0 into 0.0 (it takes
            # the literals for equal). Picking from a two-element array keeps the sign; every operator is total,
            # so evaluating both branches cannot fail.
            return F.element_at(F.array(a.cast(t), b.cast(t)), F.when(cond, F.lit(1)).otherwise(F.lit(2)))
        # A null condition is not true: the "else" branch, as SQL's CASE WHEN.
        return F.when(cond, a.cast(t)).otherwise(b.cast(t))

    def op_is_null(self, expr: Call, a: SparkColumn) -> SparkColumn:
        return a.isNull()

    def op_cast(self, expr: Call, a: SparkColumn) -> SparkColumn:
        source, target = expr.args[0].dtype, expr.dtype
        t = spark_type(target)
        if source is target:
            return a
        if source is DType.FLOAT64 and target is DType.STRING:
            # Spark writes doubles with the JVM's Double.toString, whose digits changed in Java 19.
            raise UnsupportedExpressionError(
                "cast of float64 to string is not supported: its text would differ between engines (and JVM "
                'versions); cast to int64 first, or compare the number instead, e.g. cast(x, "int64")'
            )
        if source is DType.STRING and target in _TEXT_GRAMMAR:
            # Only the documented text converts (Spark alone would also take "1d", "+NaN", "\u00007"...): the
            # same regular expression as the evaluator's, anchored with \z (Java's $ allows a final newline).
            pattern = "^" + text_pattern(_TEXT_GRAMMAR[target]) + r"\z"
            return F.when(a.rlike(pattern), F.regexp_extract(a, pattern, 1).try_cast(t))
        if source is DType.FLOAT64 and target is DType.INT64:
            # try_cast saturates 2.0**63 to 2**63 - 1; outside [-2**63, 2**63) is null (NaN sorts above both).
            inside = (a >= F.lit(float(INT64_MIN))) & (a < F.lit(2.0**63))
            return F.when(inside, a.try_cast(t))
        # try_cast: anything else that does not convert becomes null instead of failing the job.
        return a.try_cast(t)


_TEXT_GRAMMAR = {DType.INT64: INT_TEXT, DType.FLOAT64: FLOAT_TEXT, DType.BOOL: f"{TRUE_TEXT}|{FALSE_TEXT}"}


def to_spark(expr: Expr) -> SparkColumn:
    """Translate one plan expression into a Spark column."""
    return SparkTranslator().translate(expr)
