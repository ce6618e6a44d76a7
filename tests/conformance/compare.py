"""Equality of engine results: same Arrow type, same nulls, floats bit for bit (any NaN equals any NaN)."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import pyarrow as pa


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return struct.pack("<d", a) == struct.pack("<d", b)  # -0.0 is not 0.0 here
    return type(a) is type(b) and a == b


def mismatches(actual: pa.Array, expected: pa.Array, table: pa.Table, label: str) -> list[str]:
    """Human-readable differences between two result arrays of one expression."""
    if actual.type != expected.type:
        return [f"{label}: type {actual.type}, expected {expected.type}"]
    if len(actual) != len(expected):
        return [f"{label}: {len(actual)} rows, expected {len(expected)}"]
    if pa.types.is_timestamp(actual.type):
        actual, expected = actual.cast(pa.int64()), expected.cast(pa.int64())
    rows = table.to_pylist()
    out = []
    for n, (got, want) in enumerate(zip(actual.to_pylist(), expected.to_pylist(), strict=True)):
        if not (got is None and want is None) and not same(got, want):
            out.append(f"{label}: row {rows[n]!r} gave {got!r}, expected {want!r}")
    return out


def assert_all_same(
    engine: str, texts: Sequence[str], actual: Sequence[pa.Array], expected: Sequence[pa.Array], table: pa.Table
) -> None:
    problems: list[str] = []
    for text, got, want in zip(texts, actual, expected, strict=True):
        problems += mismatches(got, want, table, f"[{engine}] {text}")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:25])
