"""A Delta table's snapshot read from its log in plain Python: no JVM, no Spark job.

The point-in-time join in Arrow (:mod:`offline.arrow.join`) reads feature tables this way. It covers the tables
skewless writes (reader protocol 1: no column mapping, no deletion vectors, no partitions, files on the local
disk) and says so, through :class:`UnsupportedTableError`, for anything else, so the caller can hand the table to
Spark instead of guessing.

A snapshot at version ``v`` is the newest checkpoint at or before ``v`` (Parquet, single- or multi-part) plus
the JSON commits after it up to ``v``, replayed in order: ``add`` puts a file in, ``remove`` takes it out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from features.errors import CommitConflictError, UnsupportedTableError

LOG = "_delta_log"
_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet$")


@dataclass(frozen=True, slots=True)
class DataFile:
    """One Parquet file of a snapshot: where it is, its size in bytes, and its path as the log names it."""

    path: Path
    size: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The files that make up a table at one version, and its columns at that version: (name, Delta type)."""

    version: int
    files: tuple[DataFile, ...]
    columns: tuple[tuple[str, str], ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def latest_version(path: Path | str) -> int | None:
    """The table's newest version (its highest commit file); None when there is no table at ``path``."""
    versions = [int(m.group(1)) for m in _matches(Path(path) / LOG, _COMMIT)]
    return max(versions) if versions else None


def snapshot(path: Path | str, version: int) -> Snapshot:
    """The table at ``version``. Raises :class:`UnsupportedTableError` when this reader cannot read it faithfully,
    and ``FileNotFoundError`` when the version's log is gone (or never was)."""
    root = Path(path)
    log = root / LOG
    checkpoint = _checkpoint_at_or_before(log, version)
    files: dict[str, dict[str, Any]] = {}
    state: dict[str, Any] = {}
    first = 0
    if checkpoint is not None:
        first = checkpoint[0] + 1
        for action in _checkpoint_actions(checkpoint[1]):
            _apply(action, files, state)
    for v in range(first, version + 1):
        commit = log / f"{v:020d}.json"
        if not commit.exists():
            raise FileNotFoundError(f"{commit} (version {v} of the table) is missing")
        for line in commit.read_text().splitlines():
            if line.strip():
                _apply(json.loads(line), files, state)
    protocol, metadata = state.get("protocol"), state.get("metaData")
    if protocol is None or metadata is None:
        raise UnsupportedTableError(f"no protocol or metadata up to version {version} of {root}")
    if int(protocol.get("minReaderVersion", 1)) > 1:
        raise UnsupportedTableError(f"{root} needs Delta reader version {protocol['minReaderVersion']} (this reads 1)")
    if metadata.get("partitionColumns"):
        raise UnsupportedTableError(f"{root} is partitioned by {metadata['partitionColumns']}")
    schema = json.loads(metadata["schemaString"])
    columns = tuple((field["name"], str(field["type"])) for field in schema["fields"])
    data = tuple(DataFile(_local_file(root, p), int(a.get("size") or 0), p) for p, a in sorted(files.items()))
    return Snapshot(version, data, columns)


def user_metadata(path: Path | str, version: int) -> str | None:
    """The ``userMetadata`` of the newest commit at or before ``version`` that has one (what Spark's
    ``history()`` shows); None when no commit in the log has it."""
    log = Path(path) / LOG
    for v in range(version, -1, -1):
        commit = log / f"{v:020d}.json"
        if not commit.exists():
            return None  # older commits were cleaned up: Spark's history() cannot see them either
        for line in commit.read_text().splitlines():
            info = json.loads(line).get("commitInfo") if line.strip() else None
            if isinstance(info, dict) and isinstance(info.get("userMetadata"), str):
                return str(info["userMetadata"])
    return None


def _apply(action: dict[str, Any], files: dict[str, dict[str, Any]], state: dict[str, Any]) -> None:
    if (add := action.get("add")) is not None:
        if add.get("deletionVector"):
            raise UnsupportedTableError(f"file {add['path']} has a deletion vector")
        files[add["path"]] = add
    elif (remove := action.get("remove")) is not None:
        files.pop(remove["path"], None)
    elif (protocol := action.get("protocol")) is not None:
        state["protocol"] = protocol
    elif (metadata := action.get("metaData")) is not None:
        state["metaData"] = metadata


def _checkpoint_at_or_before(log: Path, version: int) -> tuple[int, list[Path]] | None:
    """The newest complete checkpoint at or before ``version``: its version and its part files in order."""
    parts: dict[int, dict[int, list[Path]]] = {}  # version -> number of parts -> files
    for match in _matches(log, _CHECKPOINT):
        v = int(match.group(1))
        count = int(match.group(3)) if match.group(3) else 1
        parts.setdefault(v, {}).setdefault(count, []).append(log / match.group(0))
    for v in sorted((v for v in parts if v <= version), reverse=True):
        for count, found in parts[v].items():
            if len(found) == count:
                return v, sorted(found)
    if _has_v2_checkpoint(log, version):
        raise UnsupportedTableError(f"{log} has a V2 checkpoint")
    return None


def _has_v2_checkpoint(log: Path, version: int) -> bool:
    """Whether a UUID-named (V2) checkpoint exists at or before ``version``: those are not read here."""
    v2 = re.compile(r"^(\d{20})\.checkpoint\.[0-9a-f-]{36}\.(json|parquet)$")
    return any(int(m.group(1)) <= version for m in _matches(log, v2))


def _checkpoint_actions(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """The add, remove, protocol and metaData actions of a checkpoint, as dicts like the JSON commits'."""
    import pyarrow.parquet as pq

    for path in paths:
        schema = pq.read_schema(path)
        wanted = [c for c in ("add", "remove", "protocol", "metaData") if c in schema.names]
        for row in pq.read_table(path, columns=wanted).to_pylist():
            for kind in wanted:
                if row.get(kind) is not None:
                    yield {kind: row[kind]}


def _local_file(root: Path, path: str) -> Path:
    """A data file's location: relative paths are URL-encoded under the table; absolute ones must be local."""
    if "://" not in path and not path.startswith("/"):
        return root / unquote(path)
    url = urlparse(path)
    if url.scheme not in ("", "file"):
        raise UnsupportedTableError(f"data file {path} is not on the local disk")
    return Path(unquote(url.path))


def _matches(log: Path, pattern: re.Pattern[str]) -> Iterator[re.Match[str]]:
    try:
        names = [p.name for p in log.iterdir()]
    except OSError:
        return
    for name in names:
        if match := pattern.match(name):
            yield match


# -- writing --------------------------------------------------------------------------------------------------------
# What offline.arrow.materialize needs and nothing more: create a table, or add files to one, each in a single
# commit, the way Spark's Delta writes them (same protocol, schema string, table properties and statistics), so
# Spark, this reader and the Arrow join read either writer's tables alike.

PROTOCOL = {"minReaderVersion": 1, "minWriterVersion": 2}  # what Delta 4 gives the tables skewless creates
ENGINE_INFO = "skewless-arrow"


def data_file_name() -> str:
    """A new data file's name, unique as Spark's are."""
    import uuid

    return f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"


def write_data_file(root: Path | str, name: str, table: Any, stats_columns: tuple[str, ...]) -> dict[str, Any]:
    """Write ``table`` (a pyarrow Table) as the Parquet file ``name`` under ``root``; returns its ``add`` action.

    The statistics are Spark's for ``stats_columns`` (the table's ``delta.dataSkippingStatsColumns``): row
    count, null counts, and minimum and maximum of integer and timestamp columns, timestamps truncated to the
    millisecond as Spark writes them (its reader allows for that). String and boolean columns get null counts
    only: Spark truncates and pads string bounds, and leaving a bound out is always correct.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    target = Path(root) / name
    pq.write_table(table, target, compression="snappy")
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for column in stats_columns:
        values = table.column(column)
        nulls[column] = values.null_count
        if values.null_count == len(values):
            continue
        if pa.types.is_integer(values.type):
            bounds = pc.min_max(values)
            minimum[column], maximum[column] = bounds["min"].as_py(), bounds["max"].as_py()
        elif pa.types.is_timestamp(values.type):
            bounds = pc.min_max(values.cast(pa.int64()))
            minimum[column] = _stats_time(bounds["min"].as_py())
            maximum[column] = _stats_time(bounds["max"].as_py())
    stats = {"numRecords": table.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls}
    return {
        "add": {
            "path": name,
            "partitionValues": {},
            "size": target.stat().st_size,
            "modificationTime": int(target.stat().st_mtime * 1000),
            "dataChange": True,
            "stats": json.dumps(stats, separators=(",", ":")),
        }
    }


def remove_action(file: DataFile) -> dict[str, Any]:
    """The ``remove`` action taking ``file`` out of the table (its data stays on disk for time travel)."""
    import time

    return {
        "remove": {
            "path": file.name,
            "deletionTimestamp": int(time.time() * 1000),
            "dataChange": True,
            "extendedFileMetadata": True,
            "partitionValues": {},
            "size": file.size,
        }
    }


def new_table_actions(schema: list[tuple[str, str]], configuration: dict[str, str]) -> list[dict[str, Any]]:
    """The ``metaData`` and ``protocol`` actions of a new table of ``schema`` (column name, Delta type name)."""
    import time
    import uuid

    fields = [{"name": name, "type": kind, "nullable": True, "metadata": {}} for name, kind in schema]
    return [
        {
            "metaData": {
                "id": str(uuid.uuid4()),
                "format": {"provider": "parquet", "options": {}},
                "schemaString": json.dumps({"type": "struct", "fields": fields}, separators=(",", ":")),
                "partitionColumns": [],
                "configuration": configuration,
                "createdTime": int(time.time() * 1000),
            }
        },
        {"protocol": dict(PROTOCOL)},
    ]


def commit(root: Path | str, version: int, actions: list[dict[str, Any]], *, operation: str, mode: str | None) -> None:
    """Write commit ``version`` of the table at ``root``: ``commitInfo`` then ``actions``, all or nothing.

    The commit file appears at once and only if no other writer made that version first (a hard link of a
    finished temporary file: put-if-absent on a local disk); otherwise :class:`CommitConflictError`.
    """
    import os
    import time
    import uuid

    log = Path(root) / LOG
    log.mkdir(parents=True, exist_ok=True)
    added = [a["add"] for a in actions if "add" in a]
    rows = sum(json.loads(a["stats"])["numRecords"] for a in added)
    info = {
        "commitInfo": {
            "timestamp": int(time.time() * 1000),
            "operation": operation,
            "operationParameters": {"mode": mode, "partitionBy": "[]"} if mode else {},
            "isolationLevel": "Serializable",
            "isBlindAppend": not any("remove" in a for a in actions),
            "operationMetrics": {
                "numFiles": str(len(added)),
                "numOutputRows": str(rows),
                "numOutputBytes": str(sum(a["size"] for a in added)),
            },
            "engineInfo": ENGINE_INFO,
            "txnId": str(uuid.uuid4()),
        }
    }
    text = "".join(json.dumps(a, separators=(",", ":")) + "\n" for a in (info, *actions))
    temporary = log / f".{version:020d}.json.{uuid.uuid4()}.tmp"
    temporary.write_text(text)
    try:
        os.link(temporary, log / f"{version:020d}.json")
    except FileExistsError as exc:
        raise CommitConflictError(f"version {version} of {root} was committed by another writer") from exc
    finally:
        temporary.unlink()


def _stats_time(micros: int) -> str:
    """A timestamp statistic as Spark writes it: UTC, truncated to the millisecond."""
    from datetime import UTC, datetime, timedelta

    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros - micros % 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
