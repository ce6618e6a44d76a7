"""Landing files into a Delta table exactly once: the shape shared by pushed rows (:mod:`offline.pushed`) and
the served-feature log (:mod:`offline.served_log`).

Writers (a push, a serving worker) drop files into a landing folder under a hidden temporary name, then rename
them, so a lander never sees half a file and no writer needs a JVM or a lock. A landing reads every pending file,
commits their rows to the table in one commit whose ``userMetadata`` names the files, then removes them. A crash
between the commit and the removal leaves files that a commit already names: the next landing removes them
without landing them twice. Two landings at once: the one that loses Delta's commit race starts again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import CommitConflictError
from offline import delta_rs

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

LANDED_KEY = "skewless.landed"  # in a landing commit's userMetadata: the files it landed
ATTEMPTS = 3  # landings at once: the one that loses the commit race starts again

# Commits ``rows`` on top of table ``version`` (None: the table does not exist yet) with ``user_metadata``.
Commit = Callable[["pa.Table", "int | None", str], None]


def pending(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """The files waiting in ``folder`` whose names end with one of ``suffixes``, oldest first (names start with
    the time they were written); hidden files are still being written."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(suffixes) and not n.startswith("."))


def land_once(
    folder: Path,
    table: Path,
    names: list[str],
    read: Callable[[Path], pa.Table],
    combine: Callable[[list[pa.Table]], pa.Table],
    commit: Commit,
) -> tuple[int, int]:
    """Land the files ``names`` of ``folder`` in ``table``: each read by ``read`` (a file another landing took
    meanwhile is skipped), their rows combined by ``combine`` and committed by ``commit`` in one commit naming
    the files; then every file a commit names is removed. Returns the rows and the files landed.
    :class:`~features.errors.CommitConflictError` when another writer committed first (nothing removed)."""
    version = delta_rs.latest_version(table)
    already = landed_files(table, version)
    tables: list[pa.Table] = []
    landing: list[str] = []
    for name in names:
        if name in already:
            continue
        try:
            tables.append(read(folder / name))
        except FileNotFoundError:  # another landing took it meanwhile: its commit has it
            continue
        landing.append(name)
    rows = combine(tables) if tables else None
    if rows is not None and rows.num_rows:
        commit(rows, version, json.dumps({LANDED_KEY: landing}))
    for name in names:
        if name in already or name in landing:
            (folder / name).unlink(missing_ok=True)
    return (0 if rows is None else rows.num_rows), len(landing)


def with_retries(land: Callable[[], int], what: str) -> int:
    """``land()``, started again when another writer won the commit race, up to :data:`ATTEMPTS` times; the
    last :class:`~features.errors.CommitConflictError` propagates."""
    for attempt in range(ATTEMPTS):
        try:
            return land()
        except CommitConflictError:
            if attempt == ATTEMPTS - 1:
                raise
            log.info("%s: another writer committed first; landing again", what)
    raise AssertionError("unreachable")


def landed_files(table: Path, version: int | None) -> set[str]:
    """The files the newest landing commit at or before ``version`` landed. Every landing removes what it landed
    right after its commit, so only the newest can name pending files (left by a crash just before the removal);
    commits of other writers (runs, which record a cursor instead) are skipped."""
    if version is None:
        return set()
    names = delta_rs.newest_metadata_value(table, version, LANDED_KEY)
    return {str(n) for n in names} if isinstance(names, list) else set()
