"""A bounded HTTP/1.1 load generator on asyncio streams (keep-alive, fixed concurrency), used when ``wrk`` is
missing and for the one-request-at-a-time latencies.

    python -m bench.http_load http://127.0.0.1:6566/v1/features body.json --connections 16 --seconds 10

Every loop stops at ``seconds`` or ``max_requests``, whichever comes first; only 127.0.0.1 is accepted.
Hand-rolled rather than httpx because a Python client is the bottleneck long before a 2-worker server is:
this one sends pre-encoded bytes and parses only the status line and ``content-length``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    connections: int
    seconds: float
    requests: int
    errors: int
    latencies_s: list[float] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000.0


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100.0 * len(ordered)))) - 1
    return ordered[rank]


def _request_bytes(url: str, body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1":
        raise ValueError(f"the load generator only targets 127.0.0.1, not {parts.hostname!r}")
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: 127.0.0.1:{parts.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return parts.hostname, int(parts.port or 80), head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    """Send one request and read its whole answer; the status line, or b"" when the connection ended."""
    writer.write(payload)
    status = await reader.readline()
    if not status:
        return b""
    length, chunked = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readline()
    elif length:
        await reader.readexactly(length)
    return status


async def _worker(host: str, port: int, payload: bytes, deadline: float, budget: list[int], result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            began = time.perf_counter()
            try:
                status = await _exchange(reader, writer, payload)
            except (ConnectionError, asyncio.IncompleteReadError):
                status = b""
            if not status:  # the server closed or reset the connection (a worker restarting): count it, reconnect
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.latencies_s.append(time.perf_counter() - began)
            result.requests += 1
            if not status.startswith(b"HTTP/1.1 200"):
                result.errors += 1
    finally:
        writer.close()


async def _run(url: str, body: bytes, connections: int, seconds: float, max_requests: int) -> LoadResult:
    host, port, payload = _request_bytes(url, body)
    result = LoadResult(connections, 0.0, 0, 0)
    budget = [max_requests]
    began = time.perf_counter()
    deadline = began + seconds
    await asyncio.wait_for(
        asyncio.gather(*(_worker(host, port, payload, deadline, budget, result) for _ in range(connections))),
        timeout=seconds + 30,
    )
    result.seconds = time.perf_counter() - began
    return result


def run(
    url: str, body: bytes, *, connections: int = 1, seconds: float = 5.0, max_requests: int = 100_000
) -> LoadResult:
    """Send ``body`` to ``url`` over ``connections`` keep-alive connections until ``seconds`` or
    ``max_requests``."""
    return asyncio.run(_run(url, body, connections, seconds, max_requests))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("body", help="a file with the JSON body")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    with open(args.body, "rb") as f:
        body = f.read()
    result = run(args.url, body, connections=args.connections, seconds=args.seconds, max_requests=args.max_requests)
    print(
        json.dumps(
            {
                "requests": result.requests,
                "errors": result.errors,
                "requests_per_s": round(result.requests_per_s, 1),
                "p50_ms": round(result.percentile_ms(50), 3),
                "p99_ms": round(result.percentile_ms(99), 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
