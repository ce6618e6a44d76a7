"""``serving_api.http_protocol``: uvicorn's httptools protocol sending an answer in one write. The oracle is uvicorn's
own ``HttpToolsProtocol`` driven with the same bytes and app: the bytes written must be the same, in fewer writes.
``skewless serve`` over a real socket: tests/serving/test_uvicorn.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from serving_api.http_protocol import HeadHeldTransport, OneWriteHttpToolsProtocol

DEFAULT_HEADERS = [(b"server", b"uvicorn"), (b"date", b"Sun, 06 Dec 2026 14:00:00 GMT")]


class RecordingTransport:
    """A transport that keeps what is written, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers by path: ``/json`` (length given), ``/stream`` (three chunks), ``/empty`` (204), ``/echo`` (the
    request body)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b'{"ok":true}'
    if path == "/echo":
        message = await receive()
        body = message.get("body", b"")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve(protocol_class: type[HttpToolsProtocol], chunks: list[bytes]) -> RecordingTransport:
    """Feed ``chunks`` (each one ``data_received``) to a protocol of ``protocol_class`` serving :func:`app`; the
    writes it made."""

    async def main() -> RecordingTransport:
        config = Config(app, http=protocol_class, ws="none", lifespan="off", log_level="critical")
        state = ServerState()
        state.default_headers = list(DEFAULT_HEADERS)
        protocol = protocol_class(config=config, server_state=state, app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            protocol.data_received(chunk)
            for _ in range(20):  # let the app's task run and answer
                await asyncio.sleep(0)
        if protocol.timeout_keep_alive_task is not None:
            protocol.timeout_keep_alive_task.cancel()
        return transport

    return asyncio.run(main())


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n" + extra + b"\r\n"


CASES = {
    "two keep-alive requests": [get("/json"), get("/json")],
    "pipelined in one packet": [get("/json") + get("/json") + get("/empty")],
    "HEAD": [b"HEAD /json HTTP/1.1\r\nhost: x\r\n\r\n", get("/json")],
    "no content": [get("/empty"), get("/json")],
    "streamed": [get("/stream"), get("/json")],
    "connection close": [get("/json", b"connection: close\r\n")],
    "HTTP/1.0": [b"GET /json HTTP/1.0\r\n\r\n"],
    "a body": [b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello", get("/json")],
    "100 continue": [
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        b"hello",
        get("/json"),
    ],
    "malformed": [get("/json"), b"NOT HTTP\r\n\r\n"],
}


@pytest.mark.parametrize("chunks", list(CASES.values()), ids=list(CASES))
def test_the_same_bytes_as_uvicorns_own_protocol(chunks: list[bytes]) -> None:
    stock = serve(HttpToolsProtocol, chunks)
    one_write = serve(OneWriteHttpToolsProtocol, chunks)
    assert b"".join(one_write.writes) == b"".join(stock.writes)
    assert one_write.closed == stock.closed
    # Each answer with a length (not streamed) is one write, where uvicorn wrote its head and body apart.
    answers = b"".join(stock.writes).count(b"HTTP/1.1 200") + b"".join(stock.writes).count(b"HTTP/1.1 204")
    assert len(one_write.writes) < len(stock.writes) or answers == 0


def test_an_answer_is_one_write_and_the_interim_continue_is_not_held() -> None:
    chunks = CASES["100 continue"]
    writes = serve(OneWriteHttpToolsProtocol, chunks).writes
    assert writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"  # sent before the client sends its body
    assert [w.split(b"\r\n", 1)[0] for w in writes[1:]] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert writes[1].endswith(b"\r\n\r\nhello") and writes[2].endswith(b'\r\n\r\n{"ok":true}')


def test_the_transport_keeps_the_order_of_every_way_of_writing() -> None:
    recording = RecordingTransport()
    transport = HeadHeldTransport(recording)  # type: ignore[arg-type]
    transport.write(b"head ")
    assert recording.writes == [] and transport.get_write_buffer_size() == 5
    transport.writelines([b"body", b"!"])
    transport.write(b" more")
    assert recording.writes == [b"head body!", b" more"]
    transport.arm()
    transport.write(b"next head")
    transport.close()  # a held head is written before the close
    assert recording.writes[-1] == b"next head" and recording.closed
    transport.arm()
    transport.write(b"dropped")
    transport.abort()  # an abort sends nothing more
    assert recording.writes[-1] == b"next head" and recording.aborted
