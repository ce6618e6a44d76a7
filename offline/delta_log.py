"""A Delta table's snapshot read from its log in plain Python: no JVM, no Spark job.

The point-in-time join in Arrow (:mod:`offline.arrow_join`) reads feature tables this way. It covers the tables
skewless writes (reader protocol 1: no column mapping, no deletion vectors, no partitions, files on the local
disk) and says so, through :class:`UnsupportedTable`, for anything else, so the caller can hand the table to
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

LOG = "_delta_log"
_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet$")


class UnsupportedTable(Exception):
    """The table (or the asked version) needs a Delta reader feature this module does not implement."""


@dataclass(frozen=True, slots=True)
class DataFile:
    """One Parquet file of a snapshot: where it is, and its size in bytes."""

    path: Path
    size: int


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
    """The table at ``version``. Raises :class:`UnsupportedTable` when this reader cannot read it faithfully,
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
        raise UnsupportedTable(f"no protocol or metadata up to version {version} of {root}")
    if int(protocol.get("minReaderVersion", 1)) > 1:
        raise UnsupportedTable(f"{root} needs Delta reader version {protocol['minReaderVersion']} (this reads 1)")
    if metadata.get("partitionColumns"):
        raise UnsupportedTable(f"{root} is partitioned by {metadata['partitionColumns']}")
    schema = json.loads(metadata["schemaString"])
    columns = tuple((field["name"], str(field["type"])) for field in schema["fields"])
    data = tuple(DataFile(_local_file(root, p), int(a.get("size") or 0)) for p, a in sorted(files.items()))
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
            raise UnsupportedTable(f"file {add['path']} has a deletion vector")
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
        raise UnsupportedTable(f"{log} has a V2 checkpoint")
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
        raise UnsupportedTable(f"data file {path} is not on the local disk")
    return Path(unquote(url.path))


def _matches(log: Path, pattern: re.Pattern[str]) -> Iterator[re.Match[str]]:
    try:
        names = [p.name for p in log.iterdir()]
    except OSError:
        return
    for name in names:
        if match := pattern.match(name):
            yield match
