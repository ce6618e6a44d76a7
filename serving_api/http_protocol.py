"""uvicorn's HTTP protocol (httptools) sending each answer's head and body in one write.

uvicorn writes an answer's status line and headers when the app sends ``http.response.start`` and the body when
it sends ``http.response.body``: two writes, and on a connection with ``TCP_NODELAY`` (``skewless serve`` sets it)
two sends, two segments and two wake-ups of the client. On loopback the kernel's send is most of what a write
costs, and the two made ~10% of a worker's CPU per 1-entity lookup. Here the head is held back until the body's
first write (or the answer's end, or the connection's close) and both leave in one write.

Only the first write after an answer (or at the start of a connection) is held, and never the interim
``100 Continue`` (its client waits for it before sending the body). Websocket upgrades are off
(``skewless serve`` passes ``ws="none"``: the app has no websocket route), so nothing else writes on these
connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HeadHeldTransport:
    """A connection's transport that holds the first write after :meth:`arm` (an answer's head) until the next
    write, :meth:`flush` or :meth:`close`, so head and body go out in one write."""

    __slots__ = ("armed", "held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.armed = True  # a connection's first write is the head of its first answer
        self.held: bytes | None = None

    def arm(self) -> None:
        self.armed = True

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held + data)
        elif self.armed and data != _CONTINUE:
            self.armed = False
            self.held = bytes(data)
        else:
            self.transport.write(data)

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + len(self.held or b"")

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # what else uvicorn may ask of a transport (none of it writes)
        return getattr(self.transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`HeadHeldTransport` (``uvicorn.Config(http=...)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHeldTransport(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        transport: HeadHeldTransport = self.transport  # type: ignore[assignment]
        transport.flush()  # an answer without a body (HEAD, an empty body) is its head alone
        transport.arm()  # the next write is the next answer's head
        super().on_response_complete()
