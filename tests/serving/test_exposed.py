"""``skewless serve`` as it is exposed: refused beyond loopback without tokens, HTTPS with a certificate made here,
tokens from skewless.yaml, and a 100 MB body refused by a real uvicorn without the server's memory growing."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.cli import main
from online.redis_store import RedisOnlineStore
from serving_api.auth import hash_token
from serving_api.client import AccessDeniedError, ServiceUnavailableError, SkewlessClient
from serving_api.commands import is_loopback
from tests import servers
from tests.serving.conftest import publish_rows, running, write_repo

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "skw_exposed_test_token"


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_listening_beyond_loopback_without_tokens_is_refused(
    tmp_path: Path, redis_url: str, project: str, command: str
) -> None:
    repo = write_repo(tmp_path, redis_url, project)
    with pytest.raises(SystemExit) as refused:
        main([command, "--repo", str(repo), "--host", "0.0.0.0", "--port", str(servers.free_port())])
    message = str(refused.value.code)
    assert "refusing to listen on 0.0.0.0 without authentication" in message
    assert "skewless token create" in message and "--insecure-no-auth" in message


def test_what_counts_as_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.5.0.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org", "192.168.1.2"))


def test_token_create_prints_a_token_and_the_entry_that_lets_it_in(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--name", "model", "--service", "fraud", "--push", "card"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"^(skw_\S+)$", out, re.M)
    assert token is not None, out
    entry = re.search(r'model: \{hash: "(sha256:[0-9a-f]{64})", services: \["fraud"\], push: \["card"\]\}', out)
    assert entry is not None, out
    assert entry.group(1) == hash_token(token.group(1))
    assert len(token.group(1)) >= 40


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(params=["https", "http"])
def service(
    tmp_path: Path, redis_url: str, project: str, certificate: tuple[Path, Path], request: pytest.FixtureRequest
) -> Iterator[tuple[str, int]]:
    """``skewless serve`` with a token in skewless.yaml, over HTTPS or HTTP; its URL and process id."""
    serving = f'  tokens:\n    model: {{hash: "{hash_token(TOKEN)}", services: [fraud]}}\n'
    repo = write_repo(tmp_path, redis_url, project, serving)
    with RedisOnlineStore(redis_url, project=project) as store:
        publish_rows(store)
    cert, key = certificate
    port = servers.free_port()
    command = [sys.executable, "-c", "import sys; from features.cli import main; sys.exit(main(sys.argv[1:]))"]
    command += ["serve", "--repo", str(repo), "--port", str(port)]
    if request.param == "https":
        command += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    url = f"{request.param}://127.0.0.1:{port}"
    with running(command, url, verify=str(cert), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}) as pid:
        yield url, pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


HEAD = (
    f"POST /v1/features HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
).encode()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("service", ["https"], indirect=True)
def test_https_with_tokens(service: tuple[str, int], certificate: tuple[Path, Path]) -> None:
    url, _ = service
    cert = str(certificate[0])
    body = {"card_id": [1], "merchant": ["acme"]}
    with SkewlessClient(url, token=TOKEN, verify=cert) as client:
        answer = client.get_features(body, feature_service="fraud")
        assert answer["features"]["merchant__risk"]["values"] == [7]
        with pytest.raises(AccessDeniedError, match="HTTP 403"):
            client.get_features({"card_id": [1]}, features=["card:limit"])
    with SkewlessClient(url, verify=cert) as anonymous, pytest.raises(AccessDeniedError, match="HTTP 401"):
        anonymous.get_features(body, feature_service="fraud")
    with SkewlessClient(url, token=TOKEN) as unverified, pytest.raises(ServiceUnavailableError):
        unverified.health()  # the certificate is checked: a self-signed one is not trusted without verify=
    # A declared 100 MB over TLS: 413 at once, after a small prefix.
    raw = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
    context = ssl.create_default_context(cafile=cert)
    with contextlib.closing(context.wrap_socket(raw, server_hostname="127.0.0.1")) as sock:
        started = time.monotonic()
        sock.sendall(HEAD + b"Content-Length: 100000000\r\n\r\n" + b"{" * 65536)
        answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert time.monotonic() - started < 2


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("service", ["http"], indirect=True)
def test_a_100_mb_body_is_refused_unread_with_flat_memory(service: tuple[str, int]) -> None:
    url, pid = service
    port = int(url.rsplit(":", 1)[1])
    # Declared: 413 at once after a small prefix.
    with contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        started = time.monotonic()
        sock.sendall(HEAD + b"Content-Length: 100000000\r\n\r\n" + b"{" * 65536)
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
        assert time.monotonic() - started < 2
    # 100 MB without a length (chunked): refused after the first MiB, the connection closed, memory flat.
    before = rss_mib(pid)
    sent = 0
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    with contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):
            while sent < 100_000_000:
                sock.sendall(chunk)
                sent += 0x10000
        with contextlib.suppress(OSError):
            assert sock.recv(65536)[:12] in (b"HTTP/1.1 413", b"")  # the answer, unless the reset came first
    assert sent < 20_000_000, sent  # the server closed the connection long before 100 MB
    assert rss_mib(pid) - before < 40, (before, rss_mib(pid))
