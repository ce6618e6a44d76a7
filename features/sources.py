"""Reading a SQL source's columns and types through SQLAlchemy, at plan time.

The plan records the columns it was compiled against, so ``materialize`` can refuse a source that changed
before it writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy import types as satypes

from features.dtypes import DType
from features.errors import SourceUnavailableError
from features.redaction import redact_text, redact_url

# PostgreSQL type OIDs, for the columns of a query (psycopg2 reports them in cursor.description).
_POSTGRES_OIDS = {
    20: DType.INT64,
    21: DType.INT64,
    23: DType.INT64,
    700: DType.FLOAT64,
    701: DType.FLOAT64,
    1700: DType.FLOAT64,
    25: DType.STRING,
    1042: DType.STRING,
    1043: DType.STRING,
    16: DType.BOOL,
    1082: DType.TIMESTAMP,
    1114: DType.TIMESTAMP,
    1184: DType.TIMESTAMP,
}


def dtype_of(sql_type: satypes.TypeEngine[object]) -> DType | None:
    """Map a SQLAlchemy column type to a skewless type; None when there is no safe mapping."""
    if isinstance(sql_type, satypes.Boolean):
        return DType.BOOL
    if isinstance(sql_type, satypes.Integer):
        return DType.INT64
    if isinstance(sql_type, satypes.Float | satypes.Numeric):
        return DType.FLOAT64
    if isinstance(sql_type, satypes.DateTime | satypes.Date):
        return DType.TIMESTAMP
    if isinstance(sql_type, satypes.String):
        return DType.STRING
    return None


def reflect_columns(url: str, *, table: str | None, query: str | None) -> dict[str, DType | None]:
    """Columns of a table or query, in database order, with their types where the database tells them."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if table is not None:
                schema, _, name = table.rpartition(".")
                inspector = sa.inspect(conn)
                if not inspector.has_table(name, schema=schema or None):
                    tables = ", ".join(sorted(inspector.get_table_names(schema=schema or None)))
                    raise SourceUnavailableError(f"table '{table}' not found; tables there: {tables or '(none)'}")
                return {c["name"]: dtype_of(c["type"]) for c in inspector.get_columns(name, schema=schema or None)}
            assert query is not None  # SqlSource guarantees exactly one of table/query
            return _query_columns(conn, query)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceUnavailableError(
            f"cannot read source at {redact_url(str(engine.url))}: {redact_text(str(exc))}"
        ) from exc
    finally:
        engine.dispose()


def _query_columns(conn: sa.Connection, query: str) -> dict[str, DType | None]:
    if conn.dialect.name == "sqlite":
        # SQLite types are per value; a temporary view exposes the declared types of the underlying columns.
        conn.exec_driver_sql("DROP VIEW IF EXISTS temp.skewless_probe")
        conn.exec_driver_sql(f"CREATE TEMP VIEW skewless_probe AS {query}")
        columns = sa.inspect(conn).get_columns("skewless_probe", schema="temp")
        conn.exec_driver_sql("DROP VIEW IF EXISTS temp.skewless_probe")
        return {c["name"]: dtype_of(c["type"]) for c in columns}
    result = conn.exec_driver_sql(f"SELECT * FROM ({query}) AS skewless_probe WHERE 1 = 0")
    description = result.cursor.description if result.cursor is not None else []
    result.close()
    return {d[0]: _POSTGRES_OIDS.get(d[1]) if isinstance(d[1], int) else None for d in description}


def merge_declared(reflected: Mapping[str, DType | None], declared: Mapping[str, DType]) -> dict[str, DType | None]:
    """Declared types win over reflected ones; a declared column the source lacks stays unknown."""
    merged = dict(reflected)
    for name, dtype in declared.items():
        if name in merged:
            merged[name] = dtype
    return merged
