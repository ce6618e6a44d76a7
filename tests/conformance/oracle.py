"""The oracle: a plain-Python, row-at-a-time evaluation written from the documented semantics.

Both engines are held to it exactly (floats bit for bit), so they are held to each other. It shares no code
with the engines except the list of case pairs Unicode 16 added (data, from the Unicode standard).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from features.dtypes import DType
from features.evaluator import LOWER_EXTRA, UPPER_EXTRA
from features.expressions import Call, Column, Expr, Literal

ARROW = {
    DType.INT64: pa.int64(),
    DType.FLOAT64: pa.float64(),
    DType.STRING: pa.string(),
    DType.BOOL: pa.bool_(),
    DType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
}
LO, HI = -(2**63), 2**63 - 1
SPACES = "".join(chr(c) for c in range(0x21))  # what cast trims: ASCII controls and space
DIGITS = set("0123456789")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def evaluate(expr: Expr, table: pa.Table) -> pa.Array:
    """The expected result of ``expr`` over every row of ``table``, as an Arrow array of its plan type."""
    rows = table.to_pylist()
    return pa.array([value(expr, row) for row in rows], ARROW[expr.dtype])


def value(expr: Expr, row: dict[str, Any]) -> Any:
    if isinstance(expr, Column):
        return _as(row[expr.name], expr.dtype)
    if isinstance(expr, Literal):
        return expr.value
    assert isinstance(expr, Call), expr
    args = [value(a, row) for a in expr.args]
    if expr.op == "cast":
        return cast(args[0], expr.args[0].dtype, expr.dtype)
    if expr.op in COMPARE:
        return compare(expr.op, args[0], args[1], expr.args[0].dtype is not expr.args[1].dtype)
    return _as(OPS[expr.op](expr.dtype, *args), expr.dtype)


def _as(v: Any, dtype: DType) -> Any:
    return float(v) if v is not None and dtype is DType.FLOAT64 else v


def _strict(fn: Callable[..., Any]) -> Callable[..., Any]:
    def apply(dtype: DType, *args: Any) -> Any:
        if any(a is None for a in args):
            return None
        return fn(dtype, *(_as(a, dtype) for a in args))

    return apply


def _int64(v: Any) -> Any:
    return v if isinstance(v, float) or LO <= v <= HI else None  # int64 overflow: null


def _div(dtype: DType, a: Any, b: Any) -> Any:
    return None if b == 0 else float(a) / float(b)


def _mod(dtype: DType, a: Any, b: Any) -> Any:
    return None if b == 0 else a % b  # Python's own rule is the documented one


def _and(dtype: DType, a: Any, b: Any) -> Any:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(dtype: DType, a: Any, b: Any) -> Any:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


OPS: dict[str, Callable[..., Any]] = {
    "add": _strict(lambda t, a, b: _int64(a + b)),
    "sub": _strict(lambda t, a, b: _int64(a - b)),
    "mul": _strict(lambda t, a, b: _int64(a * b)),
    "div": lambda t, a, b: None if a is None or b is None else _div(t, a, b),
    "mod": _strict(_mod),
    "neg": _strict(lambda t, a: _int64(-a)),
    "abs": _strict(lambda t, a: _int64(abs(a))),
    "concat": _strict(lambda t, a, b: a + b),
    "lower": _strict(lambda t, s: s.lower().translate(LOWER_EXTRA)),
    "upper": _strict(lambda t, s: s.upper().translate(UPPER_EXTRA)),
    "length": _strict(lambda t, s: len(s)),
    "and": _and,
    "or": _or,
    "not": lambda t, a: None if a is None else not a,
    "coalesce": lambda t, *args: next((a for a in args if a is not None), None),
    "if_else": lambda t, c, a, b: a if c is True else b,
    "is_null": lambda t, a: a is None,
}

COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}


def compare(op: str, a: Any, b: Any, mixed: bool) -> Any:
    if a is None or b is None:
        return None
    if mixed or isinstance(a, float):
        # SQL's total order of doubles: NaN equals NaN and sorts above everything; -0.0 equals 0.0.
        a, b = _float_key(float(a)), _float_key(float(b))
    return {
        "eq": a == b,
        "ne": a != b,
        "lt": a < b,
        "le": a <= b,
        "gt": a > b,
        "ge": a >= b,
    }[op]


def _float_key(x: float) -> tuple[int, float]:
    return (1, 0.0) if math.isnan(x) else (0, x)


def cast(v: Any, source: DType, target: DType) -> Any:
    if v is None or source is target:
        return v
    if target is DType.STRING:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, datetime):
            text = f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            return text + (f".{v.microsecond:06d}".rstrip("0") if v.microsecond else "")
        assert isinstance(v, int), v  # float64 -> string is unsupported in both engines
        return str(v)
    if target is DType.BOOL:
        return _text_bool(v) if isinstance(v, str) else v != 0
    if target is DType.FLOAT64:
        return _text_float(v) if isinstance(v, str) else float(v)
    if target is DType.INT64:
        if isinstance(v, str):
            return _text_int(v)
        if isinstance(v, float):
            return int(v) if math.isfinite(v) and -(2.0**63) <= v < 2.0**63 else None
        return int(v)
    raise AssertionError((source, target))


def _text_int(s: str) -> int | None:
    core = s.strip(SPACES)
    body = core[1:] if core[:1] in ("+", "-") else core
    if not body or not set(body) <= DIGITS:
        return None
    n = int(core)
    return n if LO <= n <= HI else None


def _text_float(s: str) -> float | None:
    core = s.strip(SPACES)
    if not core.isascii():
        return None
    lowered = core.translate(ASCII_LOWER)
    if lowered in ("nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"):
        return float(lowered)
    body = core[1:] if core[:1] in ("+", "-") else core
    mantissa, _, exponent = body.replace("E", "e").partition("e")
    if "e" in body.replace("E", "e") and not _signed_digits(exponent):
        return None
    whole, _, fraction = mantissa.partition(".")
    if not (whole or fraction) or not set(whole + fraction) <= DIGITS or "." in fraction:
        return None
    return float(core)


def _signed_digits(s: str) -> bool:
    body = s[1:] if s[:1] in ("+", "-") else s
    return bool(body) and set(body) <= DIGITS


def _text_bool(s: str) -> bool | None:
    core = s.strip(SPACES)
    if not core.isascii():
        return None
    lowered = core.translate(ASCII_LOWER)
    if lowered in ("t", "true", "y", "yes", "1"):
        return True
    if lowered in ("f", "false", "n", "no", "0"):
        return False
    return None


def expected(exprs: Sequence[Expr], table: pa.Table) -> list[pa.Array]:
    return [evaluate(e, table) for e in exprs]
