"""What each run wrote to a view's Delta table, per column, without reading a row: the Parquet footers of the
data files the run's commit added (rows, nulls, min and max per column, as the writer recorded them).

Delta's own per-file statistics cover only the keys and times (``delta.dataSkippingStatsColumns``, see
``offline/tables.py``); the Parquet footer of every data file has them for every column, and reading a footer is
a few kilobytes. A commit's ``add`` actions name the files it wrote: for a run that only appended rows, exactly
its rows; for a run that updated rows, its rows and the unchanged rows of the files it rewrote (Delta rewrites
whole files). The catalog (``skewless ui``) draws these per run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from features.config import RepoConfig

_LOG = "_delta_log"


@dataclass(frozen=True, slots=True)
class ColumnStats:
    """One column over the files of one commit. ``min``/``max`` are None when a file has no statistics for the
    column (Spark writes none for INT96 timestamps) or every value is null; NaN is neither min nor max."""

    rows: int
    nulls: int | None
    min: Any
    max: Any

    @property
    def null_share(self) -> float | None:
        if self.nulls is None:
            return None
        return self.nulls / self.rows if self.rows else 0.0


@dataclass(frozen=True, slots=True)
class CommitStats:
    """The files one table version added and their columns' statistics."""

    version: int
    committed_at: datetime | None
    files: int
    columns: dict[str, ColumnStats]


def table_dir(config: RepoConfig, view: str, storage_fingerprint: str) -> Path:
    """Where a view's Delta table of one storage fingerprint lives: ``<offline path>/<view>/<fingerprint>``, so a
    definition change that alters stored values starts a new table (``offline.tables.table_path`` for a view)."""
    return config.resolved_offline_path() / view / storage_fingerprint


def latest_version(table: Path | str) -> int | None:
    """The newest version of the Delta table at ``table``: its highest commit file's number, from a listing of
    the log (opening the table would replay it); None when there is no table. The one reading of it: features/
    (``skewless status``) and offline/ (``offline.delta_rs``) alike."""
    try:
        names = os.listdir(Path(table) / _LOG)
    except OSError:
        return None
    versions = [int(n[:-5]) for n in names if len(n) == 25 and n.endswith(".json") and n[:-5].isdigit()]
    return max(versions) if versions else None


def commit_stats(table: Path, version: int) -> CommitStats | None:
    """The statistics of the files ``version`` of the table at ``table`` added; None when its commit file is gone
    (cleaned up) or a file it added is (vacuumed) before this process read its footer."""
    try:
        lines = (table / _LOG / f"{version:020d}.json").read_text().splitlines()
    except OSError:
        return None
    actions = [json.loads(line) for line in lines if line.strip()]
    files = [table / unquote(a["add"]["path"]) for a in actions if "add" in a]
    info: Any = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
    stamp = info.get("timestamp") if isinstance(info, dict) else None
    committed_at = datetime.fromtimestamp(stamp / 1000, tz=UTC) if isinstance(stamp, int) else None
    merged: dict[str, ColumnStats] = {}
    for path in files:
        try:
            per_file = _footer(str(path))
        except OSError:
            return None
        for name, stats in per_file.items():
            merged[name] = stats if name not in merged else _combine(merged[name], stats)
    return CommitStats(version, committed_at, len(files), {name: _finish(s) for name, s in merged.items()})


@lru_cache(maxsize=4096)
def _footer(path: str) -> dict[str, ColumnStats]:
    """A data file's columns from its Parquet footer (data files never change once written: cached by path); a
    column whose values are all null has the neutral bound ``_ALL_NULL`` until the commit's files are combined."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    out: dict[str, ColumnStats] = {}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            stats = column.statistics
            known = stats is not None and stats.has_min_max
            part = ColumnStats(
                rows=group.num_rows,
                nulls=stats.null_count if stats is not None and stats.has_null_count else None,
                min=_plain(stats.min) if known else None,
                max=_plain(stats.max) if known else None,
            )
            if not known and group.num_rows and part.nulls == group.num_rows:
                part = ColumnStats(part.rows, part.nulls, _ALL_NULL, _ALL_NULL)  # nothing to compare: not unknown
            name = column.path_in_schema
            out[name] = part if name not in out else _combine(out[name], part)
    return out


class _AllNull:
    """Min and max of a part whose values are all null: neutral when combined."""


_ALL_NULL: Any = _AllNull()


def _combine(a: ColumnStats, b: ColumnStats) -> ColumnStats:
    nulls = None if a.nulls is None or b.nulls is None else a.nulls + b.nulls
    return ColumnStats(a.rows + b.rows, nulls, _pick(a.min, b.min, min), _pick(a.max, b.max, max))


def _pick(a: Any, b: Any, choose: Any) -> Any:
    if a is _ALL_NULL:
        return b
    if b is _ALL_NULL:
        return a
    if a is None or b is None:  # one part has no statistics: the bound over both is unknown
        return None
    return choose(a, b)


def _finish(stats: ColumnStats) -> ColumnStats:
    if stats.min is _ALL_NULL:
        return ColumnStats(stats.rows, stats.nulls, None, None)
    return stats


def _plain(value: Any) -> Any:
    """A statistic as a plain value: timestamps in UTC, NaN (no bound) as None."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
