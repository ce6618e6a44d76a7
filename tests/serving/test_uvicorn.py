"""``skewless serve`` for real: uvicorn in a subprocess on a repository, queried with SkewlessClient."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.errors import EntityKeyError, UnknownNameError
from features.plan import Plan
from features.registry import Registry
from online.redis_store import RedisOnlineStore
from serving_api.client import InvalidRequestError, ServiceUnavailableError, SkewlessClient
from serving_api.commands import listen_socket
from tests import servers
from tests.serving.conftest import PLAN, ROOT, SERVE, publish_rows, running

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def served_plan() -> Plan:
    """The plan ``repo`` applies (a test module that serves another overrides this fixture)."""
    return PLAN


@pytest.fixture
def repo(tmp_path: Path, redis_url: str, project: str, served_plan: Plan) -> Path:
    (tmp_path / "skewless.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///.skewless/registry.db\nonline:\n  url: {redis_url}\n"
    )
    registry = Registry(f"sqlite:///{tmp_path}/.skewless/registry.db")
    registry.apply(served_plan)
    registry.close()
    with RedisOnlineStore(redis_url, project=project) as store:
        publish_rows(store)
    return tmp_path


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def service(repo: Path, asgi_server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    port = servers.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = str(request.param)
    command = [sys.executable, "-c", SERVE, "serve", "--repo", str(repo), "--port", str(port), "--workers", workers]
    command += ["--server", asgi_server]
    url = f"http://127.0.0.1:{port}"
    with running(command, url, cwd=ROOT, env=env):
        yield url


def test_serve_and_query_with_the_client(service: str) -> None:
    with SkewlessClient(service) as client:
        assert client.health() == {"status": "ok", "plan_version": 1}
        answer = client.get_features({"card_id": [1, 2, 5]}, features=["card:limit"])
        assert answer["features"]["card__limit"]["values"] == [1000.0, None, None]
        assert answer["features"]["card__limit"]["statuses"] == ["present", "expired", "missing"]
        answer = client.get_features({"card_id": [3], "merchant": ["acme"]}, feature_service="fraud")
        assert answer["features"]["card__limit"]["values"] == ["NaN"]
        assert answer["features"]["merchant__risk"]["values"] == [7]

        with pytest.raises(UnknownNameError) as unknown:
            client.get_features({"card_id": [1]}, feature_service="nope")
        assert unknown.value.known == ["fraud"]
        with pytest.raises(EntityKeyError, match="'card_id' is int64"):
            client.get_features({"card_id": ["x"]}, features=["card:limit"])
        with pytest.raises(InvalidRequestError, match="exactly one"):
            client.get_features({"card_id": [1]})


def test_each_answer_arrives_whole_at_the_first_read(service: str) -> None:
    """Head and body in one write (serving_api.http_protocol): a keep-alive client's first read after each request
    holds the whole answer; and Python's own HTTP client reads the answers right."""
    body = b'{"features": ["card:limit"], "entities": {"card_id": [1]}}'
    request = (
        b"POST /v1/features HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    port = int(service.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        for _ in range(20):
            raw.sendall(request)
            head, _, rest = raw.recv(65536).partition(b"\r\n\r\n")
            headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
            assert head.startswith(b"HTTP/1.1 200") and len(rest) == int(headers[b"content-length"])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(3):
        connection.request("POST", "/v1/features", body, {"content-type": "application/json"})
        answer = connection.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["features"]["card__limit"]["values"] == [1000.0]
    connection.close()


def test_client_reports_a_service_that_is_not_there() -> None:
    with (
        SkewlessClient(f"http://127.0.0.1:{servers.free_port()}", timeout=1) as client,
        pytest.raises(ServiceUnavailableError, match="cannot reach"),
    ):
        client.health()


def test_accepted_connections_get_tcp_nodelay() -> None:
    """Nagle's algorithm off on every accepted connection, or keep-alive requests wait ~40 ms for an ACK."""
    listener = listen_socket("127.0.0.1", 0)
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            port = listener.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(accept_one())
    assert seen and seen[0] != 0


def test_serve_names_a_port_it_cannot_take() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}"):
            listen_socket("127.0.0.1", port)
