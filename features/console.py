"""Terminal output for the CLI: tables and progress bars (rich)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# soft_wrap: messages keep their lines (paths, file:line) whatever the terminal width.
# Piped output (CI logs, files) gets a generous fixed width instead of rich's 80 columns.
console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row))
    return out


class RichProgress:
    """The :class:`features.protocols.Progress` protocol drawn as rich progress bars."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def start(self, task: str, total: int | None = None) -> None:
        if task in self._tasks:
            self._progress.update(self._tasks[task], total=total)
        else:
            self._tasks[task] = self._progress.add_task(task, total=total)

    def advance(self, task: str, amount: int = 1) -> None:
        if task not in self._tasks:
            self.start(task)
        self._progress.advance(self._tasks[task], amount)

    def finish(self, task: str) -> None:
        if task in self._tasks:
            t = self._progress.tasks[self._tasks[task]]
            self._progress.update(self._tasks[task], total=t.completed or 1, completed=t.completed or 1)


@contextmanager
def progress_bars() -> Iterator[RichProgress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),  # an ETA for the phases whose total is known (keys to publish)
        console=console,
        transient=False,
    ) as progress:
        yield RichProgress(progress)
