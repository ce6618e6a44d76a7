"""The SQL both engines send to a source: its rows in a window of event time.

Spark's JDBC read (:mod:`offline.spark.jdbc`) and the Arrow engine's ADBC read (:mod:`offline.adbc_source`)
send the same text, so both read exactly the same rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from features.plan import SourcePlan
from features.sources import query_body


def quote(name: str) -> str:
    """An SQL identifier in double quotes (understood by SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def base_query(source: SourcePlan) -> str:
    """The source as a SELECT: its query, or all columns of its table."""
    if source.query is not None:
        return query_body(source.query)
    assert source.table is not None  # SourcePlan has exactly one of table / query
    table = ".".join(quote(part) for part in source.table.split("."))
    return f"SELECT * FROM {table}"


def _sql_timestamp(value: datetime) -> str:
    """A UTC timestamp literal that compares correctly with SQLite text timestamps and PostgreSQL columns."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return "'" + value.isoformat(sep=" ", timespec="microseconds" if value.microsecond else "seconds") + "'"


def window_query(
    source: SourcePlan, start: datetime | None, end: datetime | None, since: datetime | None = None
) -> str:
    """The source restricted to ``start <= timestamp < end`` (either bound optional) and, with ``since``, to the
    rows whose change column is at or after it (:mod:`offline.incremental`), as SQL."""
    ts = quote(source.timestamp_column)
    conditions = ["1 = 1"]
    if start is not None:
        conditions.append(f"{ts} >= {_sql_timestamp(start)}")
    if end is not None:
        conditions.append(f"{ts} < {_sql_timestamp(end)}")
    if since is not None:
        if source.changed_column is None:
            raise ValueError(f"source '{source.name}' declares no changed_at column to read rows since a change")
        conditions.append(f"{quote(source.changed_column)} >= {_sql_timestamp(since)}")
    return f"SELECT * FROM ({base_query(source)}) AS skewless_src WHERE {' AND '.join(conditions)}"


def quote_spark(name: str) -> str:
    """A column name in backticks, so names with dots or spaces resolve literally in Spark."""
    return "`" + name.replace("`", "``") + "`"
