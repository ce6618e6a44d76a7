"""The ``skewless serve`` command (plugged into the CLI through the ``skewless.commands`` entry point)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from features.config import RepoConfig
from serving_api.app import ENV_REPO


def register_serve(subparsers: Any) -> None:
    """Add ``serve`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="serve online features over HTTP (POST /v1/features, GET /health, /docs)"
    )
    p.add_argument("--repo", default=".", help="feature repository folder (default: here)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=6566, help="port to listen on (default: 6566)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    repo = Path(args.repo).resolve()
    RepoConfig.load(repo)  # a missing or invalid skewless.yaml fails here, with its message, not in a worker
    os.environ[ENV_REPO] = str(repo)
    uvicorn.run(
        "serving_api.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
    )
    return 0


def register_stop(subparsers: Any) -> None:
    """Add ``stop`` to the CLI's subcommands: stop the repository's embedded online server."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "stop", help="stop the embedded online server of a repository (its data is kept)"
    )
    p.add_argument("--repo", default=".", help="feature repository folder (default: here)")
    p.set_defaults(handler=cmd_stop)


def cmd_stop(args: argparse.Namespace) -> int:
    from features.console import console
    from online.embedded import server_info, stop_embedded_server

    state_dir = RepoConfig.load(Path(args.repo).resolve()).state_dir()
    info = server_info(state_dir)
    stop_embedded_server(state_dir)
    console.print("stopped the embedded online server" if info else "no embedded online server was running")
    return 0
