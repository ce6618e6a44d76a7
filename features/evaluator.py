"""The one evaluator of plan expressions outside Spark: vectorised over Arrow arrays.

The serving path (request-time features) and the conformance suite evaluate plan expressions here; Spark
evaluates the same nodes through ``offline.spark.translate``. The two agree exactly, as the suite in
``tests/conformance`` proves on generated data. The rules, documented in :mod:`features.expressions`:

- SQL nulls: a null input gives a null output, except ``coalesce``, ``is_null`` and the three-valued
  (Kleene) ``and``/``or``; ``if_else(null, a, b)`` gives ``b``.
- Every operator is total: a row that cannot be computed gives null, never an error. ``x / 0`` and
  ``x % 0`` (also ``-0.0``) are null, int64 overflow of ``+ - *``, unary ``-`` and ``abs`` is null, and a
  ``cast`` of a value that does not convert is null.
- ``/`` gives float64; ``%`` follows Python's sign rule (the result, zero included, has the divisor's sign).
- float64 follows IEEE 754: results are bit-identical to Spark's (``-0.0`` included), except that which
  NaN (sign, payload) is unspecified. Comparisons follow SQL's total order, as Spark and PostgreSQL do:
  ``NaN == NaN`` is true, NaN is greater than every other value (``+inf`` included), ``-0.0 == 0.0``.
  An int64 compared with a float64 is converted to float64 first (round to nearest even).
- Strings are Unicode code points: ``length`` counts them, comparisons order them, ``lower``/``upper`` use
  Unicode 16 full case mappings without locale (``upper("ß") == "SS"``), as Spark 4 does through ICU.
- ``cast`` accepts, from text, only ``[+-]digits`` (int64), decimal or scientific notation, ``inf``,
  ``infinity`` and ``nan`` in any case (float64) and ``t true y yes 1 f false n no 0`` in any case (bool),
  each optionally surrounded by ASCII control characters and spaces; float64 to int64 truncates toward zero
  (null outside the int64 range, and for NaN and infinities); numbers cast to bool are ``x != 0``; bools cast
  to text are ``"true"``/``"false"``; timestamps cast to text are ``YYYY-MM-DD HH:MM:SS[.ffffff]`` in UTC with
  trailing zeros of the fraction dropped. Casting a float64 to text is not supported (its text depends on
  the JVM version in Spark): :class:`UnsupportedExpressionError`.

>>> import pyarrow as pa
>>> from features.dtypes import DType
>>> from features.expressions import parse_expression
>>> expr = parse_expression("a % b", {"a": DType.INT64, "b": DType.INT64})
>>> evaluate(expr, {"a": pa.array([-7, 7, None]), "b": pa.array([3, 0, 1])}, 3).to_pylist()
[2, None, None]
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.dtypes import DType, arrow_type
from features.errors import UnknownNameError, UnsupportedExpressionError
from features.expressions import Call, Column, Expr, Literal, check_expression_depth

__all__ = ["ARROW_TYPES", "UnsupportedExpressionError", "evaluate"]

ARROW_TYPES: dict[DType, pa.DataType] = {dtype: arrow_type(dtype) for dtype in DType}

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Text accepted by cast, shared word for word with offline/spark/translate.py (same regular expressions, written so
# that Java's and Python's regex engines read them alike: explicit ASCII classes, no \s, no (?i)).
SPACE = r"[\x00-\x20]*"
INT_TEXT = r"[+-]?[0-9]+"
FLOAT_TEXT = (
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|[+-]?[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN]"
)
TRUE_TEXT = r"[tT](?:[rR][uU][eE])?|[yY](?:[eE][sS])?|1"
FALSE_TEXT = r"[fF](?:[aA][lL][sS][eE])?|[nN][oO]?|0"


def text_pattern(core: str) -> str:
    """``core`` with optional surrounding ASCII spaces and controls, as group 1; to be matched in full.

    Anchors are left to each engine: Java's ``$`` also matches before a final line terminator.
    """
    return f"{SPACE}({core}){SPACE}"


# Case pairs added to Unicode after the version of Python's own database (Unicode 14 in Python 3.11), which
# Spark 4's ICU (Unicode 16) maps. On a Python with Unicode 16 these are already what str.lower/upper do.
_UNICODE_16_CASE_PAIRS: tuple[tuple[int, int], ...] = (
    (0xA7CB, 0x0264),
    (0xA7DC, 0x019B),
    (0x1C89, 0x1C8A),
    (0xA7CC, 0xA7CD),
    (0xA7DA, 0xA7DB),
    *((upper, upper + 0x20) for upper in range(0x10D50, 0x10D66)),
)
if tuple(int(p) for p in unicodedata.unidata_version.split(".")) >= (16, 0, 0):  # pragma: no cover
    _UNICODE_16_CASE_PAIRS = ()
LOWER_EXTRA: dict[int, int] = {upper: lower for upper, lower in _UNICODE_16_CASE_PAIRS}
UPPER_EXTRA: dict[int, int] = {lower: upper for upper, lower in _UNICODE_16_CASE_PAIRS}


def evaluate(expr: Expr, columns: Mapping[str, pa.Array | pa.ChunkedArray], length: int) -> pa.Array:
    """Evaluate ``expr`` over ``length`` rows of ``columns``; an Arrow array of the expression's plan type.

    Each column must hold ``length`` values of (or castable to) its plan type; extra columns are ignored.
    """
    return Evaluator(columns, length).evaluate(expr)


class Evaluator:
    """Evaluates an :class:`~features.expressions.Expr` tree: one method per node, one per operator."""

    def __init__(self, columns: Mapping[str, pa.Array | pa.ChunkedArray], length: int) -> None:
        self.columns = columns
        self.length = length

    def evaluate(self, expr: Expr) -> pa.Array:
        """The values of ``expr``; an expression nested deeper than the parser allows is refused first, so the
        recursion below stays bounded whatever plan it comes from."""
        check_expression_depth(expr)
        return self._visit(expr)

    def _visit(self, expr: Expr) -> pa.Array:
        method: Callable[[Any], pa.Array] | None = getattr(self, f"visit_{type(expr).__name__}", None)
        if method is None:
            raise UnsupportedExpressionError(f"no evaluator rule for expression node {type(expr).__name__}")
        return method(expr)

    def visit_Column(self, expr: Column) -> pa.Array:
        if expr.name not in self.columns:
            raise UnknownNameError("column", expr.name, self.columns, context="in the evaluated data")
        data = self.columns[expr.name]
        array = data.combine_chunks() if isinstance(data, pa.ChunkedArray) else data
        if len(array) != self.length:
            raise ValueError(f"column '{expr.name}' has {len(array)} values, expected {self.length}")
        return _as(array, expr.dtype)

    def visit_Literal(self, expr: Literal) -> pa.Array:
        return pa.repeat(pa.scalar(expr.value, ARROW_TYPES[expr.dtype]), self.length)

    def visit_Call(self, expr: Call) -> pa.Array:
        rule: Callable[..., pa.Array] | None = getattr(self, f"op_{expr.op}", None)
        if rule is None:
            known = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))
            raise UnsupportedExpressionError(f"no evaluator rule for operator '{expr.op}'; supported: {known}")
        args = [self._visit(a) for a in expr.args]
        return _as(rule(expr, *args), expr.dtype)

    # Arithmetic: operands are converted to the result type first, so int + float is a float addition.
    def op_add(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return _arithmetic(expr.dtype, pc.add, pc.add_checked, lambda x, y: x + y, a, b)

    def op_sub(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return _arithmetic(expr.dtype, pc.subtract, pc.subtract_checked, lambda x, y: x - y, a, b)

    def op_mul(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return _arithmetic(expr.dtype, pc.multiply, pc.multiply_checked, lambda x, y: x * y, a, b)

    def op_div(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        a, b = _as(a, DType.FLOAT64), _as(b, DType.FLOAT64)
        return _null_where(pc.divide(a, b), pc.equal(b, 0.0))

    def op_mod(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        a, b = _as(a, expr.dtype), _as(b, expr.dtype)
        valid = pc.and_(pc.and_(pc.is_valid(a), pc.is_valid(b)), pc.not_equal(b, 0))
        valid = pc.fill_null(valid, False)
        if expr.dtype is DType.INT64:
            x = a.fill_null(0).to_numpy(zero_copy_only=False)
            y = b.fill_null(1).to_numpy(zero_copy_only=False)
            # A divisor of -1 always leaves 0, and INT64_MIN % -1 would trap in C: divide by 1 instead.
            y = np.where((y == 0) | (y == -1), 1, y)
            result = np.remainder(x, y)  # numpy's integer remainder takes the divisor's sign, like Python's
        else:
            x = a.fill_null(0.0).to_numpy(zero_copy_only=False)
            y = b.fill_null(1.0).to_numpy(zero_copy_only=False)
            y = np.where(y == 0.0, 1.0, y)
            with np.errstate(invalid="ignore", over="ignore"):  # inf % y, and r + y of rows not moved
                r = np.fmod(x, y)  # the remainder with the dividend's sign (C's fmod, Java's %)...
                # ...moved by one divisor when its sign differs from the divisor's; a zero takes the divisor's sign.
                moved = (r != 0) & ((r < 0) != (y < 0))
                result = np.where(moved, r + y, np.where(r == 0, np.copysign(0.0, y), r))
        return pa.array(result, ARROW_TYPES[expr.dtype], mask=~valid.to_numpy(zero_copy_only=False))

    def op_neg(self, expr: Call, a: pa.Array) -> pa.Array:
        if expr.dtype is DType.INT64:
            return _checked_unary(pc.negate_checked, lambda x: -x, a)
        return pc.negate(a)

    def op_abs(self, expr: Call, a: pa.Array) -> pa.Array:
        if expr.dtype is DType.INT64:
            return _checked_unary(pc.abs_checked, abs, a)
        return pc.abs(a)

    # Strings.
    def op_concat(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return pc.binary_join_element_wise(a, b, "")  # null if either side is null

    def op_lower(self, expr: Call, a: pa.Array) -> pa.Array:
        if _all_ascii(a):
            return pc.ascii_lower(a)
        return pa.array([None if s is None else s.lower().translate(LOWER_EXTRA) for s in a.to_pylist()], pa.string())

    def op_upper(self, expr: Call, a: pa.Array) -> pa.Array:
        if _all_ascii(a):
            return pc.ascii_upper(a)
        return pa.array([None if s is None else s.upper().translate(UPPER_EXTRA) for s in a.to_pylist()], pa.string())

    def op_length(self, expr: Call, a: pa.Array) -> pa.Array:
        return pc.utf8_length(a)  # code points, like Python's len and Spark's char_length

    # Comparisons: numbers compare as float64 when the two sides differ in type; floats in SQL's total order.
    def op_eq(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        a, b = self._comparable(expr, a, b)
        if pa.types.is_floating(a.type):
            return pc.or_(pc.equal(a, b), pc.and_(pc.is_nan(a), pc.is_nan(b)))
        return pc.equal(a, b)

    def op_ne(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return pc.invert(self.op_eq(expr, a, b))

    def op_lt(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        a, b = self._comparable(expr, a, b)
        if pa.types.is_floating(a.type):
            return pc.or_(pc.less(a, b), pc.and_(pc.invert(pc.is_nan(a)), pc.is_nan(b)))
        return pc.less(a, b)

    def op_le(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        a, b = self._comparable(expr, a, b)
        if pa.types.is_floating(a.type):
            return pc.or_(pc.less_equal(a, b), pc.is_nan(b))
        return pc.less_equal(a, b)

    def op_gt(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return self.op_lt(expr, b, a)

    def op_ge(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return self.op_le(expr, b, a)

    def _comparable(self, expr: Call, a: pa.Array, b: pa.Array) -> tuple[pa.Array, pa.Array]:
        left, right = expr.args
        if left.dtype is not right.dtype:
            return _as(a, DType.FLOAT64), _as(b, DType.FLOAT64)
        return a, b

    # Logic: SQL's three-valued AND / OR / NOT.
    def op_and(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return pc.and_kleene(a, b)

    def op_or(self, expr: Call, a: pa.Array, b: pa.Array) -> pa.Array:
        return pc.or_kleene(a, b)

    def op_not(self, expr: Call, a: pa.Array) -> pa.Array:
        return pc.invert(a)

    # Functions.
    def op_coalesce(self, expr: Call, *args: pa.Array) -> pa.Array:
        return pc.coalesce(*(_as(a, expr.dtype) for a in args))

    def op_if_else(self, expr: Call, cond: pa.Array, a: pa.Array, b: pa.Array) -> pa.Array:
        # A null condition is not true: the "else" branch, as SQL's CASE WHEN.
        return pc.if_else(pc.fill_null(cond, False), _as(a, expr.dtype), _as(b, expr.dtype))

    def op_is_null(self, expr: Call, a: pa.Array) -> pa.Array:
        return pc.is_null(a)  # NaN is a value, not a null

    def op_cast(self, expr: Call, a: pa.Array) -> pa.Array:
        source, target = expr.args[0].dtype, expr.dtype
        if source is target:
            return a
        rule = _CASTS.get((source, target))
        if rule is None:
            raise UnsupportedExpressionError(_unsupported_cast(source, target))
        return rule(a)


def _unsupported_cast(source: DType, target: DType) -> str:
    if (source, target) == (DType.FLOAT64, DType.STRING):
        return (
            "cast of float64 to string is not supported: its text would differ between engines (and JVM "
            'versions); cast to int64 first, or compare the number instead, e.g. cast(x, "int64")'
        )
    valid = ", ".join(f"{s.value}->{t.value}" for s, t in _CASTS)
    return f"cannot cast {source.value} to {target.value}; valid casts: {valid}"


# --- helpers ------------------------------------------------------------------------------------------------
def _as(array: pa.Array, dtype: DType) -> pa.Array:
    """``array`` as the Arrow type of ``dtype``; int64 to float64 rounds to nearest even, like Java."""
    target = ARROW_TYPES[dtype]
    if array.type == target:
        return array
    if pa.types.is_timestamp(array.type) and dtype is DType.TIMESTAMP and array.type.tz is None:
        array = array.cast(pa.timestamp(array.type.unit))  # naive timestamps are UTC
    return pc.cast(array, target, safe=not (pa.types.is_integer(array.type) and dtype is DType.FLOAT64))


def _null_where(values: pa.Array, condition: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(condition, False), pa.scalar(None, values.type), values)


def _all_ascii(a: pa.Array) -> bool:
    return bool(pc.all(pc.string_is_ascii(a), skip_nulls=True).as_py() is not False)


def _in_int64(value: int) -> int | None:
    return value if INT64_MIN <= value <= INT64_MAX else None


def _arithmetic(
    dtype: DType,
    ieee: Callable[..., pa.Array],
    checked: Callable[..., pa.Array],
    exact: Callable[[int, int], int],
    a: pa.Array,
    b: pa.Array,
) -> pa.Array:
    a, b = _as(a, dtype), _as(b, dtype)
    if dtype is DType.FLOAT64:
        return ieee(a, b)
    try:
        return checked(a, b)
    except pa.ArrowInvalid:
        # Some row overflows: that row is null. Exact integers, row by row, only when it happens.
        rows = zip(a.to_pylist(), b.to_pylist(), strict=True)
        return pa.array([None if x is None or y is None else _in_int64(exact(x, y)) for x, y in rows], pa.int64())


def _checked_unary(checked: Callable[..., pa.Array], exact: Callable[[int], int], a: pa.Array) -> pa.Array:
    try:
        return checked(a)
    except pa.ArrowInvalid:
        return pa.array([None if x is None else _in_int64(exact(x)) for x in a.to_pylist()], pa.int64())


def _parse_text(a: pa.Array, core: str, convert: Callable[[str], Any], target: pa.DataType) -> pa.Array:
    pattern = re.compile(text_pattern(core))

    def one(text: str | None) -> Any:
        match = pattern.fullmatch(text) if text is not None else None
        return None if match is None else convert(match.group(1))

    return pa.array([one(s) for s in a.to_pylist()], target)


def _text_to_int(a: pa.Array) -> pa.Array:
    return _parse_text(a, INT_TEXT, lambda s: _in_int64(int(s)), pa.int64())


def _text_to_float(a: pa.Array) -> pa.Array:
    return _parse_text(a, FLOAT_TEXT, float, pa.float64())


def _text_to_bool(a: pa.Array) -> pa.Array:
    truth = re.compile(TRUE_TEXT)
    return _parse_text(a, f"{TRUE_TEXT}|{FALSE_TEXT}", lambda s: truth.fullmatch(s) is not None, pa.bool_())


def _float_to_int(a: pa.Array) -> pa.Array:
    # Truncation toward zero; outside [-2**63, 2**63) (NaN and infinities included) there is no int64.
    inside = pc.fill_null(pc.and_(pc.greater_equal(a, float(INT64_MIN)), pc.less(a, 2.0**63)), False)
    return _null_where(pc.cast(pc.trunc(pc.if_else(inside, a, 0.0)), pa.int64()), pc.invert(inside))


def _timestamp_to_text(a: pa.Array) -> pa.Array:
    micros = pc.cast(a, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    whole = pc.strftime(a, "%Y-%m-%d %H:%M")
    seconds = pc.cast(pc.second(a), pa.string())
    seconds = pc.utf8_lpad(seconds, 2, "0")
    fraction = np.mod(micros, 1_000_000)  # the floored remainder: before 1970 too, a fraction is positive
    digits = pa.array([f".{f:06d}".rstrip("0") if f else "" for f in fraction.tolist()], pa.string())
    return pc.binary_join_element_wise(whole, ":", seconds, digits, "")


def _nonzero(a: pa.Array) -> pa.Array:
    return pc.not_equal(a, pa.scalar(0, a.type))


_CASTS: dict[tuple[DType, DType], Callable[[pa.Array], pa.Array]] = {
    (DType.INT64, DType.FLOAT64): lambda a: _as(a, DType.FLOAT64),
    (DType.INT64, DType.STRING): lambda a: pc.cast(a, pa.string()),
    (DType.INT64, DType.BOOL): _nonzero,
    (DType.FLOAT64, DType.INT64): _float_to_int,
    (DType.FLOAT64, DType.BOOL): _nonzero,  # NaN != 0: true
    (DType.STRING, DType.INT64): _text_to_int,
    (DType.STRING, DType.FLOAT64): _text_to_float,
    (DType.STRING, DType.BOOL): _text_to_bool,
    (DType.BOOL, DType.INT64): lambda a: pc.cast(a, pa.int64()),
    (DType.BOOL, DType.FLOAT64): lambda a: pc.cast(a, pa.float64()),
    (DType.BOOL, DType.STRING): lambda a: pc.cast(a, pa.string()),  # "true" / "false"
    (DType.TIMESTAMP, DType.STRING): _timestamp_to_text,
}
