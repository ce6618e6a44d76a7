"""The served-feature log's Delta table: batches landed from the serving workers' folder, and read back.

Serving workers never touch Delta (no JVM, no commit race in the request path): each writes its batches as files of
JSON lines, one per lookup with the answer as sent (:func:`features.served_log.raw_line`), into the landing folder
(``features.served_log.landing_dir``: a hidden temporary name, then a rename, as pushes do). :func:`land` expands
them into the log's rows (:func:`features.served_log.rows_from_lines`) and appends every pending file to the table
(``<offline path>/_served_log``, partitioned by ``day``) in one delta-rs commit whose ``userMetadata`` names the
files, then removes them: a crash between the commit and the removal leaves files the next landing finds named in
the log and removes without landing them twice (:mod:`offline.landing`, shared with pushes). :func:`read` returns
the table's rows (Spark reads the same table with ``spark.read.format("delta")``).

Retention (``serving.log.retention_days``): :func:`land` then deletes the days older than that (one delta-rs
delete of those partitions) and vacuums files removed more than :data:`VACUUM_HOURS` ago, so a reader of an
older version (an audit under way) keeps its files for a week. :func:`status` says what is pending, landed and due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from features.errors import CommitConflictError
from features.served_log import DAY, RAW_SUFFIX, landed_rows, landing_dir, log_dir, schema
from offline import delta_rs, landing

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

    from features.config import RepoConfig

log = logging.getLogger(__name__)

VACUUM_HOURS = 168  # Delta's default: files a delete removed stay a week for readers of older versions


def pending(config: RepoConfig) -> list[str]:
    """The batches waiting in the landing folder, oldest first (names start with the time they were written)."""
    return landing.pending(landing_dir(config), (".parquet", RAW_SUFFIX))


def land(config: RepoConfig, *, now: datetime | None = None) -> int:
    """Append the pending batches to the log table in one commit, then remove them; then drop the days older
    than ``serving.log.retention_days`` before ``now`` (default: the current time). The rows landed."""

    def land_and_expire() -> int:
        landed = _land_once(config)
        expire(config, now=now)
        return landed

    return landing.with_retries(land_and_expire, "served-feature log")


def _land_once(config: RepoConfig) -> int:
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError

    names = pending(config)
    if not names:
        return 0
    path = log_dir(config)

    def commit(rows: pa.Table, version: int | None, metadata: str) -> None:
        properties = CommitProperties(custom_metadata={"userMetadata": metadata}, max_commit_retries=0)
        try:
            write_deltalake(str(path), rows, mode="append", partition_by=[DAY], commit_properties=properties)
        except (CommitFailedError, DeltaError) as exc:
            raise CommitConflictError(f"landing the served-feature log in {path} failed: {exc}") from exc

    rows, batches = landing.land_once(
        landing_dir(config), path, names, read=landed_rows, combine=pa.concat_tables, commit=commit
    )
    if rows:
        log.info("served-feature log: landed %d row(s) from %d batch(es)", rows, batches)
    return rows


def cutoff_day(config: RepoConfig, now: datetime | None = None) -> str:
    """The oldest day retention keeps: ``retention_days`` days up to and including today (UTC)."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return (today - timedelta(days=config.log_retention_days - 1)).isoformat()


def expire(config: RepoConfig, *, now: datetime | None = None) -> list[str]:
    """Delete the log's days older than :func:`cutoff_day` (one commit; none when there are none) and vacuum the
    files removed more than :data:`VACUUM_HOURS` ago; the days deleted."""
    from deltalake import CommitProperties, DeltaTable
    from deltalake.exceptions import CommitFailedError, DeltaError

    path = log_dir(config)
    if delta_rs.latest_version(path) is None:
        return []
    cutoff = cutoff_day(config, now)
    expired = sorted(day for day in _rows_per_day(DeltaTable(str(path))) if day < cutoff)
    if not expired:
        return []
    table = DeltaTable(str(path))
    try:
        table.delete(f"{DAY} < '{cutoff}'", commit_properties=CommitProperties(max_commit_retries=3))
        table.vacuum(retention_hours=VACUUM_HOURS, dry_run=False)
    except (CommitFailedError, DeltaError) as exc:
        raise CommitConflictError(f"deleting old days of the served-feature log in {path} failed: {exc}") from exc
    log.info("served-feature log: deleted %d day(s) before %s (retention)", len(expired), cutoff)
    return expired


@dataclass(frozen=True, slots=True)
class LogStatus:
    """What :func:`status` reports."""

    pending: dict[str, int]  # batch name -> rows (a serving worker's raw batch: one per lookup), oldest first
    landed: dict[str, int]  # day -> rows in the table
    retention_days: int
    cutoff: str  # the oldest day kept
    version: int | None  # the table's latest version; None before the first landing


def status(config: RepoConfig, *, now: datetime | None = None) -> LogStatus:
    """The pending batches and their rows, the landed rows per day, and the retention."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    folder = landing_dir(config)
    batches: dict[str, int] = {}
    for name in pending(config):
        try:
            path = folder / name
            batches[name] = (
                path.read_bytes().count(b"\n")  # a serving worker's batch: a line per lookup
                if name.endswith(RAW_SUFFIX)
                else pq.ParquetFile(path).metadata.num_rows
            )
        except FileNotFoundError:  # landed meanwhile
            continue
    path = log_dir(config)
    version = delta_rs.latest_version(path)
    landed = {} if version is None else _rows_per_day(DeltaTable(str(path)))
    return LogStatus(batches, landed, config.log_retention_days, cutoff_day(config, now), version)


def _rows_per_day(table: DeltaTable) -> dict[str, int]:
    """Rows per ``day`` partition, from the table's file statistics (no data read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return {}
    grouped = actions.group_by(f"partition.{DAY}").aggregate([("num_records", "sum")])
    days = grouped.column(f"partition.{DAY}").to_pylist()
    counts = pc.cast(grouped.column("num_records_sum"), "int64").to_pylist()
    return dict(sorted(zip(days, counts, strict=True)))


def read(config: RepoConfig, *, since: datetime | None = None, until: datetime | None = None) -> pa.Table:
    """The log's rows served in ``[since, until)`` (either end open when None), in :func:`schema`; an empty
    table when nothing was landed yet. Pending batches are not included: land them first."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    path = log_dir(config)
    if delta_rs.latest_version(path) is None:
        return schema().empty_table()
    table = DeltaTable(str(path))
    filters = []
    if since is not None:
        filters.append((DAY, ">=", since.strftime("%Y-%m-%d")))
    if until is not None:
        filters.append((DAY, "<=", until.strftime("%Y-%m-%d")))
    rows = table.to_pyarrow_table(filters=filters or None).select(schema().names).cast(schema())
    served = rows.column("served_at")
    if since is not None:
        rows = rows.filter(pc.greater_equal(served, pa.scalar(since, served.type)))
        served = rows.column("served_at")
    if until is not None:
        rows = rows.filter(pc.less(served, pa.scalar(until, served.type)))
    return rows
