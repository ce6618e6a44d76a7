"""One Redis connection per event loop, shared by every request of a serving worker: commands are pipelined.

A serving worker answers many requests at once on its event loop. With a blocking client each request waits
for its own round trip, and the worker idles meanwhile; with redis-py's asyncio client each concurrent request
takes its own pooled connection, and Redis wakes up once per request. Here every command is written to one
socket as it comes and the replies, which Redis sends in the same order, settle the waiting requests in turn.
Measured on this project's benchmark machine, a bare FastAPI app doing one ``MGET`` answered ~1.5x the
requests per second through this connection than through redis-py's asyncio pool.

Plain TCP and Unix sockets, with ``AUTH`` and ``SELECT`` when the URL asks for them; errors are redis-py's own
(``ConnectionError``, ``TimeoutError``, ``ResponseError``), so callers translate them as they do for the blocking
client. A connection that times out or breaks is closed, failing every command waiting on it; the next command
opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any, cast

import hiredis
import redis
import redis.connection


class PipelinedRedis:
    """Redis commands from one event loop over one pipelined connection, opened on first use."""

    def __init__(self, connection_kwargs: dict[str, Any], *, connect_timeout: float, timeout: float) -> None:
        self.kwargs = connection_kwargs
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self._protocol: _RedisProtocol | None = None
        self._opening: asyncio.Future[_RedisProtocol] | None = None

    def serves_running_loop(self) -> bool:
        """Whether this connection's loop is the one running the caller (a coroutine): a loop running in the
        caller's thread is that thread's running loop. ``asyncio.get_running_loop()`` would say it too, but on
        Python 3.11 it makes a ``getpid`` system call each time (~4% of a worker's CPU per 1-entity lookup)."""
        return self.thread == threading.get_ident() and self.loop.is_running()

    @staticmethod
    def supports(pool: redis.ConnectionPool) -> bool:
        """True when the pool connects by plain TCP or a Unix socket (TLS stays with the blocking client)."""
        return pool.connection_class in (redis.connection.Connection, redis.connection.UnixDomainSocketConnection)

    async def call(self, *command: Any) -> Any:
        """The reply to ``command``; a dropped connection is retried once, on a new one (never a timeout)."""
        return await self.call_packed(_packed(*command))

    async def call_packed(self, packed: bytes) -> Any:
        """:meth:`call` of a command already packed as Redis reads it (RESP)."""
        for attempt in (1, 2):
            protocol = self._protocol if self._protocol is not None and self._protocol.usable else await self._open()
            try:
                return await protocol.call(packed, self.timeout)
            except redis.ConnectionError:
                if attempt == 2 or protocol.timed_out:
                    raise
        raise AssertionError("unreachable")

    def send(self, *command: Any) -> asyncio.Future[Any] | None:
        """Put ``command`` on the open connection (written with this turn's others) and return the future of its
        reply; None when no connection is open (then use :meth:`call`, which opens one). A caller puts commands for
        several servers on the wire before awaiting any reply, without a task each (a cluster's read: one ``MGET``
        per node). Its failure is raised to whoever awaits it, never logged as lost when nobody does (a read that
        failed on another node)."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            return None
        future = protocol.call(_packed(*command), self.timeout)
        future.add_done_callback(_retrieved)
        return future

    def close(self) -> None:
        """Close the connection (from any thread); commands waiting on it fail."""
        protocol, self._protocol = self._protocol, None
        if protocol is None or self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            protocol.close(redis.ConnectionError("connection closed"))
        else:
            self.loop.call_soon_threadsafe(protocol.close, redis.ConnectionError("connection closed"))

    async def _open(self) -> _RedisProtocol:
        # Requests arriving while a connection opens wait for that one rather than open their own.
        if self._opening is None:
            self._opening = self.loop.create_future()
            try:
                protocol = await asyncio.wait_for(self._connect(), self.connect_timeout)
            except TimeoutError as exc:
                error: BaseException = redis.TimeoutError(f"no connection within {self.connect_timeout} s")
                error.__cause__ = exc
            except OSError as exc:
                error = redis.ConnectionError(f"cannot connect: {exc}")
                error.__cause__ = exc
            except redis.RedisError as exc:
                error = exc
            else:
                self._protocol = protocol
                self._opening.set_result(protocol)
                self._opening = None
                return protocol
            self._opening.set_exception(error)
            self._opening.exception()  # retrieved: a connection nobody else waited for logs nothing
            self._opening = None
            raise error
        return await asyncio.shield(self._opening)

    async def _connect(self) -> _RedisProtocol:
        kwargs = self.kwargs
        if kwargs.get("path"):
            _, protocol = await self.loop.create_unix_connection(_RedisProtocol, kwargs["path"])
        else:
            _, protocol = await self.loop.create_connection(
                _RedisProtocol, kwargs.get("host") or "localhost", int(kwargs.get("port") or 6379)
            )
        try:
            if kwargs.get("password"):
                auth = ("AUTH", kwargs["username"], kwargs["password"]) if kwargs.get("username") else None
                await protocol.call(_packed(*(auth or ("AUTH", kwargs["password"]))), self.timeout)
            if int(kwargs.get("db") or 0):
                await protocol.call(_packed("SELECT", int(kwargs["db"])), self.timeout)
        except BaseException:
            protocol.close(redis.ConnectionError("connection setup failed"))
            raise
        return protocol


def _packed(*command: Any) -> bytes:
    """``command`` as Redis reads it (RESP)."""
    return hiredis.pack_command(command)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved


class _RedisProtocol(asyncio.Protocol):
    """The socket end: writes packed commands, parses replies with hiredis and settles waiters in order.

    The commands of one event-loop turn leave in one write (flushed by a callback of the next turn): a serving
    worker under load starts several requests per turn, and a write per command was ~13% of its CPU per 1-entity
    lookup (the kernel's loopback send; Redis then also reads them in one go). One timer per connection, armed for
    the oldest waiting command's deadline, replaces a timer per command (~2 µs each, created and cancelled): the
    commands of a connection share one timeout, so the oldest one's deadline is always the nearest."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        # (future, deadline on the loop's clock, timeout), in the order the commands were written
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float, float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop  # the connection's, from connection_made on
        self.usable = False
        self.timed_out = False
        self._outgoing: list[bytes] = []  # packed this turn, written together by _flush
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.loop = asyncio.get_running_loop()
        self.usable = True

    def call(self, packed: bytes, timeout: float) -> asyncio.Future[Any]:
        """Write the command ``packed`` (RESP) with this turn's others; the future of its reply."""
        if not self.usable or self.transport is None:
            raise redis.ConnectionError("connection closed")
        loop = self.loop
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + timeout
        self.waiting.append((future, deadline, timeout))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(packed)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.usable and self.transport is not None and outgoing:
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()[0]
                if future.done():
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(redis.ResponseError(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.close(redis.ConnectionError(f"unreadable reply: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(redis.ConnectionError(f"connection lost: {exc}" if exc else "connection closed by the server"))

    def _check_deadline(self) -> None:
        """The timer: expire when the oldest waiting command is past its deadline, else wait for that deadline."""
        self._timer = None
        if not self.waiting or not self.usable:
            return
        _future, deadline, timeout = self.waiting[0]
        if self.loop.time() >= deadline:
            self._expire(timeout)
        else:
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _expire(self, timeout: float) -> None:
        # The connection may still deliver the late reply, which would then answer the wrong command: close it.
        self.timed_out = True
        self.close(redis.TimeoutError(f"no reply within {timeout} s"))

    def close(self, error: redis.RedisError) -> None:
        self.usable = False
        self._outgoing = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(type(error)(*error.args))  # one exception object per waiter
        if self.transport is not None:
            self.transport.close()
