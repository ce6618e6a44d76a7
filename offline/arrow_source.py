"""Reading a PostgreSQL source into Arrow without a JVM (ADBC's libpq driver, ``COPY`` in binary).

The Arrow materialization (:mod:`offline.arrow_materialize`) reads its source rows here. It reads what
:func:`offline.jdbc.read_source` reads, the same window query, and gives the same values: columns of plain
types only (integers, floats, booleans, text, timestamps), in a session whose time zone is UTC as Spark's JVM
is, so naive timestamps are UTC and timestamp bounds compare alike. Anything else (another database, numeric
or date columns, a driver that is not installed) raises :class:`NotReadHere` with the reason, and Spark reads
the source instead: it also reports a changed source (:class:`~features.errors.SchemaMismatchError`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from features.dtypes import DType
from features.on_demand import arrow_type
from features.plan import SourcePlan
from offline.jdbc import window_query

if TYPE_CHECKING:
    import pyarrow as pa


class NotReadHere(Exception):
    """This module does not read the source (the message says why); Spark does."""


def _accepted() -> dict[DType, Callable[[pa.DataType], bool]]:
    """The Arrow types a column may arrive as, per plan type: the ones whose cast is Spark's JDBC read's."""
    import pyarrow as pa

    signed = pa.types.is_signed_integer
    return {
        DType.INT64: signed,
        DType.FLOAT64: lambda t: signed(t) or pa.types.is_float32(t) or pa.types.is_float64(t),
        DType.STRING: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        DType.BOOL: pa.types.is_boolean,
        DType.TIMESTAMP: pa.types.is_timestamp,
    }


def libpq_uri(sqlalchemy_url: str) -> str:
    """The libpq connection URI of a SQLAlchemy PostgreSQL URL; :class:`NotReadHere` for another database.

    >>> libpq_uri("postgresql+psycopg://me:pw@db:5433/shop?sslmode=require")
    'postgresql://me:pw@db:5433/shop?sslmode=require'
    """
    try:
        url = make_url(sqlalchemy_url)
    except ArgumentError as exc:
        raise NotReadHere(f"not a database URL: {exc}") from exc
    if url.get_backend_name() != "postgresql":
        raise NotReadHere(f"the source is in {url.get_backend_name()}; only PostgreSQL sources are read in Arrow")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def read_source(
    source: SourcePlan, uri: str, start: datetime | None, end: datetime | None, *, max_rows: int
) -> pa.Table:
    """The source's rows with ``start <= timestamp < end`` from the database at ``uri`` (:func:`libpq_uri`):
    exactly the plan's source columns, as their plan types. More than ``max_rows`` rows: :class:`NotReadHere`
    (after reading at most one batch past it)."""
    import pyarrow as pa

    try:
        import adbc_driver_postgresql.dbapi as adbc
    except ImportError as exc:
        raise NotReadHere("the ADBC PostgreSQL driver (adbc-driver-postgresql) is not installed") from exc
    batches: list[pa.RecordBatch] = []
    rows = 0
    try:
        with adbc.connect(uri) as connection, connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")  # as the JDBC driver in Spark's UTC JVM: same bounds, same values
            cursor.execute(window_query(source, start, end))
            reader = cursor.fetch_record_batch()
            for batch in reader:
                rows += batch.num_rows
                if rows > max_rows:
                    raise NotReadHere(
                        f"the window holds more than {max_rows:,} rows (offline.arrow_materialize_max_rows)"
                    )
                batches.append(batch)
            schema = reader.schema
    except NotReadHere:
        raise
    except Exception as exc:  # a connection or query problem: Spark reads it again and reports it properly
        raise NotReadHere(f"reading it with ADBC failed: {' '.join(str(exc).split())[:300]}") from exc
    table = pa.Table.from_batches(batches, schema)
    return _as_plan_types(source, table)


def _as_plan_types(source: SourcePlan, table: pa.Table) -> pa.Table:
    """The plan's source columns of ``table``, cast as Spark's JDBC read casts them."""
    import pyarrow as pa

    accepted = _accepted()
    names = table.column_names
    columns = {}
    for column in source.columns:
        if names.count(column.name) != 1:
            raise NotReadHere(f"column '{column.name}' appears {names.count(column.name)} time(s) in the result")
        values = table.column(column.name)
        if not accepted[column.dtype](values.type):
            raise NotReadHere(
                f"column '{column.name}' arrives as {values.type}, which Spark casts to {column.dtype.value}"
            )
        if pa.types.is_timestamp(values.type) and values.type.tz is None:
            values = values.cast(pa.timestamp(values.type.unit, tz="UTC"))  # naive database times are UTC
        # Unsafe: an int64 beyond 2**53 rounds to the nearest float64, as Java's (double) cast does.
        columns[column.name] = values.cast(arrow_type(column.dtype), safe=False)
    return pa.table(columns)
