"""Real servers for tests: redis-server, PostgreSQL and a Spark standalone cluster, started on free loopback
ports and torn down after.

The Debian packages are installed by ``scripts/test.sh`` when missing; a test that finds no binary fails
loudly rather than skipping, because a test that cannot run here is a failure to fix.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True)
class SparkCluster:
    """A running standalone cluster: ``master`` for ``spark.master``, the master's web UI (``<ui>/json/`` lists the
    applications and the cores each got), and the worker's process id (its executors are its children)."""

    master: str
    ui: str
    worker_pid: int

    def applications(self) -> list[dict[str, Any]]:
        """The running and completed applications the master knows, from its JSON status page."""
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=10) as answer:
            status = json.load(answer)
        return [*status.get("activeapps", []), *status.get("completedapps", [])]


@contextlib.contextmanager
def spark_standalone(cores: int = 2, memory_mb: int = 2048) -> Iterator[SparkCluster]:
    """A Spark standalone cluster on loopback: a master and one worker (``cores``, ``memory_mb``), started with
    pyspark's own ``spark-class`` on free ports; yields its :class:`SparkCluster`.

    Both daemons bind to 127.0.0.1 and keep their files (logs, the worker's application folders) in a temporary
    folder removed at the end; the worker is up (registered with the master) before the URL is handed out.
    """
    import pyspark

    from offline.spark.session import ensure_java

    ensure_java()
    spark_home = Path(pyspark.__file__).parent
    spark_class = str(spark_home / "bin" / "spark-class")
    port, ui_port, worker_ui = free_port(), free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="skewless-spark-") as tmp:
        env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": tmp}
        env["SPARK_DAEMON_MEMORY"] = "256m"  # the master and worker daemons only schedule: a small heap each
        daemons: list[subprocess.Popen[bytes]] = []

        def start(name: str, *args: str) -> Path:
            log_path = Path(tmp) / f"{name}.log"
            with open(log_path, "wb") as log:
                command = [spark_class, f"org.apache.spark.deploy.{name}.{name.capitalize()}", "--host", "127.0.0.1"]
                daemons.append(subprocess.Popen([*command, *args], env=env, stdout=log, stderr=subprocess.STDOUT))
            return log_path

        try:
            start("master", "--port", str(port), "--webui-port", str(ui_port))
            wait_for_port(port, timeout=60)
            work = str(Path(tmp) / "work")
            worker_log = start(
                "worker", "--cores", str(cores), "--memory", f"{memory_mb}m", "--webui-port", str(worker_ui),
                "--work-dir", work, master,
            )  # fmt: skip
            _wait_for_text(worker_log, "Successfully registered with master", timeout=60)
            yield SparkCluster(master, f"http://127.0.0.1:{ui_port}", daemons[1].pid)
        finally:
            for daemon in reversed(daemons):
                daemon.terminate()
            for daemon in reversed(daemons):
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(timeout=10)


def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"'{text}' not in {path} after {timeout}s:\n{path.read_text(errors='replace')[-2000:]}")
