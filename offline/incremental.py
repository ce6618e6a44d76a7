"""Which source rows a run of a view without aggregations reads: the rows it has not seen, and why.

Every run records in its Delta commit's ``userMetadata`` the cursor it has read up to (``skewless.cursor``):
the latest value of the source's cursor column among the rows read so far (its ``changed_at`` column when it
declares one, else its event time). The next run reads the rows at or after that cursor minus the source's
``late_rows`` lookback, so a row that arrives late, by at most the lookback, is still read. Rows read again are
harmless: the table's MERGE leaves out a row it holds with the same values. ``--start`` reads the range asked
for, whatever the cursor. Both engines (Spark, Arrow) ask :func:`plan_read` and record :func:`cursor_metadata`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from features.plan import ViewPlan
from offline import delta_rs

if TYPE_CHECKING:
    import pyarrow as pa

CURSOR_KEY = "skewless.cursor"


@dataclass(frozen=True, slots=True)
class ReadWindow:
    """The source rows a run reads: ``start <= event time < end`` and, when ``since`` is set, ``since <=`` the
    source's change column; ``reason`` says why (for the run's summary); ``cursor`` is the one recorded so far."""

    start: datetime | None
    end: datetime | None
    since: datetime | None
    reason: str
    cursor: datetime | None

    #: ``all`` (every source row: no cursor yet), ``range`` (``--start``) or ``since`` (after the cursor). Runs of
    #: different kinds read different amounts by design, so the default volume rule compares only runs of one kind
    #: (offline.runs.baseline).
    kind: str


def plan_read(view: ViewPlan, path: Path, start: datetime | None, end: datetime | None) -> ReadWindow:
    """The rows the next run of ``view`` (table at ``path``) reads, given ``--start``/``--end``."""
    source = view.source
    cursor = read_cursor(path)
    if start is not None:
        return ReadWindow(start, end, None, f"--start: event time >= {_text(start)}", cursor, "range")
    if cursor is None:
        first = delta_rs.latest_version(path) is None
        reason = "first run: every source row" if first else "every source row (no run in the log recorded a cursor)"
        return ReadWindow(None, end, None, reason, None, "all")
    lookback = timedelta(seconds=source.late_rows_seconds)
    bound = cursor - lookback
    minus = f" minus late_rows {_duration(source.late_rows_seconds)}" if source.late_rows_seconds else ""
    if source.changed_column is not None:
        column = source.changed_column
        reason = f"change column '{column}' >= {_text(bound)} (latest change read {_text(cursor)}{minus})"
        return ReadWindow(None, end, bound, reason, cursor, "since")
    reason = f"event time >= {_text(bound)} (watermark {_text(cursor)}{minus})"
    return ReadWindow(bound, end, None, reason, cursor, "since")


def read_cursor(path: Path | str) -> datetime | None:
    """The cursor recorded by the newest commit of the table at ``path`` that has one (landings of pushed rows
    record none); None before any run recorded one, or when the log no longer holds that commit."""
    version = delta_rs.latest_version(path)
    value = None if version is None else delta_rs.newest_metadata_value(path, version, CURSOR_KEY)
    try:
        return None if value is None else datetime.fromisoformat(str(value))
    except ValueError:
        return None


def latest_time(column: pa.ChunkedArray) -> datetime | None:
    """The latest timestamp of a column of the rows read (the cursor column), None when it holds none."""
    import pyarrow.compute as pc

    value = pc.max(column).as_py()
    return value if isinstance(value, datetime) else None


def next_cursor(window: ReadWindow, latest_read: datetime | None) -> datetime | None:
    """The cursor to record after reading ``window``: the later of the one recorded and the latest read."""
    candidates = [c for c in (window.cursor, latest_read) if c is not None]
    return max(candidates) if candidates else None


def cursor_metadata(cursor: datetime | None) -> str | None:
    """The ``userMetadata`` of a run's commit that records ``cursor`` (None: nothing to record)."""
    return None if cursor is None else json.dumps({CURSOR_KEY: cursor.astimezone(UTC).isoformat()})


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
