"""The warm engine: one long-lived process per repository that keeps a Spark session running and runs the jobs
callers send it (:class:`offline.warm.client.WarmEngine`) on :class:`offline.spark.engine.SparkEngine`.

Run as ``python -m offline.warm.server REPO``; ``skewless engine start`` does that (see :mod:`offline.warm.client`).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import pickle
import secrets
import signal
import socket
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from offline.runs import run_and_record
from offline.spark.engine import SparkEngine
from offline.spark.session import get_spark
from offline.warm.client import (
    DEFAULT_IDLE_MINUTES,
    HANDSHAKE_SECONDS,
    INFO_FILE,
    KEY_FILE,
    EngineError,
    authenticate,
    engine_dir,
    fingerprint,
)

if TYPE_CHECKING:
    from features.protocols import OnlineStore

log = logging.getLogger(__name__)
_FORWARDED_LOGGERS = ("features", "offline", "online")


# -- the engine's side -----------------------------------------------------------------------------------------
class _Caller:
    """The connection to a job's caller, for what the job reports while it runs (progress, log records). A
    caller that went away (Ctrl-C) must not fail the job halfway: what it can no longer receive is dropped, the
    job runs to its end and is recorded in the registry here (:func:`offline.runs.run_and_record`)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._gone = False

    def send(self, message: tuple[Any, ...]) -> None:
        if self._gone:
            return
        try:
            self._connection.send(message)
        except (OSError, ValueError):  # broken pipe, reset, closed
            self._gone = True
            log.warning("the caller went away during its job; the job goes on and is recorded here")


class _RemoteProgress:
    """:class:`features.protocols.Progress` that reports to the caller over the connection."""

    def __init__(self, caller: _Caller) -> None:
        self._caller = caller

    def start(self, task: str, total: int | None = None) -> None:
        self._caller.send(("progress", "start", (task, total)))

    def advance(self, task: str, amount: int = 1) -> None:
        self._caller.send(("progress", "advance", (task, amount)))

    def finish(self, task: str) -> None:
        self._caller.send(("progress", "finish", (task,)))


class _ForwardLogs(logging.Handler):
    """Sends the job's log records (skewless's loggers, INFO and up) to the caller."""

    def __init__(self, caller: _Caller) -> None:
        super().__init__(logging.INFO)
        self._caller = caller
        self._thread = threading.get_ident()  # the job's: other threads must not write on this connection

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread or not record.name.startswith(_FORWARDED_LOGGERS):
            return
        fields = dict(record.__dict__, msg=record.getMessage(), args=None, exc_info=None, exc_text=None)
        with contextlib.suppress(Exception):  # a record that does not pickle is not worth failing the job
            self._caller.send(("log", fields))


class EngineServer:
    """Serves one repository's jobs on a warm Spark session until stopped or idle."""

    def __init__(self, config: RepoConfig, *, idle_minutes: float) -> None:
        self.config = config
        self.engine = SparkEngine(config)
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
        # No authkey here: Listener would run the key check in accept(), where one silent connection blocks every
        # other; each connection's own thread checks it, with a deadline (see _serve_connection).
        listener = Listener(("127.0.0.1", 0))
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
                except OSError as exc:
                    log.warning("could not accept a connection: %s", exc)
                    continue
                if self._stopping.is_set():  # stop()'s wake-up call
                    connection.close()
                    break
                threading.Thread(target=self._serve_connection, args=(connection,), daemon=True).start()
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

    def _serve_connection(self, connection: Connection) -> None:
        try:
            authenticate(connection, self._key, engine=True)
        except (AuthenticationError, OSError, EOFError, ValueError) as exc:  # no key, too slow, or it left
            log.warning("refused a connection (no key within %.0f s, or a wrong one): %r", HANDSHAKE_SECONDS, exc)
            connection.close()
            return
        self._handle(connection)

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
        caller = _Caller(connection)
        handler = _ForwardLogs(caller)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            if method == "materialize":
                (job,) = args
                online = self.online_store() if kwargs["online"] else None
                # Recorded here, not by the caller: a caller that goes away (Ctrl-C) leaves the run to finish
                # here, and its record with it.
                result: Any = run_and_record(self.config, job, self.engine, online, _RemoteProgress(caller))
            elif method == "training_set":
                (job,) = args
                result = self.engine.training_set(job)
            else:
                raise EngineError(f"the warm engine has no job {method!r}; it runs materialize and training_set")
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
        with contextlib.suppress(OSError):  # wake the accept loop so it sees the flag
            socket.create_connection(self._address, timeout=5).close()

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
    parser = argparse.ArgumentParser(
        prog="python -m offline.warm.server", description="Run a repository's warm engine."
    )
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
