"""Delta Lake tables from Python, through delta-rs (the ``deltalake`` package): no JVM, no Spark job.

The Arrow engine reads and writes the feature tables here; every engine reads table versions and the covered
tick of windowed views here. The tables stay exactly Spark's (measured before this module replaced a
hand-written log reader and writer; see docs/ARCHITECTURE.md, "Delta from Python"): given tz-aware
``timestamp[us, tz=UTC]`` columns, delta-rs writes Spark's protocol (reader 1, writer 2), the same schema
string and the statistics ``delta.dataSkippingStatsColumns`` names, and Spark reads, appends to and MERGEs into
what it wrote, as delta-rs reads what Spark wrote, checkpoints included.

Writes commit exactly one version after the snapshot they were computed from (no automatic retry): when
another writer committed first, :class:`~features.errors.CommitConflictError`, and nothing of this write is
visible (its data file stays unreferenced until a vacuum).
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features import table_stats
from features.dtypes import TYPE_NAMES, DType, arrow_type
from features.errors import CommitConflictError, UnsupportedTableError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import CommitProperties, DeltaTable

LOG = "_delta_log"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A table at one version: its columns (name, Delta type name), the bytes of its data files, and the open
    table (what reads and writes start from)."""

    path: str
    version: int
    columns: tuple[tuple[str, str], ...]
    size: int
    table: DeltaTable = field(compare=False, repr=False)


def latest_version(path: Path | str) -> int | None:
    """The table's newest version (its highest commit file: a directory listing, where opening the table with
    delta-rs would replay its log); None when there is no table at ``path``."""
    return table_stats.latest_version(path)


# Snapshots already loaded, by (path, version, the commit file's mtime): the refusal of a job and the job itself
# read a version once between them (a table deleted and written again gets new commit files). Read-only: writes
# open a table of their own (delta-rs moves a table object to the version it commits).
_snapshots: OrderedDict[tuple[str, int, int], Snapshot] = OrderedDict()
_snapshots_lock = threading.Lock()
_SNAPSHOTS_KEPT = 32


def snapshot(path: Path | str, version: int) -> Snapshot:
    """The table at ``version``. :class:`UnsupportedTableError` for a table whose reading needs more than what
    skewless's tables use (reader features such as deletion vectors or column mapping, partitions): Spark reads
    those; ``FileNotFoundError`` when the version's log is gone (or never was)."""
    commit = Path(path) / LOG / f"{version:020d}.json"
    key = (str(path), version, commit.stat().st_mtime_ns if commit.exists() else 0)
    with _snapshots_lock:
        if key in _snapshots:
            _snapshots.move_to_end(key)
            return _snapshots[key]
    loaded = _load(path, version)
    with _snapshots_lock:
        _snapshots[key] = loaded
        while len(_snapshots) > _SNAPSHOTS_KEPT:
            _snapshots.popitem(last=False)
    return loaded


def _load(path: Path | str, version: int) -> Snapshot:
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        table = DeltaTable(str(path), version=version)
    except DeltaError as exc:  # delta-rs says "not found" and "invalid version" alike: the version is not there
        raise FileNotFoundError(f"version {version} of the Delta table {path} cannot be loaded: {exc}") from exc
    protocol = table.protocol()
    if protocol.min_reader_version > 1:
        raise UnsupportedTableError(
            f"{path} needs Delta reader version {protocol.min_reader_version} (skewless's tables need 1)"
        )
    partitions = table.metadata().partition_columns
    if partitions:
        raise UnsupportedTableError(f"{path} is partitioned by {partitions}")
    fields = json.loads(table.schema().to_json())["fields"]
    adds = pa.table(table.get_add_actions(flatten=True))
    size = int(sum(adds.column("size_bytes").to_pylist())) if adds.num_rows else 0
    columns = tuple((f["name"], f["type"] if isinstance(f["type"], str) else json.dumps(f["type"])) for f in fields)
    return Snapshot(str(path), version, columns, size, table)


def read(snapshot: Snapshot, schema: pa.Schema, where: pc.Expression | None = None) -> pa.Table:
    """The columns of ``schema`` at the snapshot's version, as those types (timestamps UTC microseconds, whether
    Spark wrote them as INT96 or INT64); only the rows where ``where`` holds, when given (files whose statistics
    exclude it are not read)."""
    missing = [name for name in schema.names if name not in dict(snapshot.columns)]
    if missing:
        raise UnsupportedTableError(f"the table {snapshot.path} has no column(s) {', '.join(missing)}")
    if where is None:
        return snapshot.table.to_pyarrow_table(columns=schema.names).select(schema.names).cast(schema)
    dataset = snapshot.table.to_pyarrow_dataset()
    return dataset.to_table(columns=schema.names, filter=where).select(schema.names).cast(schema)


# Delta's type names of the plan types (the only ones skewless writes).
DELTA_TYPES = {dtype: TYPE_NAMES[dtype].delta for dtype in DType}


def read_snapshot(snapshot: Snapshot, columns: Sequence[str], where: pc.Expression | None = None) -> pa.Table:
    """``columns`` of the table at the snapshot's version (the rows where ``where`` holds, when given), typed as
    Spark reads them (timestamps UTC microseconds, whether Spark wrote them as INT96 or INT64)."""
    import pyarrow as pa

    types = dict(snapshot.columns)
    missing = [c for c in columns if c not in types]
    if missing:
        raise UnsupportedTableError(f"the table has no column(s) {', '.join(missing)}")
    arrow_types = {name: arrow_type(dtype) for dtype, name in DELTA_TYPES.items()}
    unread = sorted({types[c] for c in columns if c in types} - set(arrow_types))
    if unread:
        raise UnsupportedTableError(f"column types {unread} are not read")
    return read(snapshot, pa.schema([pa.field(c, arrow_types[types[c]]) for c in columns]), where)


def create(path: Path | str, rows: pa.Table, *, configuration: dict[str, str], user_metadata: str | None = None) -> int:
    """Create the table with ``rows`` in one commit (version 0), with ``user_metadata`` in its ``commitInfo``
    when given; :class:`CommitConflictError` when another writer created it first."""
    from deltalake import write_deltalake
    from deltalake.exceptions import DeltaError

    try:
        write_deltalake(
            str(path),
            rows,
            mode="error",
            configuration=configuration,
            commit_properties=_properties(user_metadata),
        )
    except DeltaError as exc:
        raise _creation_conflict(path, exc) from exc
    return 0


@dataclass(frozen=True, slots=True)
class DataFile:
    """A Parquet file written into a table's directory, not yet committed: what its ``add`` action says."""

    path: str  # relative to the table's directory
    size: int
    modified_ms: int
    stats: str  # Delta's per-file statistics (JSON)


def write_file(directory: Path | str, rows: pa.Table, name: str, stats_columns: Sequence[str]) -> DataFile:
    """Write ``rows`` (typed as the table stores them) as the Parquet file ``name`` in the table's ``directory``,
    with the statistics Delta keeps of ``stats_columns`` (as delta-rs writes them: the row count, null counts,
    and min and max of numbers, short strings and times, times truncated to milliseconds). Nothing is committed:
    :func:`create_from_files` does that for every task's file at once."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(directory) / name
    # Dictionaries for text and booleans only (a float feature's dictionary costs time and bytes: measured 0.089
    # -> 0.039 s of CPU per 250,000 rows with page statistics on ``stats_columns`` only, and a smaller file).
    coded = [f.name for f in rows.schema if pa.types.is_string(f.type) or pa.types.is_boolean(f.type)]
    pq.write_table(rows, target, compression="snappy", use_dictionary=coded, write_statistics=list(stats_columns))
    info = os.stat(target)
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for column in stats_columns:
        values = rows.column(column)
        nulls[column] = values.null_count
        low, high = _stat_value(values, "min"), _stat_value(values, "max")
        if low is not None and high is not None:
            minimum[column], maximum[column] = low, high
    stats = {"numRecords": rows.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls}
    return DataFile(name, info.st_size, int(info.st_mtime * 1000), json.dumps(stats))


# Delta truncates the statistics of longer strings (a prefix, and a marker on the max); such a column's min and max
# are left out instead, which only makes readers skip no file by that column.
_STAT_STRING_CHARS = 32


def _stat_value(values: pa.ChunkedArray, which: str) -> Any:
    """The min or max of ``values`` as Delta's statistics write it; None when there is none, or none to write."""
    import pyarrow as pa
    import pyarrow.compute as pc

    value = (pc.min if which == "min" else pc.max)(values).as_py()
    if value is None:
        return None
    kind = values.type
    if pa.types.is_timestamp(kind):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return value if len(value) <= _STAT_STRING_CHARS else None
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return value if not isinstance(value, float) or math.isfinite(value) else None
    return None


def create_from_files(
    path: Path | str,
    schema: pa.Schema,
    files: Sequence[DataFile],
    *,
    configuration: dict[str, str],
    user_metadata: str | None = None,
) -> int:
    """Create the table at ``path`` (version 0) from ``files`` already written into its directory
    (:func:`write_file`), in one commit; :class:`CommitConflictError` when another writer created it first."""
    from deltalake import Schema
    from deltalake.exceptions import DeltaError
    from deltalake.transaction import AddAction, create_table_with_add_actions

    adds = [AddAction(f.path, f.size, {}, f.modified_ms, True, f.stats) for f in files]
    try:
        create_table_with_add_actions(
            str(path),
            Schema.from_arrow(schema),
            adds,
            mode="error",
            configuration=configuration,
            commit_properties=_properties(user_metadata),
        )
    except DeltaError as exc:
        raise _creation_conflict(path, exc) from exc
    return 0


def append(snapshot: Snapshot, rows: pa.Table, *, user_metadata: str | None = None) -> int:
    """Add ``rows`` to the table as the version after ``snapshot`` (``user_metadata`` in its ``commitInfo`` when
    given); the version committed."""
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError

    table = _writable(snapshot)
    try:
        write_deltalake(table, rows, mode="append", commit_properties=_properties(user_metadata))
    except CommitFailedError as exc:
        raise _conflict(snapshot, exc) from exc
    return int(table.version())


def merge(
    snapshot: Snapshot,
    rows: pa.Table,
    *,
    keys: tuple[str, ...],
    features: tuple[str, ...],
    user_metadata: str | None = None,
) -> int:
    """MERGE ``rows`` into the table as the version after ``snapshot``, by skewless's rule (the one
    :func:`offline.spark.tables.merge_rows` gives Spark): matched on the join keys and the created time
    null-safe and the event time, a matched row updated (features and ``published_at``) when a feature differs
    null-safe, the others inserted; ``user_metadata`` in the commit's ``commitInfo`` when given. Returns the
    version committed (the snapshot's when nothing changed: delta-rs commits nothing then)."""
    from deltalake.exceptions import CommitFailedError

    def quoted(column: str) -> str:
        return "`" + column.replace("`", "``") + "`"

    def name(side: str, column: str) -> str:
        return f"{side}.{quoted(column)}"

    # delta-rs binds ``a IS NOT DISTINCT FROM b AND c`` as ``a IS NOT DISTINCT FROM (b AND c)``: every
    # comparison is parenthesised.
    on = " AND ".join(
        [
            *(f"({name('t', k)} IS NOT DISTINCT FROM {name('s', k)})" for k in keys),
            f"({name('t', 'event_timestamp')} = {name('s', 'event_timestamp')})",
            f"({name('t', 'created_timestamp')} IS NOT DISTINCT FROM {name('s', 'created_timestamp')})",
        ]
    )
    changed = " OR ".join(f"({name('t', f)} IS DISTINCT FROM {name('s', f)})" for f in features) or "false"
    updates = {quoted(f): name("s", f) for f in (*features, "published_at")}
    table = _writable(snapshot)
    try:
        (
            table.merge(
                rows,
                on,
                source_alias="s",
                target_alias="t",
                commit_properties=_properties(user_metadata),
            )
            .when_matched_update(updates, predicate=changed)
            .when_not_matched_insert_all()
            .execute()
        )
    except CommitFailedError as exc:
        raise _conflict(snapshot, exc) from exc
    return int(table.version())


def record(snapshot: Snapshot, user_metadata: str) -> int:
    """Commit, as the version after ``snapshot``, nothing but ``user_metadata`` (no file added or removed); the
    version committed. For a run whose write changed no row but must still say what it covered (Spark commits
    nothing for such a write)."""
    empty = snapshot.table.to_pyarrow_dataset().schema.empty_table()
    return append(snapshot, empty, user_metadata=user_metadata)


def _properties(user_metadata: str | None) -> CommitProperties:
    """One commit exactly after the snapshot read (no retry), with ``user_metadata`` when given."""
    from deltalake import CommitProperties

    metadata = None if user_metadata is None else {"userMetadata": user_metadata}
    return CommitProperties(custom_metadata=metadata, max_commit_retries=0)


def _writable(snapshot: Snapshot) -> DeltaTable:
    """A table object of the snapshot's version for one write: the write moves it to the version it commits,
    and the cached snapshot must keep reading its own version."""
    from deltalake import DeltaTable

    return DeltaTable(snapshot.path, version=snapshot.version)


def _creation_conflict(path: Path | str, exc: Exception) -> CommitConflictError:
    return CommitConflictError(f"creating the Delta table {path} failed (another writer first?): {exc}")


def _conflict(snapshot: Snapshot, exc: Exception) -> CommitConflictError:
    return CommitConflictError(
        f"version {snapshot.version + 1} of {snapshot.path} was committed by another writer first: {exc}"
    )


def commit_info(path: Path | str, version: int) -> dict[str, Any] | None:
    """The ``commitInfo`` of ``version`` (when it was committed, by what, ``userMetadata``), read from that one
    commit file: delta-rs's ``history()`` would parse the whole log for it. None when the file or the action is
    missing (an old version cleaned up)."""
    try:
        lines = (Path(path) / LOG / f"{version:020d}.json").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        info = json.loads(line).get("commitInfo") if line.strip() else None
        if isinstance(info, dict):
            return info
    return None


def user_metadata(path: Path | str, version: int) -> str | None:
    """The ``userMetadata`` of the newest commit at or before ``version`` that has one (what Spark's
    ``history()`` shows); None when no commit left in the log has it."""
    for v in range(version, -1, -1):
        if not (Path(path) / LOG / f"{v:020d}.json").exists():
            return None  # older commits were cleaned up: Spark's history() cannot see them either
        info = commit_info(path, v)
        if info is not None and isinstance(info.get("userMetadata"), str):
            return str(info["userMetadata"])
    return None


def newest_metadata_value(path: Path | str, version: int, key: str) -> Any:
    """``key`` of the JSON ``userMetadata`` of the newest commit at or before ``version`` whose metadata has it
    (runs record a cursor, landings of pushed rows the files they landed, each skipping the other's commits);
    None when no commit left in the log has it."""
    for v in range(version, -1, -1):
        info = commit_info(path, v)
        if info is None:
            return None  # older commits were cleaned up
        try:
            metadata = json.loads(info["userMetadata"])
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(metadata, dict) and key in metadata:
            return metadata[key]
    return None


# Operations whose commits change rows only by adding data files (MERGE and OPTIMIZE remove the files they
# rewrite, and add every row those held that they keep): the rows of the files they add cover every change.
_ADDING_OPERATIONS = ("WRITE", "MERGE", "CREATE TABLE", "CREATE OR REPLACE TABLE", "OPTIMIZE")


def rows_in_files(path: Path | str, version: int, files: list[str]) -> int | None:
    """How many rows the data files ``files`` (relative paths, of the table at ``version``) hold, from the
    statistics in the log; None when a file is not in that version or its statistics lack the count."""
    import pyarrow as pa

    adds = pa.table(snapshot(path, version).table.get_add_actions(flatten=True))
    counts = dict(zip(adds.column("path").to_pylist(), adds.column("num_records").to_pylist(), strict=True))
    if any(counts.get(f) is None for f in files):
        return None
    return sum(int(counts[f]) for f in files)


def added_files(path: Path | str, after: int, through: int) -> list[str] | None:
    """The data files (relative paths) the commits ``after < version <= through`` added: every row those commits
    inserted or changed is in one of them. None when a commit of the range is no longer in the log, or changed
    rows otherwise (a DELETE: its effect is not in any added file)."""
    from urllib.parse import unquote

    files: list[str] = []
    for version in range(after + 1, through + 1):
        try:
            lines = (Path(path) / LOG / f"{version:020d}.json").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            action = json.loads(line) if line.strip() else {}
            info = action.get("commitInfo")
            if isinstance(info, dict) and str(info.get("operation", "")).upper() not in _ADDING_OPERATIONS:
                return None
            added = action.get("add")
            if isinstance(added, dict) and added.get("dataChange", True):
                files.append(unquote(str(added["path"])))
    return files
