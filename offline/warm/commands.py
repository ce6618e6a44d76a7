"""``skewless engine start|stop|restart|status``: the repository's warm engine (see :mod:`offline.warm.server`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from features.config import RepoConfig
from offline.warm import client as daemon


def register(subparsers: Any) -> None:
    """Add ``engine`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "engine", help="keep Spark running between commands (start, stop, restart, status)"
    )
    p.add_argument("action", choices=("start", "stop", "restart", "status"), help="what to do")
    p.add_argument("--repo", default=".", help="feature repository folder (default: here)")
    p.add_argument(
        "--idle-minutes",
        type=float,
        default=daemon.DEFAULT_IDLE_MINUTES,
        help=f"stop after this long without jobs (default: {daemon.DEFAULT_IDLE_MINUTES:.0f})",
    )
    p.set_defaults(handler=cmd_engine)


def cmd_engine(args: argparse.Namespace) -> int:
    from features.console import console, table

    config = RepoConfig.load(Path(args.repo).resolve())
    if args.action in ("stop", "restart"):
        stopped = daemon.stop_engine(config)
        if args.action == "stop":
            console.print("stopped the warm engine" if stopped else "no warm engine was running")
            return 0
    if args.action in ("start", "restart"):
        began = time.monotonic()
        with console.status("starting Spark in the warm engine"):
            started = daemon.start_engine(config, idle_minutes=args.idle_minutes)
        console.print(f"warm engine running (pid {started['pid']}, ready in {time.monotonic() - began:.1f} s)")
        return 0
    info = daemon.engine_info(config)
    if info is None:
        console.print("no warm engine is running; start one with 'skewless engine start'")
        return 1
    current = "yes" if info["fingerprint"] == daemon.fingerprint(config) else "no: restart it"
    uptime = time.time() - float(info["started_at"])
    rows = [
        ("pid", info["pid"]),
        ("up", f"{uptime / 60:.1f} min"),
        ("jobs run", info["jobs"]),
        ("state", _state(info)),
        ("same settings and code as here", current),
    ]
    console.print(table("Warm engine", ["", ""], rows))
    return 0


def _state(info: dict[str, Any]) -> str:
    # An engine started by an older skewless reports "busy" (one job at a time) instead of "running".
    running = int(info["running"]) if "running" in info else int(bool(info.get("busy")))
    if running:
        return f"running {running} job{'s' if running > 1 else ''}"
    return f"idle for {info['idle_seconds']:.0f} s"
