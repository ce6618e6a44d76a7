"""The load generators of bench/http_load.py against a tiny HTTP server that records what it receives: the open
loop sends exactly ``rate * seconds`` requests, spaced by ``1 / rate``, the bodies in turn."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from bench import http_load
from tests import servers


class Recorder:
    """An HTTP/1.1 keep-alive server in a thread: answers 200 (or ``status``), after ``delay`` s, and keeps every
    body it got."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.bodies: list[bytes] = []
        self.port = servers.free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while status_line := await reader.readline():
                assert status_line.startswith(b"POST ")
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.bodies.append(await reader.readexactly(length))
                await asyncio.sleep(self.delay)
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\n\r\n[]".encode())
        finally:
            writer.close()

    def __enter__(self) -> Recorder:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(asyncio.start_server(self.handle, "127.0.0.1", self.port), self.loop)
        self.server = started.result(10)
        return self

    async def shutdown(self) -> None:
        self.server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as r:
        yield r


def test_the_open_loop_sends_rate_times_seconds_requests_on_schedule(recorder: Recorder) -> None:
    url = f"http://127.0.0.1:{recorder.port}/v1/features"
    timed = http_load.run_at_rate(url, [b"one", b"hundred"], rate=200, seconds=1.5, connections=4)
    assert timed.requests == len(recorder.bodies) == 300
    assert timed.errors == 0
    assert sorted(timed.due_s) == pytest.approx([k / 200 for k in range(300)])  # one due every 1 / rate s
    assert all(latency >= 0 for latency in timed.latencies_s)
    assert sorted(recorder.bodies) == sorted([b"one", b"hundred"] * 150)  # request k sends body k % 2


def test_the_open_loop_counts_answers_that_are_not_200() -> None:
    with Recorder(status=503) as failing:
        url = f"http://127.0.0.1:{failing.port}/v1/features"
        timed = http_load.run_at_rate(url, [b"{}"], rate=100, seconds=0.5, connections=2)
    assert (timed.requests, timed.errors) == (50, 50)


def test_what_the_open_loop_still_owes_after_its_grace_is_counted_unsent() -> None:
    with Recorder(delay=0.05) as slow:  # one connection answered in 50 ms sends 20 a second, not 100
        url = f"http://127.0.0.1:{slow.port}/v1/features"
        timed = http_load.run_at_rate(url, [b"{}"], rate=100, seconds=0.5, connections=1, late_grace_s=0.2)
    assert timed.requests == len(slow.bodies) < 50
    assert timed.requests + timed.unsent == 50 and timed.errors == 0
    assert max(timed.latencies_s) > 0.1  # counted from when each was due: the queue shows


def test_the_closed_loop_alternates_bodies_and_stops_at_its_budget(recorder: Recorder) -> None:
    url = f"http://127.0.0.1:{recorder.port}/v1/features"
    result = http_load.run_alternating(url, [b"a", b"b"], connections=1, seconds=30, max_requests=10)
    assert (result.requests, result.errors) == (10, 0)
    assert recorder.bodies == [b"a", b"b"] * 5


def test_only_the_loopback_address_is_a_target() -> None:
    with pytest.raises(ValueError, match=r"only targets 127\.0\.0\.1, not .localhost."):
        http_load.run_at_rate("http://localhost:6566/v1/features", [b"{}"], rate=1, seconds=1)
