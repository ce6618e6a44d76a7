"""What only the evaluator has: its input handling and its named errors."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest

from features.dtypes import DType
from features.errors import SkewlessError, UnknownNameError
from features.evaluator import UnsupportedExpressionError, evaluate
from features.expressions import Call, Column, Expr, Literal, parse_expression


def test_unknown_operator_names_the_supported_ones() -> None:
    bad = Call(DType.INT64, "power", (Column(DType.INT64, "a"), Literal(DType.INT64, 2)))
    with pytest.raises(UnsupportedExpressionError, match=r"'power'; supported: abs, add, and, cast"):
        evaluate(bad, {"a": pa.array([1])}, 1)
    assert issubclass(UnsupportedExpressionError, SkewlessError)
    assert issubclass(UnsupportedExpressionError, NotImplementedError)


def test_unknown_node_is_named() -> None:
    class Weird(Expr):
        pass

    with pytest.raises(UnsupportedExpressionError, match="Weird"):
        evaluate(Weird(DType.INT64), {}, 0)


def test_translator_raises_the_same_error_class() -> None:
    from offline.spark.translate import UnsupportedExpressionError as SparkError

    assert SparkError is UnsupportedExpressionError


def test_missing_column_names_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown column 'b'.*known: a"):
        evaluate(parse_expression("b + 1", {"b": DType.INT64}), {"a": pa.array([1])}, 1)


def test_wrong_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="has 2 values, expected 3"):
        evaluate(parse_expression("a + 1", {"a": DType.INT64}), {"a": pa.array([1, 2])}, 3)


def test_chunked_and_physically_different_inputs() -> None:
    columns = {
        "a": pa.chunked_array([[1, 2], [3]], pa.int32()),
        "s": pa.array(["x", "Y", None], pa.large_string()),
        "t": pa.array([datetime(2024, 1, 1, 12), None, datetime(1970, 1, 1)], pa.timestamp("us")),
    }
    types = {"a": DType.INT64, "s": DType.STRING, "t": DType.TIMESTAMP}
    assert evaluate(parse_expression("a * 2", types), columns, 3).to_pylist() == [2, 4, 6]
    result = evaluate(parse_expression("upper(s)", types), columns, 3)
    assert result.type == pa.string() and result.to_pylist() == ["X", "Y", None]
    stamps = evaluate(parse_expression('cast(t, "string")', types), columns, 3)  # naive timestamps are UTC
    assert stamps.to_pylist() == ["2024-01-01 12:00:00", None, "1970-01-01 00:00:00"]


def test_no_rows() -> None:
    result = evaluate(parse_expression("lower(s) + 'x'", {"s": DType.STRING}), {"s": pa.array([], pa.string())}, 0)
    assert result.type == pa.string() and len(result) == 0


def test_literals_only() -> None:
    result = evaluate(parse_expression("1 + 2", {}), {}, 3)
    assert result.type == pa.int64() and result.to_pylist() == [3, 3, 3]
