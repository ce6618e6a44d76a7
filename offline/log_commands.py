"""``skewless log land|status``: the served-feature log's landing folder and Delta table (:mod:`offline.served_log`).

``skewless serve`` never lands by itself: its workers only write Parquet batches (no JVM, no Delta commit in a
serving process, no commit race between workers). A scheduler runs ``skewless log land`` (``skewless audit``
lands first too), as often as the log should be fresh in the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from features.config import RepoConfig
from offline import served_log


def register(subparsers: Any) -> None:
    """Add ``log`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "log", help="the served-feature log: land the serving workers' batches in its Delta table, or show it"
    )
    p.add_argument(
        "action",
        choices=("land", "status"),
        help="land: append the pending batches and delete days beyond serving.log.retention_days; "
        "status: pending batches, landed rows per day, retention",
    )
    p.add_argument("--repo", default=".", help="feature repository folder (default: here)")
    p.set_defaults(handler=cmd_log)


def cmd_log(args: argparse.Namespace) -> int:
    from features.console import console, table

    config = RepoConfig.load(Path(args.repo).resolve())
    if args.action == "land":
        batches = len(served_log.pending(config))
        with console.status(f"landing {batches} batch(es) of the served-feature log"):
            landed = served_log.land(config)
        console.print(f"landed {landed} row(s) from {batches} batch(es) in {served_log.log_dir(config)}")
        return 0
    state = served_log.status(config)
    pending_rows = sum(state.pending.values())
    console.print(
        table(
            "Served-feature log",
            ["", ""],
            [
                ("table", served_log.log_dir(config)),
                ("table version", "(not landed yet)" if state.version is None else state.version),
                ("pending batches", f"{len(state.pending)} ({pending_rows} rows): 'skewless log land' lands them"),
                ("retention", f"{state.retention_days} days: days before {state.cutoff} are deleted when landing"),
            ],
        )
    )
    if state.landed:
        rows = [
            (day, count, "deleted at next landing" if day < state.cutoff else "") for day, count in state.landed.items()
        ]
        console.print(table("Landed rows per day", ["day", "rows", ""], rows))
    return 0
