"""Real servers for tests: redis-server (alone, or as a Redis Cluster), PostgreSQL and a Spark standalone cluster,
started on free loopback ports and torn down after.

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


@contextlib.contextmanager
def redis_cluster(primaries: int = 3, replicas_each: int = 1) -> Iterator[RedisCluster]:
    """A real Redis Cluster on loopback: ``primaries`` primaries with ``replicas_each`` replicas each, every node a
    Debian ``redis-server`` with ``cluster-enabled yes``, joined by ``redis-cli --cluster create``."""
    server = find_binary("redis-server")
    cli = find_binary("redis-cli")
    count = primaries * (1 + replicas_each)
    ports = [free_port() for _ in range(count)]
    with tempfile.TemporaryDirectory(prefix="skewless-cluster-") as tmp:
        cluster = RedisCluster(server, Path(tmp), ports)
        try:
            for port in ports:
                cluster.start(port)
            addresses = [f"127.0.0.1:{p}" for p in ports]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-yes", "--cluster-replicas", str(replicas_each)],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
            )
            cluster.wait_until_ok()
            yield cluster
        finally:
            cluster.stop_all()


class RedisCluster:
    """The processes of a test cluster: start, stop (a primary, to see its replica take over) and health."""

    # How long a silent primary stays primary before its replica is promoted: long enough that a node starved of CPU
    # on a busy test machine is not failed over by mistake, short enough for a failover test.
    NODE_TIMEOUT_MS = 3000

    def __init__(self, binary: str, data: Path, ports: list[int]) -> None:
        self.binary = binary
        self.data = data
        self.ports = ports
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The store's URL: every node as a seed (``redis+cluster://h:p,h:p,...``)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, port: int) -> None:
        # The cluster bus listens on a port of its own (by default port + 10000, which may be taken or past 65535).
        node_dir = self.data / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                *(self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir)),
                *(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    str(free_port()),
                ),
                *("--cluster-node-timeout", str(self.NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no"),
                *("--repl-diskless-sync-delay", "0"),  # replicas in sync at once, not 5 s later
                # The setting docs/ARCHITECTURE.md recommends: a node keeps serving its slots while another's are
                # down (Redis's default refuses every command then, CLUSTERDOWN, until the failover).
                *("--cluster-require-full-coverage", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port)

    def stop(self, port: int) -> None:
        """Kill one node (SIGKILL: no goodbye to the cluster, as a crashed machine)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for port in list(self.procs):
            self.stop(port)

    def primary_of(self, key: str) -> int:
        """The port of the primary that holds ``key``'s slot now."""
        import redis

        with redis.Redis(port=self.running()[0]) as node:
            slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        raise RuntimeError(f"no primary holds slot {slot}")

    def running(self) -> list[int]:
        return list(self.procs)

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok (all slots served) and every replica is in sync with its
        primary (a replica that never synced is not promoted when its primary dies)."""
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = set()
            for port in self.running():
                with redis.Redis(port=port, socket_timeout=1) as node:
                    info = node.execute_command("CLUSTER", "INFO")
                    info = info.decode() if isinstance(info, bytes) else str(info)
                    states.add("cluster_state:ok" in info)
                    replication = node.info("replication")
                    states.add(replication["role"] == "master" or replication.get("master_link_status") == "up")
            if states == {True}:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster on ports {self.ports} is not ok after {timeout}s")


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
