from __future__ import annotations

import pytest

from features.dtypes import DType
from features.expressions import Call, Column, ExpressionError, Literal, expr_from_dict, parse_expression

COLUMNS = {"amount": DType.FLOAT64, "n": DType.INT64, "name": DType.STRING, "flag": DType.BOOL, "ts": DType.TIMESTAMP}


@pytest.mark.parametrize(
    ("text", "dtype"),
    [
        ("amount * 2", DType.FLOAT64),
        ("n + 1", DType.INT64),
        ("n / 2", DType.FLOAT64),
        ("n % 3", DType.INT64),
        ("-n", DType.INT64),
        ("name + 'x'", DType.STRING),
        ("amount > 100 and not flag", DType.BOOL),
        ("coalesce(amount, n)", DType.FLOAT64),
        ("if_else(flag, n, 0)", DType.INT64),
        ("length(lower(name))", DType.INT64),
        ("cast(n, 'string')", DType.STRING),
        ("is_null(ts)", DType.BOOL),
        ("abs(amount - n)", DType.FLOAT64),
    ],
)
def test_types_are_inferred(text: str, dtype: DType) -> None:
    assert parse_expression(text, COLUMNS).dtype is dtype


@pytest.mark.parametrize(
    ("text", "fragment", "message"),
    [
        ("amount * rate", "rate", "unknown column 'rate'"),
        ("name + n", "name + n", "cannot apply 'add' to string and int64"),
        ("amount > name", "amount > name", "cannot compare"),
        ("flag and n", "n", "expected bool, got int64"),
        ("sqrt(n)", "sqrt", "unknown function"),
        ("amount[0]", "amount[0]", "unsupported syntax Subscript"),
        ("1 < n < 3", "1 < n < 3", "chained comparisons"),
        ("cast(n, 'decimal')", "'decimal'", "unknown dtype"),
        ("if_else(flag, n, name)", "if_else(flag, n, name)", "mix types"),
        ("amount +", "amount +", "not a valid expression"),
        ("cast(amount, 'string')", "cast(amount, 'string')", "cannot cast float64 to string"),
    ],
)
def test_errors_name_the_offending_part(text: str, fragment: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, COLUMNS)
    assert info.value.fragment == fragment
    assert message in str(info.value)


def test_unknown_column_lists_the_known_ones() -> None:
    with pytest.raises(ExpressionError, match="known: amount, flag, n, name, ts"):
        parse_expression("amout", COLUMNS)


def test_plan_form_round_trips() -> None:
    expr = parse_expression("if_else(amount > 1.5, -n, coalesce(n, 7))", COLUMNS)
    assert expr_from_dict(expr.to_dict()) == expr
    assert expr.columns() == {"amount", "n"}


def test_tree_shape() -> None:
    expr = parse_expression("amount * 2", COLUMNS)
    assert expr == Call(DType.FLOAT64, "mul", (Column(DType.FLOAT64, "amount"), Literal(DType.INT64, 2)))
