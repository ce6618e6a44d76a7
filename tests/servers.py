"""Real servers for tests: redis-server and PostgreSQL, started on free loopback ports and torn down after.

The Debian packages are installed by ``scripts/test.sh`` when missing; a test that finds no binary fails
loudly rather than skipping, because a test that cannot run here is a failure to fix.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def find_binary(name: str, extra_globs: tuple[str, ...] = ()) -> str:
    found = shutil.which(name)
    if found:
        return found
    for pattern in extra_globs:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    raise RuntimeError(f"'{name}' is not installed; run scripts/test.sh, which installs it")


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A real redis-server on a free port; yields its URL."""
    binary = find_binary("redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="skewless-redis-") as data_dir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                data_dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL cluster (initdb into a temp dir) on a free port; yields a SQLAlchemy URL."""
    pg_globs = ("/usr/lib/postgresql/*/bin/{}",)
    initdb = find_binary("initdb", tuple(g.format("initdb") for g in pg_globs))
    pg_ctl = find_binary("pg_ctl", tuple(g.format("pg_ctl") for g in pg_globs))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="skewless-pg-") as tmp:
        data = Path(tmp) / "data"
        run_as = _postgres_user_prefix(tmp)
        subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "skewless", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*run_as, pg_ctl, "-D", str(data), "-o", options, "-l", str(Path(tmp) / "log"), "-w", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield f"postgresql://skewless@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


def _postgres_user_prefix(tmp: str) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the 'postgres' user (created by the Debian package)."""
    if os.geteuid() != 0:
        return []
    os.chmod(tmp, 0o777)
    return ["runuser", "-u", "postgres", "--"]


def fresh_database(postgres_url: str, name: str) -> str:
    """Create the database ``name`` on the server of ``postgres_url``; returns its SQLAlchemy URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
