"""Reading a SQL source's columns and types through SQLAlchemy, at plan time.

The plan records the columns it was compiled against, so ``materialize`` can refuse a source that changed
before it writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
import sqlglot
import sqlglot.errors
from sqlalchemy import types as satypes
from sqlglot import exp

from features.dtypes import DType
from features.errors import DefinitionError, SourceUnavailableError
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
    """Columns of a table or query, in database order, with their types where the database tells them.

    Plan only reads: a query must be one SELECT statement (:func:`check_select`), and the database is read in
    a read-only transaction (PostgreSQL) or opened read-only (SQLite), so even a function with side effects
    that the query calls cannot write.
    """
    dialect = sa.engine.make_url(url).get_backend_name()
    if query is not None:
        check_select(query, dialect)
    engine = _read_only_engine(url)
    try:
        with engine.connect() as conn:
            if dialect != "sqlite":
                # The first statement of the transaction (SQLAlchemy begins one on first use): everything the
                # reflection runs, the query included, is then refused any write by the database itself.
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
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
        # The URL as configured (the engine's is the read-only form of a SQLite file), without its password.
        raise SourceUnavailableError(f"cannot read source at {redact_url(url)}: {redact_text(str(exc))}") from exc
    finally:
        engine.dispose()


# Nodes that write, lock or create: none may appear anywhere in a query source (a data-modifying CTE,
# SELECT ... INTO a new table).
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Into, exp.Create, exp.Drop, exp.Alter, exp.Command)
_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite", "mysql": "mysql", "mssql": "tsql", "oracle": "oracle"}


def check_select(query: str, dialect: str) -> None:
    """Refuse a query source that is not exactly one SELECT statement (``UNION`` and ``WITH`` included), read
    by sqlglot in the database's dialect: plan and materialize paste it into a wrapping SELECT, so anything
    after a ``;`` would run too. A query sqlglot cannot read is refused as well (name a view with
    ``table=`` instead): the check must not guess."""
    try:
        statements = [s for s in sqlglot.parse(query, dialect=_DIALECTS.get(dialect)) if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        reason = str(exc).splitlines()[0]
        raise DefinitionError(
            f"the query could not be read as one SELECT statement ({reason}); write it as one SELECT, or create "
            f"a view in the database and name it with table=..."
        ) from None
    # A trailing ';' or comment parses as an empty statement: not one that runs.
    statements = [s for s in statements if not isinstance(s, exp.Semicolon)]
    if len(statements) != 1:
        kinds = ", ".join(_statement_kind(s) for s in statements) or "none"
        raise DefinitionError(f"a query source must be exactly one SELECT statement; found {len(statements)} ({kinds})")
    statement = statements[0]
    writes = sorted({_statement_kind(node) for node in statement.find_all(*_WRITES)})
    if not isinstance(statement, exp.Query) or writes:
        found = ", ".join(writes) or _statement_kind(statement)
        raise DefinitionError(f"a query source must be exactly one SELECT statement, without {found}")


def query_body(query: str) -> str:
    """A query source's text, to be pasted between parentheses: without a trailing ``;``, and ending with a
    newline so a trailing ``-- comment`` cannot swallow the closing parenthesis."""
    return query.strip().rstrip(";").rstrip() + "\n"


def _statement_kind(node: exp.Expr) -> str:
    return node.key.upper()


def _read_only_engine(url: str) -> sa.Engine:
    """An engine that cannot write. A SQLite file is opened with ``mode=ro`` (not ``PRAGMA query_only``,
    which would also forbid the temporary view that tells a query's column types; that view lives in the
    connection's own temporary schema)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:") or "uri" in parsed.query:
        return sa.create_engine(url)
    if not Path(parsed.database).is_file():  # read-write, SQLite would have created an empty database
        raise SourceUnavailableError(f"the SQLite database {parsed.database} does not exist")
    target = "file:" + quote(parsed.database, safe="/:")
    return sa.create_engine(parsed.set(database=target, query={**parsed.query, "mode": "ro", "uri": "true"}))


def _query_columns(conn: sa.Connection, query: str) -> dict[str, DType | None]:
    if conn.dialect.name == "sqlite":
        # SQLite types are per value; a temporary view exposes the declared types of the underlying columns.
        conn.exec_driver_sql("DROP VIEW IF EXISTS temp.skewless_probe")
        conn.exec_driver_sql(f"CREATE TEMP VIEW skewless_probe AS {query_body(query)}")
        columns = sa.inspect(conn).get_columns("skewless_probe", schema="temp")
        conn.exec_driver_sql("DROP VIEW IF EXISTS temp.skewless_probe")
        return {c["name"]: dtype_of(c["type"]) for c in columns}
    result = conn.exec_driver_sql(f"SELECT * FROM ({query_body(query)}) AS skewless_probe WHERE 1 = 0")
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
