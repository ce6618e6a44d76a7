"""The ``skewless serve`` command (plugged into the CLI through the ``skewless.commands`` entry point)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from features.config import RepoConfig
from serving_api.app import ENV_OPENTELEMETRY, ENV_REPO
from serving_api.metrics import ENV_MULTIPROC


def register_serve(subparsers: Any) -> None:
    """Add ``serve`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="serve online features over HTTP (POST /v1/features, GET /health, /docs, the catalog at /ui/)"
    )
    p.add_argument("--repo", default=".", help="feature repository folder (default: here)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=6566, help="port to listen on (default: 6566)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument(
        "--server",
        choices=SERVERS,
        default="uvicorn",
        help="the ASGI server: uvicorn (default), or granian (written in Rust; pip install 'skewless[granian]')",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs latency)")
    p.add_argument(
        "--opentelemetry",
        action="store_true",
        help="FastAPI's OpenTelemetry spans and metrics for every request, through the providers configured in "
        "the process (e.g. by opentelemetry-instrument); off by default: it costs latency",
    )
    add_exposure_flags(p)
    p.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM; the chain, leaf first)")
    p.add_argument("--ssl-keyfile", help="the private key of --ssl-certfile (PEM)")
    p.set_defaults(handler=cmd_serve)


def add_exposure_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen beyond loopback (--host) although no serving.tokens are configured: anyone who reaches the "
        "port can read every feature (and push)",
    )


def check_exposure(host: str, authenticated: bool, insecure_no_auth: bool) -> None:
    """Refuse to listen beyond loopback without authentication, unless told ``--insecure-no-auth``."""
    if authenticated or insecure_no_auth or is_loopback(host):
        return
    raise SystemExit(
        f"skewless: refusing to listen on {host} without authentication: anyone who reaches it could read every "
        "feature. Add a token under 'serving: tokens:' in skewless.yaml ('skewless token create' prints one), "
        "or listen on 127.0.0.1, or pass --insecure-no-auth to do it anyway"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


SERVERS = ("uvicorn", "granian")
APP_FACTORY = "serving_api.app:app_from_env"


def cmd_serve(args: argparse.Namespace) -> int:
    from serving_api.auth import Authenticator

    repo = Path(args.repo).resolve()
    # A missing or invalid skewless.yaml (or token entry) fails here, with its message, not in a worker.
    repo_config = RepoConfig.load(repo)
    authenticated = Authenticator(repo_config.resolved_serving_tokens()).enabled
    check_exposure(args.host, authenticated, args.insecure_no_auth)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise SystemExit("skewless serve: give both --ssl-certfile and --ssl-keyfile, or neither")
    if not is_loopback(args.host) and not args.ssl_certfile:
        print(
            f"skewless serve: listening on {args.host} without TLS: tokens and features cross the network in clear "
            "text unless a proxy in front terminates TLS (--ssl-certfile/--ssl-keyfile serve HTTPS)",
            file=sys.stderr,
        )
    os.environ[ENV_REPO] = str(repo)
    os.environ[ENV_OPENTELEMETRY] = "1" if args.opentelemetry else "0"
    with metrics_folder(repo_config.metrics and args.workers > 1):
        if args.server == "granian":
            return serve_granian(args)
        return serve_uvicorn(args)


@contextlib.contextmanager
def metrics_folder(several_workers: bool) -> Iterator[None]:
    """With several workers, a fresh folder for their metrics (``prometheus_client``'s multiprocess mode, see
    :mod:`serving_api.metrics`), named in the environment before any worker starts and removed at exit: a folder
    left from an earlier run would add its counts to this one's. One worker keeps its metrics in memory."""
    os.environ.pop(ENV_MULTIPROC, None)  # one inherited from a caller's shell would mix runs
    if not several_workers:
        yield
        return
    folder = tempfile.mkdtemp(prefix="skewless-metrics-")
    os.environ[ENV_MULTIPROC] = folder
    try:
        yield
    finally:
        os.environ.pop(ENV_MULTIPROC, None)
        shutil.rmtree(folder, ignore_errors=True)


def serve_uvicorn(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from serving_api.http_protocol import OneWriteHttpToolsProtocol

    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        http=OneWriteHttpToolsProtocol,  # head and body of an answer in one write
        ws="none",  # no websocket route; and OneWriteHttpToolsProtocol holds writes only HTTP makes
        workers=args.workers,
        log_level="info",
        access_log=args.access_log,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    listener = listen_socket(args.host, args.port)
    try:
        if args.workers > 1:
            Multiprocess(config, sockets=[listener]).run()
            return 0
        server = uvicorn.Server(config)
        server.run(sockets=[listener])
        return 0 if server.started else 3  # uvicorn's exit code for an app that failed to start
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()


def serve_granian(args: argparse.Namespace) -> int:
    """The app under granian, an ASGI server written in Rust (HTTP parsing and sockets in Rust, the app in each
    worker's uvloop). It binds its own socket: the address is checked here first, so a taken port gets the same
    message as with uvicorn. No Nagle delay on keep-alive answers (measured: a one-at-a-time lookup takes
    ~0.4 ms, where a delayed ACK would add ~40 ms; see :func:`listen_socket`)."""
    try:
        from granian.constants import Interfaces, Loops
        from granian.server import Server
    except ImportError:
        raise SystemExit(
            "skewless serve --server granian: granian is not installed; pip install 'skewless[granian]'"
        ) from None
    listen_socket(args.host, args.port).close()
    server = Server(
        APP_FACTORY,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        loop=Loops.uvloop,
        factory=True,
        websockets=False,
        log_access=args.access_log,
        ssl_cert=Path(args.ssl_certfile) if args.ssl_certfile else None,
        ssl_key=Path(args.ssl_keyfile) if args.ssl_keyfile else None,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve()
    return 0


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket whose accepted connections get ``TCP_NODELAY``.

    uvicorn's own pre-bound socket (used with ``--workers N``) is created with protocol 0; accepted sockets
    inherit it and asyncio sets ``TCP_NODELAY`` only on sockets that say ``IPPROTO_TCP``, so Nagle's algorithm
    stayed on and every keep-alive request past the first waited ~40 ms for a delayed ACK (uvicorn#3149).
    Binding the socket here, with the protocol spelled out, gives every worker the fast path.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise SystemExit(f"skewless serve: cannot listen on {host}:{port}: {error.strerror}") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


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
