"""Hypothesis strategies: typed tables full of edge values, and random well-typed expressions over them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
from hypothesis import strategies as st

from features.dtypes import DType
from tests.conformance.oracle import ARROW

LO, HI = -(2**63), 2**63 - 1

# Two columns of every type: the generated expressions and the operator table use these names.
COLUMNS: dict[str, DType] = {
    "i": DType.INT64,
    "j": DType.INT64,
    "x": DType.FLOAT64,
    "y": DType.FLOAT64,
    "s": DType.STRING,
    "u": DType.STRING,
    "p": DType.BOOL,
    "q": DType.BOOL,
    "t": DType.TIMESTAMP,
    "w": DType.TIMESTAMP,
}
BY_TYPE: dict[DType, list[str]] = {d: [n for n, t in COLUMNS.items() if t is d] for d in DType}

INT_EDGES = [0, 1, -1, 2, -7, 3, LO, HI, LO + 1, HI - 1, 2**53, 2**53 + 1, -(2**53) - 1, 2**62, -(2**32), 3037000500]
FLOAT_EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    -2.5,
    3.0,
    -3.0,
    0.1,
    float("nan"),
    float("inf"),
    float("-inf"),
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    2.0**63,
    -(2.0**63),
    2.0**63 - 1024,
    2.0**53 + 2,
    9007199254740993.0,
    1e23,
    123456.789,
]
TEXT_EDGES = [
    "",
    " ",
    "a",
    "Zeta",
    "ÉCOLE",
    "straße",
    "ß",
    "İstanbul",
    "ΟΔΟΣ",
    "ΑΣ Β",
    "ǅ",
    "ﬁ",
    "ŉ",
    "\u0130",
    "\u03a3",
    "日本語",
    "😀",
    "a\x00b",
    "\ua7cb\u0264\U00010d50",
    "7",
    " 7",
    "+7",
    "-0",
    "007",
    "7.5",
    "7e2",
    "1d",
    "0x10",
    "١٢",
    "1_000",
    "\t-12\n",
    "\u00a07",
    "7\u2028",
    "7\n",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "inf",
    "-INFINITY",
    "+Inf",
    "NaN",
    "-nan",
    "+NaN",
    "1e400",
    "-1e-400",
    ".5",
    "5.",
    ".",
    "+.5e-3",
    "1E5",
    "e5",
    "1e",
    "t",
    "TRUE",
    " yes ",
    "Y",
    "n",
    "No",
    "0",
    "1",
    "2",
    "tru",
    "\x1ftrue\x1f",
]
UTC_EDGES = [
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(999, 5, 5, 5, 5, 5, 50, tzinfo=UTC),
    datetime(1582, 10, 10, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    # Europe's and the US's DST changes of 2024, a microsecond either side.
    datetime(2024, 3, 31, 1, 0, tzinfo=UTC),
    datetime(2024, 3, 31, 0, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 10, 27, 1, 0, tzinfo=UTC),
    datetime(2024, 3, 10, 7, 0, tzinfo=UTC),
    datetime(2024, 11, 3, 5, 59, 59, 999999, tzinfo=UTC),
    datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC),
]
ZONES = [
    ZoneInfo(z)
    for z in ("Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham", "UTC")
]


def ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(INT_EDGES), st.integers(-100, 100), st.integers(LO, HI))


def floats() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(), st.floats(-100, 100).map(lambda v: round(v, 2)))


def texts() -> st.SearchStrategy[str]:
    number_like = st.one_of(
        st.integers(LO - 10, HI + 10).map(str),
        st.floats().map(repr),
        st.from_regex(r"[ \t]?[+-]?[0-9]{0,3}\.?[0-9]{0,3}([eE][+-]?[0-9]{1,3})?[ \n]?", fullmatch=True),
        st.sampled_from(["true", "false", "yes", "no", "t", "f", "y", "n"]).flatmap(
            lambda w: st.tuples(*(st.sampled_from([c, c.upper()]) for c in w)).map("".join)
        ),
    )
    return st.one_of(
        st.sampled_from(TEXT_EDGES),
        st.text(st.characters(codec="utf-8"), max_size=8),
        st.text(st.sampled_from("aAßσΣςİıéÉ ǅ\u0301.0"), max_size=6),
        number_like,
    )


def timestamps() -> st.SearchStrategy[datetime]:
    local = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.sampled_from(ZONES)
    )
    near_dst = st.builds(
        lambda base, us: base + timedelta(microseconds=us),
        st.sampled_from(UTC_EDGES[6:]),
        st.integers(-3_600_000_000, 3_600_000_000),
    )
    return st.one_of(st.sampled_from(UTC_EDGES), near_dst, local.map(lambda d: d.astimezone(UTC)))


VALUES = {
    DType.INT64: ints,
    DType.FLOAT64: floats,
    DType.STRING: texts,
    DType.BOOL: st.booleans,
    DType.TIMESTAMP: timestamps,
}


@st.composite
def tables(draw: st.DrawFn, columns: Mapping[str, DType] = COLUMNS, min_rows: int = 1, max_rows: int = 120) -> pa.Table:
    """A table of ``columns`` (nulls in every column), ``min_rows`` to ``max_rows`` rows."""
    n = draw(st.integers(min_rows, max_rows))
    data = {}
    for name, dtype in columns.items():
        cell = st.none() | VALUES[dtype]()
        data[name] = pa.array(draw(st.lists(cell, min_size=n, max_size=n)), ARROW[dtype])
    return pa.table(data)


# --- random well-typed expressions, as text for parse_expression ------------------------------------------
def _literal(dtype: DType) -> st.SearchStrategy[str]:
    if dtype is DType.INT64:
        return st.one_of(
            st.integers(-10, 10), st.sampled_from([v for v in INT_EDGES if v != LO]), st.integers(LO + 1, HI)
        ).map(lambda v: f"({v})" if v < 0 else str(v))
    if dtype is DType.FLOAT64:
        return st.one_of(st.sampled_from([0.0, -0.0, 2.5, 1e308, 3.0]), st.floats(allow_nan=False)).map(_float_text)
    if dtype is DType.STRING:
        return texts().map(repr)
    if dtype is DType.BOOL:
        return st.sampled_from(["True", "False"])
    raise ValueError("timestamps have no literal")


def _float_text(v: float) -> str:
    if v == float("inf"):
        return "1e999"
    if v == float("-inf"):
        return "(-1e999)"
    return f"({v!r})" if str(v).startswith("-") else repr(v)


NUMERIC = (DType.INT64, DType.FLOAT64)


@st.composite
def expressions(draw: st.DrawFn, dtype: DType, depth: int = 3) -> str:
    """The text of a random expression of type ``dtype`` over :data:`COLUMNS`, at most ``depth`` calls deep."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        if dtype is DType.TIMESTAMP or draw(st.booleans()):
            return draw(st.sampled_from(BY_TYPE[dtype]))
        return draw(_literal(dtype))

    def sub(d: DType) -> str:
        return draw(expressions(d, depth - 1))

    def numeric() -> str:
        return sub(draw(st.sampled_from(NUMERIC)))

    def any_type() -> str:
        return sub(draw(st.sampled_from(list(DType))))

    cond = lambda: sub(DType.BOOL)  # noqa: E731
    common: list = [
        lambda: f"coalesce({sub(dtype)}, {sub(dtype)})",
        lambda: f"coalesce({sub(dtype)}, {sub(dtype)}, {sub(dtype)})",
        lambda: f"if_else({cond()}, {sub(dtype)}, {sub(dtype)})",
    ]
    if dtype is DType.INT64:
        rules = [
            *(lambda op=op: f"({sub(dtype)} {op} {sub(dtype)})" for op in "+-*%"),
            lambda: f"(-{sub(dtype)})",
            lambda: f"abs({sub(dtype)})",
            lambda: f"length({sub(DType.STRING)})",
            lambda: f'cast({sub(draw(st.sampled_from([DType.FLOAT64, DType.STRING, DType.BOOL])))}, "int64")',
        ]
    elif dtype is DType.FLOAT64:
        rules = [
            *(lambda op=op: f"({sub(DType.FLOAT64)} {op} {numeric()})" for op in "+-*%"),
            *(lambda op=op: f"({numeric()} {op} {sub(DType.FLOAT64)})" for op in "+-*%"),
            lambda: f"({numeric()} / {numeric()})",
            lambda: f"(-{sub(dtype)})",
            lambda: f"abs({sub(dtype)})",
            lambda: f'cast({sub(draw(st.sampled_from([DType.INT64, DType.STRING, DType.BOOL])))}, "float64")',
            lambda: f"coalesce({sub(DType.FLOAT64)}, {sub(DType.INT64)})",
            lambda: f"if_else({cond()}, {sub(DType.INT64)}, {sub(DType.FLOAT64)})",
        ]
    elif dtype is DType.STRING:
        rules = [
            lambda: f"({sub(dtype)} + {sub(dtype)})",
            lambda: f"lower({sub(dtype)})",
            lambda: f"upper({sub(dtype)})",
            lambda: f'cast({sub(draw(st.sampled_from([DType.INT64, DType.BOOL, DType.TIMESTAMP])))}, "string")',
        ]
    elif dtype is DType.BOOL:

        def comparison() -> str:
            op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
            kind = draw(st.sampled_from(["numeric", DType.STRING, DType.BOOL, DType.TIMESTAMP]))
            if kind == "numeric":
                return f"({numeric()} {op} {numeric()})"
            return f"({sub(kind)} {op} {sub(kind)})"

        rules = [
            comparison,
            comparison,
            lambda: f"({sub(dtype)} and {sub(dtype)})",
            lambda: f"({sub(dtype)} or {sub(dtype)})",
            lambda: f"(not {sub(dtype)})",
            lambda: f"is_null({any_type()})",
            lambda: f'cast({sub(draw(st.sampled_from([DType.INT64, DType.FLOAT64, DType.STRING])))}, "bool")',
        ]
    else:
        rules = []
    choice = draw(st.integers(0, len(rules) + len(common) - 1))
    return (rules + common)[choice]()
