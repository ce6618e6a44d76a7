"""Talking to one Redis server: bounded connections, errors translated at the boundary, raw round trips."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from features.errors import ConfigError, OnlineStoreError
from features.redaction import redact_url as redact  # the one redaction of URLs (re-exported)

if TYPE_CHECKING:
    import redis


def connect(url: str, *, connect_timeout: float, timeout: float) -> redis.Redis:
    """A client with bounded waits: connect and socket timeouts, one immediate retry on a dropped connection
    (a pooled connection may have been closed by a server restart), never on a timeout."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    check_url(url)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def check_url(url: str) -> None:
    """Raise :class:`ConfigError` for a Redis URL redis-py cannot use: a malformed one, or one with a query
    parameter its connections do not take (redis-py would fail every connection with a ``TypeError``, each
    request a server error, instead of once at start)."""
    import redis

    try:
        pool = redis.ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)  # builds a connection object; connects nothing
    except ValueError as exc:
        raise ConfigError(f"invalid online store URL {redact(url)!r}: {exc}") from exc
    except TypeError as exc:
        known = ", ".join(sorted({*redis.connection.URL_QUERY_ARGUMENT_PARSERS, "password", "username"}))
        raise ConfigError(
            f"invalid online store URL {redact(url)!r}: a query parameter redis-py does not take ({exc}); "
            f"known ones: {known}"
        ) from exc


@contextlib.contextmanager
def translate_errors(url: str, action: str) -> Iterator[None]:
    """Turn redis and socket errors into :class:`OnlineStoreError` naming the server and what was tried."""
    try:
        yield
    except Exception as exc:
        translated = translate_error(url, action, exc)
        if translated is None:
            raise
        raise translated from exc


def translate_error(url: str, action: str, exc: BaseException) -> OnlineStoreError | None:
    """The :class:`OnlineStoreError` a redis or socket error ``exc`` becomes (see :func:`translate_errors`); None
    for any other exception."""
    import redis
    from redis.exceptions import RedisClusterException

    if isinstance(exc, redis.RedisError | RedisClusterException):  # the latter: a cluster without a slot's primary
        kind = "did not answer in time" if isinstance(exc, redis.TimeoutError) else "failed"
        return OnlineStoreError(f"online store at {redact(url)} {kind} while {action}: {exc}")
    if isinstance(exc, OSError):
        return OnlineStoreError(f"online store at {redact(url)} failed while {action}: {exc}")
    return None


def roundtrip(client: redis.Redis, *commands: Sequence[Any], free: list[Any] | None = None) -> list[Any]:
    """Send ``commands`` in one write on a pooled connection and read one reply each (an error reply raises).

    With ``free``, a connection is taken from that list (from the pool when it is empty) and put back there after
    a clean round trip: redis-py's pool takes a lock, checks the connection and records metrics on every take and
    give-back (~20 µs, measured, of a ~300 µs HTTP lookup). A connection that failed goes back to the pool,
    disconnected (it reconnects when next used).

    Below redis-py's ``execute_command`` on purpose: hiredis packs each command in C, where redis-py looks at every
    argument in Python first (~25 µs of a ~100 µs lookup; most of an MSET of 1000 keys), and several commands
    share one round trip. Same rule as :func:`connect`: one retry on a dropped connection, none on a timeout
    (every command sent here may be repeated: reads, and MSETs of the same keys and values).
    """
    import hiredis
    import redis

    packed = [hiredis.pack_command(tuple(command)) for command in commands]
    pool = client.connection_pool
    for attempt in (1, 2):
        try:
            connection = free.pop() if free is not None else pool.get_connection()
        except IndexError:  # none idle (list.pop is atomic: threads never share one)
            connection = pool.get_connection()
        try:
            connection.send_packed_command(packed)
            replies = [connection.read_response() for _ in packed]
        except redis.ConnectionError:
            connection.disconnect()
            pool.release(connection)
            if attempt == 2:
                raise
            continue
        except BaseException:  # a timeout, an error reply: the connection may hold unread replies
            connection.disconnect()
            pool.release(connection)
            raise
        if free is not None:
            free.append(connection)
        else:
            pool.release(connection)
        return replies
    raise AssertionError("unreachable")


def as_text(value: bytes | str) -> str:
    """A reply's bytes as text (a client created with ``decode_responses`` already gives text)."""
    return value.decode() if isinstance(value, bytes) else value
