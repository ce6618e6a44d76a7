"""The caller's side of the warm engine (:mod:`offline.warm.server`): finding it, starting and stopping it, and
:class:`WarmEngine`, the :class:`offline.jobs.Engine` that sends jobs there.

The warm engine: one long-lived process per repository that keeps a Spark session running.

Starting Spark costs ~10 s, and a fresh JVM runs its first jobs two to three times slower than later ones
while it compiles Spark's hot code (measured: materializing 2M rows took 53 s in a new session and 18 s in the
same session afterwards). A notebook or a scheduler that runs many jobs in one process pays that once; a CLI
command pays it every time. ``skewless engine start`` runs a process that pays it once for every later command:

    skewless engine start            # Spark starts (and warms up) once, in the background
    skewless materialize             # runs in the engine; this process never starts a JVM
    skewless engine status           # pid, uptime, jobs run, idle time
    skewless engine stop

While an engine of the repository is running, :class:`offline.spark.engine.SparkEngine` sends its jobs there
(materialize, training sets from pandas or Arrow rows, reproduce) and relays the engine's progress and log
records to the caller; with no engine it runs them in its own process, as before. Training sets whose entity
rows are a Spark DataFrame, or that are asked for as a Spark DataFrame, always run in the caller's process:
they belong to the caller's session. Each connection's job runs in its own thread on the shared session, so
jobs run concurrently (``FeatureStore.materialize`` sends ``offline.concurrent_views`` views at once); Spark
schedules their tasks first in, first out.

The engine only takes jobs from a caller with the same settings and code: ``skewless.yaml``, the Python
interpreter, and the files of the skewless packages (path, size, modification time) are hashed into a
*fingerprint* the engine publishes. A caller whose fingerprint differs runs the job itself and warns once;
``skewless engine restart`` picks up the change. ``SKEWLESS_ENGINE=here`` makes a process run its jobs
itself even while an engine runs. The engine listens on 127.0.0.1 (a free port) and accepts
only callers that know the key in ``<state_dir>/engine/engine.key`` (mode 0600, HMAC challenge of
:mod:`multiprocessing.connection`); it stops after ``--idle-minutes`` without jobs (default 60). Both sides
bound the handshake (:func:`authenticate`, :data:`HANDSHAKE_SECONDS`) and the engine runs it off its accept
thread, so a connection that never speaks is dropped and never holds up anyone else; control requests
(``status``, ``stop``) wait at most :data:`CONTROL_SECONDS` for their answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.errors import EngineError
from offline.datasets import is_spark
from offline.jobs import Job, JoinedSet, Materialization, TrainingSet

if TYPE_CHECKING:
    from features.protocols import MaterializationResult, OnlineStore, Progress

log = logging.getLogger(__name__)

INFO_FILE = "engine.json"
KEY_FILE = "engine.key"
LOG_FILE = "engine.log"
DEFAULT_IDLE_MINUTES = 60.0
HANDSHAKE_SECONDS = 5.0  # connecting and proving the key, either side: a stuck peer is dropped after this
CONTROL_SECONDS = 30.0  # the answer to status or stop (the engine answers them at once, even while jobs run)
ENV_ENGINE = "SKEWLESS_ENGINE"  # "here": never send jobs to a warm engine
_CODE_PACKAGES = ("features", "offline", "online")
_warned: set[str] = set()
_children: dict[int, subprocess.Popen[bytes]] = {}  # engines this process started, so they can be reaped


def engine_dir(config: RepoConfig) -> Path:
    return config.state_dir() / "engine"


def fingerprint(config: RepoConfig) -> str:
    """What an engine's jobs depend on besides their arguments: the repository settings, the interpreter, and
    the skewless code (each file's path, size and modification time)."""
    digest = hashlib.sha256()
    digest.update(repr(config).encode())
    digest.update(repr(sorted(config.resolved_spark_conf().items())).encode())
    digest.update(config.resolved_online_url().encode())
    digest.update(sys.executable.encode())
    for package in _CODE_PACKAGES:
        folder = Path(_code_root()) / package
        for path in sorted(folder.rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


# -- the caller's side -----------------------------------------------------------------------------------------
def engine_info(config: RepoConfig) -> dict[str, Any] | None:
    """``{"pid", "port", "fingerprint", "started_at", "jobs", "running", "idle_seconds"}`` of the repository's
    engine if one is running and answering, else None."""
    client = _client(config)
    if client is None:
        return None
    with client:
        answer: dict[str, Any] = client.request("status")
        return answer


def _client(config: RepoConfig) -> EngineClient | None:
    directory = engine_dir(config)
    try:
        info = json.loads((directory / INFO_FILE).read_text())
        key = (directory / KEY_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    if not _alive(int(info.get("pid", 0))):
        return None
    try:
        connection = connect(int(info["port"]), key)
    except (OSError, EOFError, ValueError):  # gone between the check and the call, stuck, or another process
        return None
    return EngineClient(connection, info)


def connect(port: int, key: bytes, *, seconds: float = HANDSHAKE_SECONDS) -> Connection:
    """A connection to the engine on ``port``, authenticated with ``key`` within ``seconds`` (connecting
    included). :class:`multiprocessing.AuthenticationError` when the other side does not know the key; ``OSError``
    or ``EOFError`` when it does not answer in time."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    sock.setblocking(True)  # Connection reads the descriptor directly; the deadline below bounds the handshake
    connection = Connection(sock.detach())
    try:
        authenticate(connection, key, engine=False, seconds=seconds)
    except BaseException:
        connection.close()
        raise
    return connection


def authenticate(connection: Connection, key: bytes, *, engine: bool, seconds: float = HANDSHAKE_SECONDS) -> None:
    """The mutual HMAC challenge of :mod:`multiprocessing.connection` (what ``Listener(authkey=)`` and
    ``Client(authkey=)`` do), with a deadline: a peer that has not finished it within ``seconds`` has its
    socket shut down, so the waiting side fails (``EOFError``/``OSError``) instead of waiting forever."""
    # The timer holds its own descriptor of the socket: it never shuts down a later socket given the same number.
    watched = socket.socket(fileno=os.dup(connection.fileno()))
    timer = threading.Timer(seconds, _shut_down, (watched,))
    timer.daemon = True
    timer.start()
    try:
        if engine:
            deliver_challenge(connection, key)
            answer_challenge(connection, key)
        else:
            answer_challenge(connection, key)
            deliver_challenge(connection, key)
    finally:
        timer.cancel()
        watched.close()


def _shut_down(sock: socket.socket) -> None:
    """Wake whoever waits on ``sock`` (reads return end-of-file); closing it is left to its owner."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class EngineClient:
    """One connection to a running engine; :meth:`call` runs an engine method there."""

    def __init__(self, connection: Connection, info: dict[str, Any]) -> None:
        self._connection = connection
        self.pid = int(info["pid"])
        self.fingerprint = str(info.get("fingerprint", ""))
        self.info_key = f"{self.pid}:{info.get('started_at')}"

    def request(self, kind: str) -> Any:
        """A control request (``status``, ``stop``) answered at once, even while a job runs."""
        self._connection.send((kind,))
        if not self._connection.poll(CONTROL_SECONDS):
            raise EngineError(
                f"the warm engine (pid {self.pid}) did not answer '{kind}' within {CONTROL_SECONDS:.0f} s; see its "
                f"log in .skewless/engine/{LOG_FILE}"
            )
        return self._receive(None)

    def call(self, method: str, *args: Any, progress: Progress | None = None, **kwargs: Any) -> Any:
        """``SparkEngine.<method>(*args, **kwargs)`` in the engine, with its progress reported to
        ``progress`` and its log records re-emitted here; its exception raised here."""
        self._connection.send(("call", method, args, kwargs))
        return self._receive(progress)

    def _receive(self, progress: Progress | None) -> Any:
        while True:
            try:
                message = self._connection.recv()
            except (EOFError, OSError) as exc:
                raise EngineError(
                    f"the warm engine (pid {self.pid}) went away during the job; see its log in "
                    f".skewless/engine/{LOG_FILE}"
                ) from exc
            kind = message[0]
            if kind == "result":
                return message[1]
            if kind == "error":
                raise _rebuild_error(message[1], message[2])
            if kind == "progress" and progress is not None:
                getattr(progress, message[1])(*message[2])
            elif kind == "log":
                record = logging.makeLogRecord(message[1])
                logger = logging.getLogger(record.name)
                if logger.isEnabledFor(record.levelno):
                    logger.handle(record)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rebuild_error(pickled: bytes | None, summary: str) -> BaseException:
    if pickled is not None:
        with contextlib.suppress(Exception):
            error: BaseException = pickle.loads(pickled)
            return error
    return EngineError(f"the job failed in the warm engine: {summary}")


def _alive(pid: int) -> bool:
    if pid in _children:  # our child: poll() reaps it, where kill(pid, 0) would see the zombie as alive
        return _children[pid].poll() is None
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not our engine
        return False
    return True


# -- starting and stopping -------------------------------------------------------------------------------------
def start_engine(
    config: RepoConfig, *, idle_minutes: float = DEFAULT_IDLE_MINUTES, timeout: float = 600.0
) -> dict[str, Any]:
    """Start the repository's engine in the background and wait until it takes jobs; return its info. An
    engine already running with this fingerprint is kept; one with another fingerprint is restarted."""
    info = engine_info(config)
    if info is not None and info["fingerprint"] == fingerprint(config):
        return info
    if info is not None:
        stop_engine(config)
    directory = engine_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INFO_FILE).unlink(missing_ok=True)
    python_path = os.pathsep.join(filter(None, [_code_root(), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "offline.warm.server", str(config.root), "--idle-minutes", str(idle_minutes)]
    with open(directory / LOG_FILE, "ab") as log_file:
        # A new session: Ctrl-C in the command that started it does not stop the engine.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=directory,  # not the repository: its folders must not shadow skewless's packages
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": python_path},
        )
    _children[process.pid] = process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise EngineError(f"the warm engine exited with code {code} while starting; see {directory / LOG_FILE}")
        info = engine_info(config)
        if info is not None:
            return info
        time.sleep(0.2)
    process.terminate()
    raise EngineError(f"the warm engine did not start within {timeout:.0f} s; see {directory / LOG_FILE}")


def stop_engine(config: RepoConfig, *, timeout: float = 60.0) -> bool:
    """Stop the repository's engine (after its running job, if any). False when none was running. An engine whose
    process runs but that does not answer (stuck) is terminated."""
    client = _client(config)
    if client is None:
        info = _running_info(config)
        if info is None:
            return False
        pid = int(info["pid"])
    else:
        pid = client.pid
        with client, contextlib.suppress(EngineError):
            client.request("stop")
    deadline = time.monotonic() + (timeout if client is not None else 0)
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, 15)
    return True


def teardown(config: RepoConfig) -> str | None:
    """``skewless teardown``'s part here: stop the repository's warm engine and delete its folder (key, log).
    None when there was neither."""
    directory = engine_dir(config)
    if not directory.exists():
        return None
    stopped = stop_engine(config)
    shutil.rmtree(directory)
    return ("stopped the warm engine and " if stopped else "") + f"deleted its folder {directory}"


def _code_root() -> str:
    """The folder holding the skewless packages, so the engine imports the same code as its starter."""
    return str(Path(__file__).resolve().parents[2])


class WarmEngine:
    """:class:`offline.jobs.Engine` that runs jobs in the repository's warm engine, while one runs with this
    process's settings and code. Its jobs run there on :class:`offline.spark.engine.SparkEngine`; progress and
    log records come back here, and so do errors, with their type."""

    name = "warm"
    remote = True  # the engine records the materializations it runs (offline.warm.server)

    def __init__(self, config: RepoConfig) -> None:
        self.config = config

    def refusal(self, job: Job) -> str | None:
        if os.environ.get(ENV_ENGINE, "").strip().lower() == "here":
            return f"${ENV_ENGINE} is 'here'"
        if isinstance(job, TrainingSet) and (job.manifest.output_format == "spark" or is_spark(job.entities)):
            return "Spark DataFrames in or out belong to this process's session"
        info = _running_info(self.config)
        if info is None:
            return "no warm engine is running ('skewless engine start' starts one)"
        if info.get("fingerprint") != fingerprint(self.config):
            key = f"{info.get('pid')}:{info.get('started_at')}"
            if key not in _warned:
                _warned.add(key)
                log.warning(
                    "the warm engine of %s (pid %s) runs other settings or code than this process; running the "
                    "job here instead (run 'skewless engine restart' to update it)",
                    self.config.root,
                    info.get("pid"),
                )
            return "the warm engine runs other settings or code ('skewless engine restart' updates it)"
        return None

    def materialize(
        self, job: Materialization, online: OnlineStore | None, progress: Progress | None
    ) -> MaterializationResult:
        # The engine publishes to the repository's online store, opened there from the same settings.
        with self._connect() as client:
            try:
                result: MaterializationResult = client.call(
                    "materialize", job, online=online is not None, progress=progress
                )
            except KeyboardInterrupt:
                # The engine does not stop a job halfway (its Delta commit and online publication are atomic
                # steps): it finishes the run and records it in the registry.
                log.warning(
                    "interrupted: the warm engine (pid %s) finishes %s, which it had started, and records it in the "
                    "registry ('skewless runs' shows it)",
                    client.pid,
                    job,
                )
                raise
            return result

    def training_set(self, job: TrainingSet) -> JoinedSet:
        with self._connect() as client:
            joined: JoinedSet = client.call("training_set", job)
            return joined

    def stop(self) -> None:
        """Nothing to release here: the warm engine stops with ``skewless engine stop`` or when idle."""

    def _connect(self) -> EngineClient:
        client = _client(self.config)
        if client is None:
            raise EngineError(
                f"the warm engine of {self.config.root} stopped between choosing it and sending the job; run the "
                "command again"
            )
        return client


def _running_info(config: RepoConfig) -> dict[str, Any] | None:
    """The info file of the repository's engine when its process is alive (no connection is made)."""
    try:
        info: dict[str, Any] = json.loads((engine_dir(config) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if _alive(int(info.get("pid", 0))) else None
