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
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import orjson

from features.dtypes import DType, from_micros, to_micros
from features.protocols import ColumnText

try:  # the compiled scanner (online/_rowscan.c); without a C compiler at install, the Python decode serves alone
    from online import _rowscan
except ImportError:  # pragma: no cover - the test venv builds it (tests/online/test_rowscan.py checks)
    _rowscan = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import pyarrow as pa

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


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


def encode_entity_keys(columns: Sequence[Sequence[Any]], dtypes: Sequence[DType]) -> list[bytes]:
    """:func:`encode_entity_key` for many entities given as key columns (``columns[k][i]``: key ``k`` of
    entity ``i``). One integer key, the common case, is encoded by one ``orjson.dumps`` of the whole column.

    >>> encode_entity_keys([[42, 7], ["a", "b"]], [DType.INT64, DType.STRING])
    [b'42,"a"', b'7,"b"']
    """
    columns = [
        [None if v is None else to_micros(v) for v in column] if dtype is DType.TIMESTAMP else column
        for column, dtype in zip(columns, dtypes, strict=True)
    ]
    dumps = orjson.dumps
    if len(columns) == 1:
        (column,) = columns
        if dtypes[0] is DType.INT64:  # integers hold no comma: one dump, split
            return dumps(column)[1:-1].split(b",") if column else []
        return [dumps(v) for v in column]
    return [dumps(parts)[1:-1] for parts in zip(*columns, strict=True)]


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


_SCANNED_FROM = 2  # rows from which rows_decoder scans them in C (one row, a 1-entity lookup, keeps its own path)


def _exponent_plus() -> bool | None:
    """How the running orjson writes the text the scanner copies: whether it signs a positive exponent (orjson 3.8
    wrote ``1e16``, 3.13 writes ``1e+16``); None when its text is not what the scanner knows (then it is not used:
    a row written by this orjson must read back as the same bytes)."""
    plus = orjson.dumps(1e16) == b"1e+16"
    sign = b"+" if plus else b""
    probe = [1e16, 1.7976931348623157e308, 1e-6, 1e-5, 0.1, -0.0, 1.0, 9999999999999998.0, 5e-324, 2**63 - 1]
    expected = b"[1e%s16,1.7976931348623157e%s308,1e-6,0.00001,0.1,-0.0,1.0,9999999999999998.0,5e-324,%d]" % (
        sign,
        sign,
        2**63 - 1,
    )
    strings = orjson.dumps(['\x00\x1f\x7f\b\f\n\r\t"\\/\u00e9\u2028\U0001f600'])
    written = b'["\\u0000\\u001f\x7f\\b\\f\\n\\r\\t\\"\\\\/\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80"]'
    return plus if orjson.dumps(probe) == expected and strings == written else None


_EXPONENT_PLUS = _exponent_plus()

# What rows_decoder's decoders return: the columns (lists of values, or texts decoded on demand) and event times.
RowsDecoded = tuple[list[list[Any] | ColumnText], list[int | None]]


def rows_decoder(
    dtypes: Sequence[DType], positions: Sequence[int | None], *, compiled: bool = True
) -> Callable[[Sequence[bytes | None]], RowsDecoded]:
    """A decoder of many rows at once, column by column: ``(columns, event_micros)``.

    ``positions[i]`` is the index of requested feature ``i`` in the stored row (None: the row does not hold it,
    the value is None); ``dtypes[i]`` its type. ``columns[i]`` holds feature ``i`` of every row (None where
    the row is None, i.e. the store has no row for that entity); ``event_micros`` each row's event time.

    From :data:`_SCANNED_FROM` rows, the compiled scanner (``online/_rowscan.c``; ``compiled=False`` or an
    install without it: never) cuts each requested column's JSON text out of the rows without making a Python
    object per value: a column whose text is what the answer writes back comes as a :class:`ColumnText` (the
    HTTP answer splices it; its values are decoded only when asked), the others (timestamps, integers in a float
    column) are decoded from their text at once. Rows the scanner does not vouch for as orjson's text (malformed,
    rows of different widths) go the Python way below, which raises today's errors.

    The Python way: all rows go through one ``orjson.loads`` and one transposition in C: the cost per value stays
    in C except for timestamp features and float columns holding a non-finite value, which need a conversion.
    """
    offsets = [None if p is None else p + 2 for p in positions]
    text_decoders = [_column_decoder(dtype) for dtype in dtypes]
    scan_offsets = tuple(offset for offset in offsets if offset is not None)
    scan_kinds = bytes(_SCAN_KINDS[d] for d, offset in zip(dtypes, offsets, strict=True) if offset is not None)
    usable = compiled and _rowscan is not None and _EXPONENT_PLUS is not None and len(scan_offsets) <= 64
    scan = _rowscan.scan if usable else None
    blank = _rowscan.blank if usable else None

    def decode_scanned(rows: Sequence[bytes | None]) -> RowsDecoded | None:
        assert scan is not None and blank is not None
        found = scan(rows, scan_offsets, scan_kinds, bool(_EXPONENT_PLUS))
        if found is None:
            return None
        events, texts, spliceable = found
        columns: list[list[Any] | ColumnText] = []
        j = 0  # the scanned column of each requested feature held by the rows
        for offset, decode_text in zip(offsets, text_decoders, strict=True):
            if offset is None:
                columns.append([None] * len(rows))
                continue
            text = texts[j]
            columns.append(ColumnText(text, decode_text, blank) if spliceable >> j & 1 else decode_text(text))
            j += 1
        return columns, events

    # A lookup of one entity (the most common) decodes one row: no join, no transposition, values checked alone.
    converts = [
        float_from_json if dtype is DType.FLOAT64 else from_micros if dtype is DType.TIMESTAMP else None
        for dtype in dtypes
    ]
    one_row = [(offset, convert) for offset, convert in zip(offsets, converts, strict=True)]

    def decode(rows: Sequence[bytes | None]) -> RowsDecoded:
        count = len(rows)
        if scan is not None and count >= _SCANNED_FROM and (done := decode_scanned(rows)) is not None:
            return done
        if count == 1:
            (data,) = rows
            if data is None:
                return [[None] for _ in offsets], [None]
            row = orjson.loads(data)
            return [
                [None if offset is None or (value := row[offset]) is None else convert(value) if convert else value]
                for offset, convert in one_row
            ], [row[0]]
        try:  # every entity has a row (the common case: a None among the rows makes the join raise)
            found: Sequence[bytes] = cast("Sequence[bytes]", rows)
            joined = b",".join(found)
        except TypeError:
            found = [r for r in rows if r is not None]
            if not found:
                return [[None] * count for _ in offsets], [None] * count
            joined = b",".join(found)
        stored = list(zip(*orjson.loads(b"[" + joined + b"]"), strict=True))
        events: list[Any] = list(stored[0])
        columns: list[list[Any] | ColumnText] = []
        for offset, dtype in zip(offsets, dtypes, strict=True):
            if offset is None:
                columns.append([None] * len(found))
                continue
            column = list(stored[offset])
            if dtype is DType.FLOAT64 and not set(map(type, column)) <= _FLOAT_TYPES:
                column = [None if v is None else float_from_json(v) for v in column]
            elif dtype is DType.TIMESTAMP:
                column = [None if v is None else from_micros(v) for v in column]
            columns.append(column)
        if len(found) < count:  # spread the found rows back to their entities, None for the others
            where = [i for i, r in enumerate(rows) if r is not None]
            columns = [_spread(cast("list[Any]", column), where, count) for column in columns]
            events = _spread(events, where, count)
        return columns, events

    return decode


_FLOAT_TYPES = frozenset({float, type(None)})
# The scanner's name of each type (online/_rowscan.c): which tokens a column of it writes back unchanged.
_SCAN_KINDS = {
    DType.INT64: ord("i"),
    DType.FLOAT64: ord("f"),
    DType.STRING: ord("s"),
    DType.BOOL: ord("b"),
    DType.TIMESTAMP: ord("t"),
}


def _column_decoder(dtype: DType) -> Callable[[bytes], list[Any]]:
    """How to turn a column's JSON text into its values: the values the Python way gives for the same tokens."""
    loads = orjson.loads
    if dtype is DType.FLOAT64:

        def floats(text: bytes) -> list[Any]:
            column: list[Any] = loads(text)
            if set(map(type, column)) <= _FLOAT_TYPES:
                return column
            return [None if v is None else float_from_json(v) for v in column]

        return floats
    if dtype is DType.TIMESTAMP:
        return lambda text: [None if v is None else from_micros(v) for v in loads(text)]
    return cast("Callable[[bytes], list[Any]]", loads)


def _spread(values: Sequence[Any], where: Sequence[int], count: int) -> list[Any]:
    out: list[Any] = [None] * count
    for i, value in zip(where, values, strict=True):
        out[i] = value
    return out


def decode_row(data: bytes, dtypes: Sequence[DType]) -> tuple[int, int | None, tuple[Any, ...]]:
    """Decode one whole row written with ``dtypes``: ``(event_ts_us, created_ts_us, values)`` (for tests and
    tools; readers decode many rows at once with :func:`rows_decoder`)."""
    row = orjson.loads(data)
    columns, _events = rows_decoder(dtypes, range(len(dtypes)))([data])
    return row[0], row[1], tuple(cast("list[Any]", column)[0] for column in columns)


# -- Arrow batches ------------------------------------------------------------------------------------------------


def arrow_column(column: pa.Array | pa.ChunkedArray, dtype: DType | None) -> list[Any]:
    """A column as Python values ready for :func:`encode_row`/:func:`encode_entity_key`.

    Timestamps become integer microseconds straight from Arrow (no datetime objects); floats stay floats, the
    non-finite ones as their JSON strings.
    """
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        if column.type.unit != "us":
            column = column.cast(pa.timestamp("us", tz=column.type.tz))
        column = column.cast(pa.int64())
    values: list[Any] = column.to_pylist()
    # A sum is finite only when every term is (a finite sum that overflows only takes the slow path).
    if dtype is DType.FLOAT64 and not math.isfinite(sum(filter(None, values))):
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
) -> tuple[list[bytes], list[bytes]]:
    """The entity keys and the rows of one Arrow batch (one row per entity), in batch order.

    Column by column: one ``to_pylist`` per column, then one ``orjson.dumps`` per key and per row over tuples
    zipped in C (a row per Python loop iteration cost half the publishing time).
    """
    names = batch.schema.names
    absent = [c for c in (*key_names, *feature_names, event_column) if c not in names]
    if absent:
        raise ValueError(f"the batch to publish lacks column(s) {', '.join(absent)}; it has: {', '.join(names)}")
    keys = [arrow_column(batch.column(names.index(k)), d) for k, d in zip(key_names, key_dtypes, strict=True)]
    features = [
        arrow_column(batch.column(names.index(f)), d) for f, d in zip(feature_names, feature_dtypes, strict=True)
    ]
    events = arrow_column(batch.column(names.index(event_column)), DType.TIMESTAMP)
    if None in events:
        raise ValueError(f"row {events.index(None)} has no {event_column}; every published row needs one")
    if created_column in names:
        created = arrow_column(batch.column(names.index(created_column)), DType.TIMESTAMP)
    else:
        created = [None] * batch.num_rows
    # Timestamp keys are integer microseconds already (arrow_column): encoded like integers.
    plain = [DType.INT64 if d is DType.TIMESTAMP else d for d in key_dtypes]
    return encode_entity_keys(keys, plain), list(map(orjson.dumps, zip(events, created, *features, strict=True)))
