"""The registry a process records its runs in (offline/runs.py) outlives one repository's registry file: a warm
engine keeps it across jobs, and a SQLite file deleted and created again meanwhile (a repository started over)
must be opened again, or every run fails with "attempt to write a readonly database"."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.registry import Registry, RunRecord
from offline import runs


@dataclass(frozen=True)
class _Config:
    """What ``offline.runs`` asks of a repository's configuration here: its registry's URL."""

    url: str

    def resolved_registry_url(self) -> str:
        return self.url


def _run(view: str) -> RunRecord:
    return RunRecord(view, "fp", 1, None, None, 10, 10, 0, 5, datetime.now(UTC))


def _recorded_views(db: Path) -> list[str]:
    """The views of the runs in the file, read with sqlite3 (not through the registry under test)."""
    with sqlite3.connect(db) as connection:
        return [row[0] for row in connection.execute('SELECT "view" FROM skewless_materialization_runs')]


def test_a_registry_file_created_again_is_opened_again(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    config = _Config(f"sqlite:///{db}")
    runs._registry(config).record_run(_run("before"))  # type: ignore[arg-type]
    assert _recorded_views(db) == ["before"]

    db.unlink()  # the repository starts over: a new registry file at the same path
    Registry(config.url).close()
    runs._registry(config).record_run(_run("after"))  # type: ignore[arg-type]
    assert _recorded_views(db) == ["after"]

    # The same file still: the same registry (one engine, one pool per URL), which keeps recording.
    same = runs._registry(config)  # type: ignore[arg-type]
    assert same is runs._registry(config)  # type: ignore[arg-type]
    same.record_run(_run("again"))
    assert _recorded_views(db) == ["after", "again"]
