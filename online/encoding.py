"""How entity keys and feature rows are written into the online store.

Entity key
    The join-key values of one entity, in the view's key order, as comma-separated JSON values:
    ``42``, ``"acme"``, ``42,"acme",true``. JSON escapes quotes inside strings, so a composite key cannot
    collide with another one (``"a|b","c"`` vs ``"a","b|c"``; ``"a\\",\\"b"`` stays one value). Timestamp keys are
    written as integer microseconds since the epoch (UTC).

Row value
    One orjson array per entity: ``[event_ts_us, created_ts_us | null, v1, v2, ...]`` with the features in the
    plan's order. JSON has no NaN or infinity, so non-finite floats are written as the strings ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"`` and turned back into floats on read (strings in a float column can mean
    nothing else). Timestamps are integer microseconds since the epoch, UTC. Everything else is plain JSON, so
    every value round-trips exactly: int64 extremes, ``-0.0``, empty strings, null.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from features.dtypes import DType

if TYPE_CHECKING:
    import pyarrow as pa

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _MICRO


def from_micros(micros: int) -> datetime:
    """The UTC datetime ``micros`` microseconds after the epoch (exact, no float rounding)."""
    return EPOCH + timedelta(microseconds=micros)


def float_to_json(value: float) -> float | str:
    """A float as JSON can carry it: non-finite values become ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_from_json(value: float | int | str) -> float:
    if type(value) is str:
        return _NON_FINITE[value]
    return float(value)


# -- entity keys --------------------------------------------------------------------------------------------------


def encode_entity_key(values: Sequence[Any]) -> bytes:
    """The canonical bytes of one entity's join-key values (already checked against the key types).

    >>> encode_entity_key([42, "a,b"])
    b'42,"a,b"'
    """
    parts = [to_micros(v) if isinstance(v, datetime) else v for v in values]
    return orjson.dumps(parts)[1:-1]


def decode_entity_key(data: bytes) -> list[Any]:
    """Inverse of :func:`encode_entity_key` (timestamp keys come back as microseconds)."""
    decoded: list[Any] = orjson.loads(b"[" + data + b"]")
    return decoded


# -- rows ---------------------------------------------------------------------------------------------------------


def encode_row(event_ts: int, created_ts: int | None, values: Sequence[Any], dtypes: Sequence[DType]) -> bytes:
    """Encode one row from Python values (datetimes for timestamp features, floats possibly non-finite)."""
    out: list[Any] = [event_ts, created_ts]
    for value, dtype in zip(values, dtypes, strict=True):
        if value is None:
            out.append(None)
        elif dtype is DType.FLOAT64:
            out.append(float_to_json(float(value)))
        elif dtype is DType.TIMESTAMP:
            out.append(value if isinstance(value, int) else to_micros(value))
        else:
            out.append(value)
    return orjson.dumps(out)


def row_decoder(
    dtypes: Sequence[DType], positions: Sequence[int | None]
) -> Callable[[bytes], tuple[int, int | None, tuple[Any, ...]]]:
    """A decoder returning ``(event_ts_us, created_ts_us, values)`` for the features at ``positions``.

    ``positions[i]`` is the index of requested feature ``i`` in the stored row (None: the row does not hold it,
    the value is None); ``dtypes[i]`` its type. Only float and timestamp values need a conversion after
    ``orjson.loads``; the others are returned as parsed.
    """
    offsets = [None if p is None else p + 2 for p in positions]
    fixes = [
        (i, dtype)
        for i, dtype in enumerate(dtypes)
        if dtype in (DType.FLOAT64, DType.TIMESTAMP) and offsets[i] is not None
    ]

    def decode(data: bytes) -> tuple[int, int | None, tuple[Any, ...]]:
        row = orjson.loads(data)
        values = [None if o is None else row[o] for o in offsets]
        for i, dtype in fixes:
            value = values[i]
            if value is None:
                continue
            if dtype is DType.TIMESTAMP:
                values[i] = from_micros(value)
            elif type(value) is str:
                values[i] = _NON_FINITE[value]
            elif type(value) is int:  # a float column written by something that wrote 1 for 1.0
                values[i] = float(value)
        return row[0], row[1], tuple(values)

    return decode


def decode_row(data: bytes, dtypes: Sequence[DType]) -> tuple[int, int | None, tuple[Any, ...]]:
    """Decode a whole row written with ``dtypes`` (a convenience for tests and tools)."""
    return row_decoder(dtypes, range(len(dtypes)))(data)


# -- Arrow batches ------------------------------------------------------------------------------------------------


def arrow_column(column: pa.Array | pa.ChunkedArray, dtype: DType | None) -> list[Any]:
    """A column as Python values ready for :func:`encode_row`/:func:`encode_entity_key`.

    Timestamps become integer microseconds straight from Arrow (no datetime objects); floats stay floats.
    """
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        if column.type.unit != "us":
            column = column.cast(pa.timestamp("us", tz=column.type.tz))
        column = column.cast(pa.int64())
    values: list[Any] = column.to_pylist()
    if dtype is DType.FLOAT64:
        return [v if v is None else float_to_json(v) for v in values]
    return values


def encode_batch(
    batch: pa.RecordBatch,
    key_names: Sequence[str],
    key_dtypes: Sequence[DType],
    feature_names: Sequence[str],
    feature_dtypes: Sequence[DType],
    event_column: str,
    created_column: str,
) -> Iterable[tuple[bytes, bytes]]:
    """``(entity key, row)`` pairs of one Arrow batch (one row per entity)."""
    names = batch.schema.names
    absent = [c for c in (*key_names, *feature_names, event_column) if c not in names]
    if absent:
        raise ValueError(f"the batch to publish lacks column(s) {', '.join(absent)}; it has: {', '.join(names)}")
    keys = [arrow_column(batch.column(names.index(k)), d) for k, d in zip(key_names, key_dtypes, strict=True)]
    features = [
        arrow_column(batch.column(names.index(f)), d) for f, d in zip(feature_names, feature_dtypes, strict=True)
    ]
    events = arrow_column(batch.column(names.index(event_column)), DType.TIMESTAMP)
    if created_column in names:
        created = arrow_column(batch.column(names.index(created_column)), DType.TIMESTAMP)
    else:
        created = [None] * batch.num_rows
    dumps = orjson.dumps
    for i in range(batch.num_rows):
        if events[i] is None:
            raise ValueError(f"row {i} has no {event_column}; every published row needs one")
        key = dumps([k[i] for k in keys])[1:-1]
        yield key, dumps([events[i], created[i], *(f[i] for f in features)])
