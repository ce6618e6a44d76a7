"""Reading a PostgreSQL source into Arrow without a JVM (ADBC's libpq driver, ``COPY`` in binary).

The Arrow materialization (:mod:`offline.arrow.materialize`) reads its source rows here, and so do the tasks of a
Spark run that creates a table (:mod:`offline.spark.first_write`), each its slice of the entities
(:func:`entity_slice`). It reads what
:func:`offline.spark.jdbc.read_source` reads, the same window query, and gives the same values: columns of plain
types only (integers, floats, booleans, text, timestamps), in a session whose time zone is UTC as Spark's JVM
is, so naive timestamps are UTC and timestamp bounds compare alike. Whether it reads a source is asked before
any row moves (:func:`refusal`, :func:`window_refusal`): another database, numeric or date columns, a driver
that is not installed or a window over the row limit leave the run to Spark, which also reports a changed
source (:class:`~features.errors.SchemaMismatchError`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from features.dtypes import DType, arrow_type
from features.errors import SchemaMismatchError
from features.plan import SourcePlan
from features.sources import SourceUnavailableError
from offline.sql import quote, window_query

if TYPE_CHECKING:
    import pyarrow as pa


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


def refusal(sqlalchemy_url: str) -> str | None:
    """Why a source at ``sqlalchemy_url`` is not read here, or None (a PostgreSQL URL)."""
    try:
        url = make_url(sqlalchemy_url)
    except ArgumentError as exc:
        return f"not a database URL: {exc}"
    if url.get_backend_name() != "postgresql":
        return f"the source is in {url.get_backend_name()}; only PostgreSQL sources are read in Arrow"
    if importlib.util.find_spec("adbc_driver_postgresql") is None:
        return "the ADBC PostgreSQL driver (adbc-driver-postgresql) is not installed"
    return None


def libpq_uri(sqlalchemy_url: str) -> str:
    """The libpq connection URI of a SQLAlchemy PostgreSQL URL (one :func:`refusal` accepted).

    >>> libpq_uri("postgresql+psycopg://me:pw@db:5433/shop?sslmode=require")
    'postgresql://me:pw@db:5433/shop?sslmode=require'
    """
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


def window_refusal(
    source: SourcePlan,
    uri: str,
    start: datetime | None,
    end: datetime | None,
    *,
    max_rows: int | None,
    since: datetime | None = None,
) -> str | None:
    """Why the window of ``source`` is not read here, or None: asks the database for the window's column types
    (an empty result) and, unless ``max_rows`` is None, its row count, without fetching a row."""
    import adbc_driver_postgresql.dbapi as adbc

    query = window_query(source, start, end, since)
    try:
        with adbc.connect(uri) as connection, connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
            cursor.execute(f"SELECT * FROM ({query}) AS skewless_window LIMIT 0")
            schema = cursor.fetch_arrow_table().schema
            row = None
            if max_rows is not None:  # a count scans the window
                cursor.execute(f"SELECT count(*) FROM ({query}) AS skewless_window")
                row = cursor.fetchone()
    except Exception as exc:  # a connection or query problem: Spark reads it and reports it properly
        return f"asking the database about the window with ADBC failed: {' '.join(str(exc).split())[:300]}"
    problem = _types_problem(source, schema)
    if problem is not None:
        return problem
    rows = int(row[0]) if row is not None else 0
    if max_rows is not None and rows > max_rows:
        return f"the window holds {rows:,} rows, more than {max_rows:,} (offline.arrow_materialize_max_rows)"
    return None


def estimated_rows(source: SourcePlan, uri: str) -> int | None:
    """PostgreSQL's estimate of a table source's rows (``pg_class.reltuples``, as of its last ``ANALYZE`` or
    autovacuum), read without scanning the table; None for a query source, a table never analyzed, or when the
    database does not answer. Sizes a first run's slices, never what is read."""
    import adbc_driver_postgresql.dbapi as adbc

    if source.table is None:
        return None
    name = ".".join(quote(part) for part in source.table.split("."))
    literal = "'" + name.replace("'", "''") + "'"
    try:
        with adbc.connect(uri) as connection, connection.cursor() as cursor:
            cursor.execute(f"SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass({literal})")
            row = cursor.fetchone()
    except Exception:  # an estimate is a hint: without it the run takes the configured number of slices
        return None
    return int(row[0]) if row is not None and row[0] is not None and row[0] >= 0 else None


#: Key types a run can split its source by in SQL (:func:`entity_slice`): equal values are equal in SQL and in
#: Arrow. Not floats: -0.0 and 0.0 are one entity to Spark's grouping, two to a hash of their text.
SLICEABLE_KEYS = (DType.INT64, DType.STRING)


def entity_slice(key: str, dtype: DType, index: int, count: int) -> str:
    """The SQL condition that keeps slice ``index`` of ``count`` of the rows by the value of the key column
    ``key``: every row of one entity falls in the same slice, and rows without the key in slice 0 (where they
    are counted and dropped). Integers go by their value modulo a prime first, so ids that share a stride
    (every id a multiple of 4) still spread over the slices.

    >>> entity_slice("user_id", DType.INT64, 1, 4)
    '(("user_id" % 1009 + 1009) % 1009 % 4 = 1)'
    """
    if dtype not in SLICEABLE_KEYS:
        valid = ", ".join(t.value for t in SLICEABLE_KEYS)
        raise ValueError(f"a {dtype.value} key does not split a source (valid: {valid})")
    column = quote(key)
    if dtype is DType.INT64:
        bucket = f"({column} % 1009 + 1009) % 1009 % {count}"
    else:  # PostgreSQL's hash of text (stable, as its hash indexes rely on), made non-negative
        bucket = f"(hashtext({column}) & 2147483647) % {count}"
    condition = f"({bucket} = {index})"
    return f"({condition} OR {column} IS NULL)" if index == 0 else condition


def read_source(
    source: SourcePlan,
    uri: str,
    start: datetime | None,
    end: datetime | None,
    since: datetime | None = None,
    *,
    where: str | None = None,
) -> pa.Table:
    """The source's rows with ``start <= timestamp < end`` (and a change column at or after ``since``, when
    given; and ``where``, an SQL condition such as :func:`entity_slice`) from the database at ``uri``
    (:func:`libpq_uri`): exactly the plan's source columns, as their plan types, for a window
    :func:`window_refusal` accepted."""
    import adbc_driver_postgresql.dbapi as adbc

    query = window_query(source, start, end, since)
    if where is not None:
        query = f"SELECT * FROM ({query}) AS skewless_window WHERE {where}"
    try:
        with adbc.connect(uri) as connection, connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")  # as the JDBC driver in Spark's UTC JVM: same bounds, same values
            cursor.execute(query)
            table = cursor.fetch_arrow_table()
    except Exception as exc:
        raise SourceUnavailableError(
            f"cannot read source '{source.name}' with ADBC: {' '.join(str(exc).split())[:300]}"
        ) from exc
    problem = _types_problem(source, table.schema)
    if problem is not None:  # changed since the refusal was asked: rerun, and Spark takes it
        raise SchemaMismatchError(f"source '{source.name}' changed while it was read: {problem}")
    return _as_plan_types(source, table)


def _types_problem(source: SourcePlan, schema: pa.Schema) -> str | None:
    """Why a result of ``schema`` does not hold the plan's source columns as types read here, or None."""
    accepted = _accepted()
    names = schema.names
    for column in source.columns:
        if names.count(column.name) != 1:
            return f"column '{column.name}' appears {names.count(column.name)} time(s) in the result"
        found = schema.field(column.name).type
        if not accepted[column.dtype](found):
            return f"column '{column.name}' arrives as {found}, which Spark casts to {column.dtype.value}"
    return None


def _as_plan_types(source: SourcePlan, table: pa.Table) -> pa.Table:
    """The plan's source columns of ``table``, cast as Spark's JDBC read casts them."""
    import pyarrow as pa

    columns = {}
    for column in source.columns:
        values = table.column(column.name)
        if pa.types.is_timestamp(values.type) and values.type.tz is None:
            values = values.cast(pa.timestamp(values.type.unit, tz="UTC"))  # naive database times are UTC
        # Unsafe: an int64 beyond 2**53 rounds to the nearest float64, as Java's (double) cast does.
        columns[column.name] = values.cast(arrow_type(column.dtype), safe=False)
    return pa.table(columns)
