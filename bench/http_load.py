"""A bounded HTTP/1.1 load generator on asyncio streams (keep-alive, fixed concurrency), used when ``wrk`` is
missing and for the one-request-at-a-time latencies; and an open-loop one at a fixed rate (:func:`run_at_rate`,
the soak's: ``--rate``).

    python -m bench.http_load http://127.0.0.1:6566/v1/features body.json --connections 16 --seconds 10
    python -m bench.http_load http://127.0.0.1:6566/v1/features body.json --rate 2000 --seconds 10

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


async def _worker(
    host: str, port: int, payloads: list[bytes], deadline: float, budget: list[int], result: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sent = 0
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            began = time.perf_counter()
            try:
                status = await _exchange(reader, writer, payloads[sent % len(payloads)])
            except (ConnectionError, asyncio.IncompleteReadError):
                status = b""
            sent += 1
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


async def _run(url: str, bodies: list[bytes], connections: int, seconds: float, max_requests: int) -> LoadResult:
    host, port, _ = _request_bytes(url, b"")
    payloads = [_request_bytes(url, body)[2] for body in bodies]
    result = LoadResult(connections, 0.0, 0, 0)
    budget = [max_requests]
    began = time.perf_counter()
    deadline = began + seconds
    await asyncio.wait_for(
        asyncio.gather(*(_worker(host, port, payloads, deadline, budget, result) for _ in range(connections))),
        timeout=seconds + 30,
    )
    result.seconds = time.perf_counter() - began
    return result


def run(
    url: str, body: bytes, *, connections: int = 1, seconds: float = 5.0, max_requests: int = 100_000
) -> LoadResult:
    """Send ``body`` to ``url`` over ``connections`` keep-alive connections until ``seconds`` or
    ``max_requests``."""
    return asyncio.run(_run(url, [body], connections, seconds, max_requests))


def run_alternating(
    url: str, bodies: list[bytes], *, connections: int = 16, seconds: float = 5.0, max_requests: int = 1_000_000
) -> LoadResult:
    """:func:`run`, each connection sending ``bodies`` in turn (closed loop: the next request when the answer
    came)."""
    return asyncio.run(_run(url, bodies, connections, seconds, max_requests))


@dataclass
class Timed:
    """The requests of an open-loop run (:func:`run_at_rate`): when each was due (seconds from the start), how
    long it took from then (so a server that falls behind shows its queue, not only its service time) and
    whether it was answered 200."""

    rate: float
    seconds: float = 0.0
    due_s: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    unsent: int = 0  # requests still waiting for their connection when the run had to end (it fell behind)

    @property
    def requests(self) -> int:
        return len(self.due_s)

    @property
    def errors(self) -> int:
        return self.ok.count(False)


async def _paced_worker(
    host: str,
    port: int,
    payloads: list[bytes],
    schedule: range,
    period: float,
    began: float,
    timeout: float,
    stop_at: float,
    result: Timed,
) -> None:
    """Send request ``k`` of ``schedule`` at ``began + k * period`` (or at once when late), on one connection;
    the body alternates through ``payloads``. A request unanswered after ``timeout`` s counts as an error; the
    requests left at ``stop_at`` are counted as unsent."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for n, k in enumerate(schedule):
            if time.perf_counter() > stop_at:
                result.unsent += len(schedule) - n
                break
            due = began + k * period
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status = await asyncio.wait_for(_exchange(reader, writer, payloads[k % len(payloads)]), timeout)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                status = b""
            result.due_s.append(due - began)
            result.latencies_s.append(time.perf_counter() - due)
            result.ok.append(status.startswith(b"HTTP/1.1 200"))
            if not status:  # closed, reset or stuck: a new connection for the next request
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def _run_at_rate(
    url: str, bodies: list[bytes], rate: float, seconds: float, connections: int, timeout: float, grace: float
) -> Timed:
    host, port, _ = _request_bytes(url, b"")
    payloads = [_request_bytes(url, body)[2] for body in bodies]
    total = int(rate * seconds)
    result = Timed(rate)
    period = 1.0 / rate
    began = time.perf_counter() + 0.05  # every connection opened before the first request is due
    stop_at = began + seconds + grace
    # Connection i sends requests i, i + connections, ...: together one request every `period`.
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _paced_worker(
                    host, port, payloads, range(i, total, connections), period, began, timeout, stop_at, result
                )
                for i in range(connections)
            )
        ),
        timeout=seconds + grace + timeout + 30,
    )
    result.seconds = time.perf_counter() - began
    return result


LATE_GRACE_S = 30.0  # how long past its end an open-loop run may go on sending the requests it owes


def run_at_rate(
    url: str,
    bodies: list[bytes],
    *,
    rate: float,
    seconds: float,
    connections: int = 256,
    timeout: float = 5.0,
    late_grace_s: float = LATE_GRACE_S,
) -> Timed:
    """Open loop: ``rate * seconds`` requests, one due every ``1 / rate`` s whatever the answers do (wrk2's
    way), spread over ``connections`` keep-alive connections, the body cycling through ``bodies``. Latencies
    are counted from when a request was due. A connection sends one request at a time, so ``connections``
    must exceed the rate times the worst latency, or its requests fall behind their schedule: that shows as
    latency, and what is still owed ``late_grace_s`` after the end is counted as ``unsent``."""
    return asyncio.run(_run_at_rate(url, bodies, rate, seconds, connections, timeout, late_grace_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("body", help="a file with the JSON body")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=None, help="open loop at this many requests per second")
    args = parser.parse_args(argv)
    with open(args.body, "rb") as f:
        body = f.read()
    if args.rate:
        timed = run_at_rate(args.url, [body], rate=args.rate, seconds=args.seconds, connections=args.connections)
        print(
            json.dumps(
                {
                    "requests": timed.requests,
                    "errors": timed.errors,
                    "requests_per_s": round(timed.requests / timed.seconds, 1),
                    "p50_ms": round(percentile(timed.latencies_s, 50) * 1000, 3),
                    "p99_ms": round(percentile(timed.latencies_s, 99) * 1000, 3),
                }
            )
        )
        return 0
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
