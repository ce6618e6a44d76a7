"""How the code that works on Arrow tables in this process turns key and time columns into NumPy integers,
written once for the Arrow engine's point-in-time join and for the changes to a table (:mod:`offline.changes`):
codes equal exactly where the values are, so sorting and grouping by them is sorting and grouping by the values'
equality."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NULL_TIME = np.iinfo(np.int64).min


def micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp column as int64 microseconds since the epoch (UTC; naive means UTC), null as :data:`NULL_TIME`.
    Nanoseconds are floored to the microsecond, the precision every store keeps."""
    unit = column.type.unit
    values = np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
    if unit == "ns":
        values = values // 1000
    elif unit != "us":
        values = values * {"s": 1_000_000, "ms": 1000}[unit]
    nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return np.where(nulls, NULL_TIME, values)


def column_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per value, equal exactly where the values are (integers and booleans as themselves, timestamps
    as microseconds, anything else as its index in a dictionary of the column's values), and which values are
    null (their code means nothing)."""
    nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
        return np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64), nulls
    if pa.types.is_timestamp(column.type):
        return micros(column), nulls
    indices = pc.dictionary_encode(column).combine_chunks().indices
    return np.asarray(indices.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64), nulls


def key_codes(columns: list[pa.ChunkedArray]) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per row such that rows with equal keys (every column) get equal codes; and which rows have a
    null in any key column (those match nothing)."""
    code, missing = column_codes(columns[0])
    for column in columns[1:]:
        part, nulls = column_codes(column)
        # Both renumbered densely from 0 before they are combined, so the combination stays within int64.
        code = np.unique(code, return_inverse=True)[1].astype(np.int64)
        part = np.unique(part, return_inverse=True)[1].astype(np.int64)
        code = code * (int(part.max()) + 1 if len(part) else 1) + part
        missing = missing | nulls
    return code, missing
