"""Delta Lake feature tables: one per view and storage fingerprint, holding every value ever published.

A table lives at ``<offline path>/<view>/<storage fingerprint>``, so a definition change that alters stored
values starts a new table instead of mixing old and new values. Each row is one value of the view's features
for one entity at one ``event_timestamp`` (and ``created_timestamp``), with the time it was ``published_at``.
Writes are a single MERGE, hence atomic, and re-running a window changes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.dtypes import DType
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, PUBLISHED_AT, ViewPlan
from features.table_stats import table_dir
from offline import delta_rs
from offline.sql import quote_spark

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def table_path(config: RepoConfig, view: ViewPlan) -> Path:
    """Where the view's Delta table lives."""
    return table_dir(config, view.name, view.storage_fingerprint)


#: Where a Spark run that creates a table stages each entity's latest row until its publication
#: (``<table>/_skewless_latest_<run>/``; Delta ignores names that start with ``_``).
LATEST_DIR_PREFIX = "_skewless_latest_"
#: Staged rows older than this were left by a process that died between its commit and the end of its
#: publication (a run still publishing staged them more recently); a later run removes them.
ABANDONED_AFTER_SECONDS = 3600


def remove_abandoned_staging(view: str, path: Path, now: float | None = None) -> list[str]:
    """Remove (and log) the staged latest rows (:data:`LATEST_DIR_PREFIX`) in ``view``'s table folder ``path``
    older than :data:`ABANDONED_AFTER_SECONDS`; returns their names. Nothing reads them: the run after a crash
    publishes from the table itself. Both engines call it before a run of a table that exists."""
    if not path.is_dir():
        return []
    moment = time.time() if now is None else now
    removed = []
    for staged in path.glob(f"{LATEST_DIR_PREFIX}*"):
        if staged.is_dir() and moment - staged.stat().st_mtime > ABANDONED_AFTER_SECONDS:
            shutil.rmtree(staged, ignore_errors=True)
            removed.append(staged.name)
            log.warning("view '%s': removed %s, left by a first run that did not finish its publication", view, staged)
    return sorted(removed)


# Delta collects min/max statistics only for these columns (a table property, set when write_rows creates the
# table): the keys and times that reads filter on. Statistics of every feature column were ~7% of the JVM's
# time writing a table, and no query here uses them.
STATS_PROPERTY = "delta.dataSkippingStatsColumns"


def stats_column_names(view: ViewPlan) -> list[str]:
    """The columns Delta keeps statistics of in ``view``'s table: its keys and times."""
    return [*view.key_names, EVENT_TIMESTAMP, CREATED_TIMESTAMP, PUBLISHED_AT]


def stats_columns(view: ViewPlan) -> str:
    """The value of :data:`STATS_PROPERTY` for ``view``'s table."""
    return ",".join(quote_spark(c) for c in stats_column_names(view))


def table_arrow_schema(view: ViewPlan) -> pa.Schema:
    """The table's columns as Arrow types (what :func:`table_rows` gives)."""
    import pyarrow as pa

    from features.dtypes import arrow_type

    return pa.schema([pa.field(name, arrow_type(dtype)) for name, dtype in table_columns(view)])


def commit_time(path: Path | str, version: int) -> datetime | None:
    """When ``version`` of the table at ``path`` was committed (its ``commitInfo``): no Spark job. None when the
    commit or its time is missing."""
    info = delta_rs.commit_info(path, version)
    if info is None or not isinstance(info.get("timestamp"), int):
        return None
    return datetime.fromtimestamp(info["timestamp"] / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class RowCounts:
    """How many source rows a run read, and how many it dropped and why."""

    read: int
    null_keys_or_time: int
    duplicates: int

    @property
    def kept(self) -> int:
        return self.read - self.null_keys_or_time - self.duplicates

    def warn(self, view: str) -> None:
        """Log the rows dropped, and why (either engine's run)."""
        if self.null_keys_or_time:
            log.warning(
                "view '%s': dropped %d source row(s) with a null join key or event time", view, self.null_keys_or_time
            )
        if self.duplicates:
            log.warning(
                "view '%s': dropped %d duplicate source row(s) (same keys, event and created time)",
                view,
                self.duplicates,
            )


def table_columns(view: ViewPlan) -> list[tuple[str, DType]]:
    """The table's columns and their plan types, in order: join keys, features, event_timestamp,
    created_timestamp, published_at."""
    return [
        *((k.name, k.dtype) for k in view.join_keys),
        *((f.name, f.dtype) for f in view.features),
        *((name, DType.TIMESTAMP) for name in (EVENT_TIMESTAMP, CREATED_TIMESTAMP, PUBLISHED_AT)),
    ]


def table_rows(view: ViewPlan, rows: pa.Table, published_at: datetime) -> pa.Table:
    """``rows`` (the join keys, features, event and created time) as the table stores them: its columns in order,
    as their Arrow types, with ``published_at``. What a commit through delta-rs writes, from either engine."""
    import pyarrow as pa

    from features.dtypes import arrow_type

    stamp = pa.repeat(pa.scalar(published_at, arrow_type(DType.TIMESTAMP)), rows.num_rows)
    return stored_types(view, rows).append_column(PUBLISHED_AT, stamp)


def stored_types(view: ViewPlan, rows: pa.Table) -> pa.Table:
    """``rows``' stored columns but ``published_at`` (join keys, features, event and created time), in the
    table's order, cast to the Arrow types the table stores."""
    import pyarrow as pa

    from features.dtypes import arrow_type

    return pa.table(
        {name: rows.column(name).cast(arrow_type(dtype)) for name, dtype in table_columns(view) if name != PUBLISHED_AT}
    )


def row_columns(view: ViewPlan) -> list[str]:
    """The columns of a stored row a reader takes (all but published_at): what a publication is handed."""
    return [*view.key_names, *view.feature_names, EVENT_TIMESTAMP, CREATED_TIMESTAMP]


# A windowed view's table records in each commit's userMetadata the last tick it covers.
THROUGH_KEY = "skewless.through"


def read_through(path: Path | str, version: int | None = None) -> datetime | None:
    """The last tick covered by the feature table at ``path`` (at ``version`` when given); None before any run.

    Read from the Delta log's ``userMetadata`` in Python (what Spark's ``history()`` shows), without a job.
    """
    if version is None:
        version = delta_rs.latest_version(path)
        if version is None:
            return None
    metadata = delta_rs.user_metadata(path, version)
    if metadata is None:
        return None
    try:
        return datetime.fromisoformat(json.loads(metadata)[THROUGH_KEY])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class ViewTable:
    """One view's side of a point-in-time join, in either engine: its rows at the pinned version (``table``, a
    Spark DataFrame or an Arrow table with the join keys, the features, ``event_timestamp`` and
    ``created_timestamp``) and what to take from them."""

    name: str
    join_keys: tuple[tuple[str, DType], ...]
    features: tuple[str, ...]
    ttl_seconds: int | None
    table: Any
    valid_until: datetime | None = None  # windowed views: the last tick computed plus the TTL

    def column(self, feature: str) -> str:
        return f"{self.name}__{feature}"
