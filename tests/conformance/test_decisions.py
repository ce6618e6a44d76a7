"""The documented semantic decisions, pinned value by value in both engines (users read these)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from features.dtypes import DType
from features.evaluator import UnsupportedExpressionError
from features.expressions import Call, Column, ExpressionError, parse_expression
from tests.conformance.compare import same
from tests.conformance.engines import Engine
from tests.conformance.runner import check_exprs

NAN, INF = float("nan"), float("inf")
MIN, MAX = -(2**63), 2**63 - 1
ROW: dict[str, tuple[DType, Any]] = {
    "lo": (DType.INT64, MIN),
    "hi": (DType.INT64, MAX),
    "n": (DType.FLOAT64, NAN),
    "z": (DType.FLOAT64, -0.0),
    "big": (DType.FLOAT64, 2.0**63),
    "nul": (DType.BOOL, None),
    "inull": (DType.INT64, None),
    "ts": (DType.TIMESTAMP, datetime(999, 3, 30, 23, 59, 59, 120000, tzinfo=UTC)),
    "word": (DType.STRING, "İstanbul ß ΟΔΟΣ"),
}
COLUMNS = {name: dtype for name, (dtype, _) in ROW.items()}

CASES: list[tuple[str, Any]] = [
    # SQL nulls; coalesce, is_null and Kleene and/or see through them; if_else(null, a, b) is b.
    ("inull + 1", None),
    ("coalesce(inull, 7)", 7),
    ("is_null(inull)", True),
    ("nul and False", False),
    ("nul or True", True),
    ("nul and True", None),
    ("if_else(nul, 1, 2)", 2),
    ("is_null(n)", False),
    # Division is float64; dividing by zero (-0.0 too) gives null; % takes the divisor's sign.
    ("7 / 2", 3.5),
    ("1 / 0", None),
    ("1.0 / z", None),
    ("-7 % 3", 2),
    ("7 % -3", -2),
    ("7 % 0", None),
    ("-3.0 % 3.0", 0.0),
    ("3.0 % -3.0", -0.0),
    ("z % 5.0", 0.0),
    ("-5.0 % 1e999", INF),
    ("lo % -1", 0),
    # int64 overflow gives null.
    ("hi + 1", None),
    ("lo - 1", None),
    ("hi * 2", None),
    ("-lo", None),
    ("abs(lo)", None),
    ("(hi + 1) - 1", None),
    ("(hi * 2) * 0", None),
    ("hi + 0", MAX),
    # IEEE floats, bit for bit: -0.0 stays -0.0.
    ("-z", 0.0),
    ("z + 0.0", 0.0),
    ("z * 1.0", -0.0),
    ("abs(z)", 0.0),
    ("1e308 * 10.0", INF),
    ("1e999 - 1e999", NAN),
    ("if_else(nul, 0.0, -0.0)", -0.0),
    # Comparisons: SQL's total order of doubles.
    ("n == n", True),
    ("n != n", False),
    ("n > 1e999", True),
    ("n < 0.0", False),
    ("z == 0.0", True),
    ("z < 0.0", False),
    ("hi == 9223372036854775807.0", True),  # int64 compared as float64
    ("hi - 1 == 9223372036854775807.0", True),
    # Strings are code points; case mapping is Unicode's, without locale.
    ("length('😀é')", 2),
    ("upper('ß')", "SS"),
    ("lower(word)", "i\u0307stanbul ß οδος"),
    ("upper(lower('İ'))", "I\u0307"),
    ("lower(upper('ß'))", "ss"),
    ("lower('\ua7cb')", "ɤ"),
    ("'a' < 'é'", True),
    ("'Z' < 'a'", True),
    # cast: documented text only; anything else that does not convert is null.
    ('cast(True, "string")', "true"),
    ('cast(1 == 1, "string")', "true"),
    ('cast(-42, "string")', "-42"),
    ('cast(ts, "string")', "0999-03-30 23:59:59.12"),
    ('cast(" 7\\n", "int64")', 7),
    ('cast("+7", "int64")', 7),
    ('cast("7.5", "int64")', None),
    ('cast("abc", "int64")', None),
    ('cast("9223372036854775808", "int64")', None),
    ('cast("\\u00a07", "int64")', None),
    ('cast("1e3", "float64")', 1000.0),
    ('cast("-Infinity", "float64")', -INF),
    ('cast("NaN", "float64")', NAN),
    ('cast("-nan", "float64")', None),
    ('cast("1d", "float64")', None),
    ('cast("1e400", "float64")', INF),
    ('cast(" Yes ", "bool")', True),
    ('cast("0", "bool")', False),
    ('cast("maybe", "bool")', None),
    ('cast(2.9, "int64")', 2),
    ('cast(-2.9, "int64")', -2),
    ('cast(big, "int64")', None),
    ('cast(n, "int64")', None),
    ('cast(n, "bool")', True),
    ('cast(z, "bool")', False),
    ('cast(hi, "float64")', 2.0**63),
]


def _row_table() -> pa.Table:
    from tests.conformance.oracle import ARROW

    return pa.table({name: pa.array([v], ARROW[dtype]) for name, (dtype, v) in ROW.items()})


def test_documented_values(engine: Engine) -> None:
    texts = [text for text, _ in CASES]
    exprs = [parse_expression(text, COLUMNS) for text in texts]
    got = [a.to_pylist()[0] for a in engine.evaluate(exprs, _row_table())]
    wrong = [
        f"{text}: {actual!r}, documented {want!r}"
        for (text, want), actual in zip(CASES, got, strict=True)
        if not (actual is None and want is None) and not same(actual, want)
    ]
    assert not wrong, "\n".join(wrong)


def test_documented_values_agree_with_the_oracle(engine: Engine) -> None:
    texts = [text for text, _ in CASES]
    check_exprs(engine, [parse_expression(t, COLUMNS) for t in texts], texts, _row_table())


def test_float_to_string_is_unsupported_in_every_engine(engine: Engine) -> None:
    # The parser refuses it at plan time; an engine handed such a node anyway refuses it too.
    with pytest.raises(ExpressionError, match="cannot cast float64 to string"):
        parse_expression('cast(z, "string")', COLUMNS)
    expr = Call(DType.STRING, "cast", (Column(DType.FLOAT64, "z"),))
    with pytest.raises(UnsupportedExpressionError, match=r"float64 to string.*int64"):
        engine.evaluate([expr], _row_table())


def test_case_mapping_of_every_code_point(engine: Engine) -> None:
    """lower, upper and length of every code point of planes 0 and 1 (all cased scripts live there)."""
    chars = [chr(c) for c in range(0x20000) if not 0xD800 <= c <= 0xDFFF]
    table = pa.table({"s": pa.array(chars, pa.string())})
    exprs = [
        Call(DType.STRING, "lower", (Column(DType.STRING, "s"),)),
        Call(DType.STRING, "upper", (Column(DType.STRING, "s"),)),
        Call(DType.INT64, "length", (Column(DType.STRING, "s"),)),
    ]
    lower, upper, length = engine.evaluate(exprs, table)
    from tests.conformance.oracle import LOWER_EXTRA, UPPER_EXTRA

    assert lower.to_pylist() == [c.lower().translate(LOWER_EXTRA) for c in chars]
    assert upper.to_pylist() == [c.upper().translate(UPPER_EXTRA) for c in chars]
    assert length.to_pylist() == [len(c) for c in chars]
