"""The warm engine: one long-lived process per repository that keeps a Spark session running.

Starting Spark costs ~10 s, and a fresh JVM runs its first jobs two to three times slower than later ones
while it compiles Spark's hot code (measured: materializing 2M rows took 53 s in a new session and 18 s in the
same session afterwards). A notebook or a scheduler that runs many jobs in one process pays that once; a CLI
command pays it every time. ``skewless engine start`` runs a process that pays it once for every later command:

    skewless engine start            # Spark starts (and warms up) once, in the background
    skewless materialize             # runs in the engine; this process never starts a JVM
    skewless engine status           # pid, uptime, jobs run, idle time
    skewless engine stop

While an engine of the repository is running, :class:`offline.engine.SparkEngine` sends its jobs there
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
:mod:`multiprocessing.connection`); it stops after ``--idle-minutes`` without jobs (default 60).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import hashlib
import json
import logging
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.errors import SkewlessError
from offline.session import get_spark

if TYPE_CHECKING:
    from features.protocols import OnlineStore, Progress
    from offline.engine import SparkEngine

log = logging.getLogger(__name__)

INFO_FILE = "engine.json"
KEY_FILE = "engine.key"
LOG_FILE = "engine.log"
DEFAULT_IDLE_MINUTES = 60.0
ENV_ENGINE = "SKEWLESS_ENGINE"  # "here": never send jobs to a warm engine
_CODE_PACKAGES = ("features", "offline", "online")
_FORWARDED_LOGGERS = ("features", "offline", "online")
_warned: set[str] = set()
_children: dict[int, subprocess.Popen[bytes]] = {}  # engines this process started, so they can be reaped


class EngineError(SkewlessError, RuntimeError):
    """The warm engine could not be started, reached, or failed in a way that has no skewless error."""


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
        folder = Path(__file__).resolve().parent.parent / package
        for path in sorted(folder.glob("*.py")):
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


def connect(config: RepoConfig) -> EngineClient | None:
    """A connection to the repository's engine if one is running with this process's fingerprint; None (after
    one warning per engine) when the running engine has other settings or code, and when ``$SKEWLESS_ENGINE``
    is ``here`` (this process runs its jobs itself, engine or not)."""
    if os.environ.get(ENV_ENGINE, "").strip().lower() == "here":
        return None
    client = _client(config)
    if client is None:
        return None
    if client.fingerprint != fingerprint(config):
        client.close()
        if client.info_key not in _warned:
            _warned.add(client.info_key)
            log.warning(
                "the warm engine of %s (pid %s) runs other settings or code than this process; running the job "
                "here instead (run 'skewless engine restart' to update it)",
                config.root,
                client.pid,
            )
        return None
    return client


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
        connection = Client(("127.0.0.1", int(info["port"])), authkey=key)
    except (OSError, EOFError, ValueError):  # gone between the check and the call, or another process
        return None
    return EngineClient(connection, info)


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
    command = [sys.executable, "-m", "offline.daemon", str(config.root), "--idle-minutes", str(idle_minutes)]
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
    """Stop the repository's engine (after its running job, if any). False when none was running."""
    client = _client(config)
    if client is None:
        return False
    with client, contextlib.suppress(EngineError):
        client.request("stop")
    deadline = time.monotonic() + timeout
    while _alive(client.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(client.pid):
        os.kill(client.pid, 15)
    return True


def _code_root() -> str:
    """The folder holding the skewless packages, so the engine imports the same code as its starter."""
    return str(Path(__file__).resolve().parent.parent)


# -- the engine's side -----------------------------------------------------------------------------------------
class _RemoteProgress:
    """:class:`features.protocols.Progress` that reports to the caller over the connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def start(self, task: str, total: int | None = None) -> None:
        self._connection.send(("progress", "start", (task, total)))

    def advance(self, task: str, amount: int = 1) -> None:
        self._connection.send(("progress", "advance", (task, amount)))

    def finish(self, task: str) -> None:
        self._connection.send(("progress", "finish", (task,)))


class _ForwardLogs(logging.Handler):
    """Sends the job's log records (skewless's loggers, INFO and up) to the caller."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(logging.INFO)
        self._connection = connection
        self._thread = threading.get_ident()  # the job's: other threads must not write on this connection

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread or not record.name.startswith(_FORWARDED_LOGGERS):
            return
        fields = dict(record.__dict__, msg=record.getMessage(), args=None, exc_info=None, exc_text=None)
        with contextlib.suppress(Exception):
            self._connection.send(("log", fields))


class EngineServer:
    """Serves one repository's jobs on a warm Spark session until stopped or idle."""

    def __init__(self, config: RepoConfig, *, idle_minutes: float) -> None:
        from offline.engine import SparkEngine

        self.config = config
        self.engine: SparkEngine = SparkEngine(config, in_process=True)
        self.idle_seconds = idle_minutes * 60
        self.fingerprint = fingerprint(config)
        self.started_at = time.time()
        self.jobs = 0
        self.running = 0
        self.last_active = time.monotonic()
        self._state_lock = threading.Lock()  # jobs, running, last_active and the online store's creation
        self._stopping = threading.Event()
        self._online: OnlineStore | None = None
        self._address: tuple[str, int] = ("127.0.0.1", 0)
        self._key = b""

    def serve(self) -> None:
        directory = engine_dir(self.config)
        directory.mkdir(parents=True, exist_ok=True)
        self._key = secrets.token_bytes(32)
        key_path = directory / KEY_FILE
        key_path.unlink(missing_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self._key)
        # Start Spark before announcing the engine (callers never wait on a cold JVM), with the JIT of a process
        # that runs job after job; the engine's own ``spark`` then returns this session.
        get_spark(self.config, long_lived=True)
        listener = Listener(("127.0.0.1", 0), authkey=self._key)
        self._address = listener.address
        port = self._address[1]
        info = {"pid": os.getpid(), "port": port, "fingerprint": self.fingerprint, "started_at": self.started_at}
        (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        log.info("warm engine of %s listening on 127.0.0.1:%d", self.config.root, port)
        threading.Thread(target=self._stop_when_idle, daemon=True).start()
        try:
            while not self._stopping.is_set():
                try:
                    connection = listener.accept()
                except (AuthenticationError, OSError, EOFError, ValueError) as exc:  # no key, or it left
                    log.warning("refused a connection: %s", exc)
                    continue
                threading.Thread(target=self._handle, args=(connection,), daemon=True).start()
        finally:
            log.info("stopping")
            listener.close()
            with contextlib.suppress(OSError):
                if json.loads((directory / INFO_FILE).read_text()).get("pid") == os.getpid():
                    (directory / INFO_FILE).unlink()
            if self._online is not None:
                self._online.close()
            self.engine.stop()
            log.info("stopped")

    def _handle(self, connection: Connection) -> None:
        with contextlib.closing(connection):
            while True:
                try:
                    message = connection.recv()
                except (EOFError, OSError):
                    return
                kind = message[0]
                if kind == "status":
                    connection.send(("result", self.status()))
                elif kind == "stop":
                    connection.send(("result", None))
                    self.stop()
                elif kind == "call":
                    self._run(connection, message[1], message[2], message[3])
                else:
                    connection.send(("error", None, f"unknown request {kind!r}"))

    def _run(self, connection: Connection, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._state_lock:
            self.running += 1
        handler = _ForwardLogs(connection)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            if method == "materialize":
                kwargs["online"] = self.online_store() if kwargs["online"] else None
                kwargs["progress"] = _RemoteProgress(connection)
            if method not in ("materialize", "training_dataset", "reproduce"):
                raise EngineError(f"the warm engine has no job {method!r}")
            result = getattr(self.engine, method)(*args, **kwargs)
            reply: tuple[Any, ...] = ("result", result)
        except Exception as exc:
            log.exception("job %s failed", method)
            reply = ("error", _picklable(exc), f"{type(exc).__name__}: {exc}")
        finally:
            root.removeHandler(handler)
            with self._state_lock:
                self.jobs += 1
                self.running -= 1
                self.last_active = time.monotonic()
        with contextlib.suppress(OSError):
            connection.send(reply)

    def online_store(self) -> OnlineStore:
        with self._state_lock:  # concurrent jobs share one store (and its connections)
            if self._online is None:
                from features.plugins import load_plugin

                self._online = load_plugin("skewless.online_stores", self.config.online_store).from_config(self.config)
            return self._online

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "fingerprint": self.fingerprint,
            "started_at": self.started_at,
            "jobs": self.jobs,
            "running": self.running,
            "idle_seconds": 0.0 if self.running else time.monotonic() - self.last_active,
        }

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError, EOFError):  # wake the accept loop so it sees the flag
            Client(self._address, authkey=self._key).close()

    def _stop_when_idle(self) -> None:
        while not self._stopping.wait(min(10.0, max(self.idle_seconds / 2, 0.1))):
            if not self.running and time.monotonic() - self.last_active > self.idle_seconds:
                log.info("idle for %.0f minutes: stopping", self.idle_seconds / 60)
                self.stop()


def _picklable(exc: BaseException) -> bytes | None:
    """``exc`` pickled if it comes back whole (Spark's Java errors do not: they hold a JVM reference)."""
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        return None
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.daemon", description="Run a repository's warm engine.")
    parser.add_argument("repo", help="feature repository folder")
    parser.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> writes every thread's stack to the log
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    EngineServer(RepoConfig.load(args.repo), idle_minutes=args.idle_minutes).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
