"""What every HTTP request passes before any route sees it (and before its body is parsed).

In order, on the request's headers alone:

1. a request id (:mod:`serving_api.answers`), sent back as ``X-Request-ID`` on every answer;
2. authentication (:mod:`serving_api.auth`): 401 without a configured token, except on :data:`OPEN_PATHS`
   (``/health`` and the static API documentation, which hold nothing of the repository); the catalog under
   ``/ui/`` takes a token that may look up everything (403 otherwise);
3. a JSON content type on requests with a body (415 otherwise): a page in a browser can send ``text/plain``
   across origins without asking first, never ``application/json``;
4. the body's size: a ``Content-Length`` beyond the limit is answered 413 at once, and a body without one is
   counted while it arrives and answered 413 as soon as it passes the limit; the rest is never read (the
   answer closes the connection).

The caller's :class:`~serving_api.auth.Grant` goes with the request (``scope[GRANT]``, or the lookup handler's
argument on the fast path) for the routes that check a scope against the body (a feature service, a view).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

from features.errors import RequestTooLargeError
from serving_api.answers import REQUEST_ID, REQUEST_ID_HEADER, error, request_id_from
from serving_api.auth import Authenticator, Grant

GRANT = "skewless.grant"  # the scope key of the caller's grant
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
UI_PREFIX = "/ui/"  # the catalog (mounted at /ui)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request past the gate: its path (below any ``root_path``), the caller's grant and its body (None for a
    method without one: not read)."""

    path: str
    grant: Grant
    body: bytes | None


class Gate:
    """The checks above, for one app: ``authenticator`` (tokens) and ``max_body_bytes``."""

    def __init__(self, authenticator: Authenticator, max_body_bytes: int) -> None:
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> Admitted | int:
        """The admitted request, or the status it was refused with (answered already), or 0 when the client went
        away before its body arrived (not answered)."""
        authorization = content_type = content_length = request_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name == REQUEST_ID_HEADER:
                request_id = value
        REQUEST_ID.set(request_id_from(request_id))
        path = _app_path(scope)
        if path in OPEN_PATHS:
            return Admitted(path, self.authenticator.grant(None) or _NOBODY, None)
        grant = self.authenticator.grant(authorization)
        if grant is None:
            scheme = b'Basic realm="skewless"' if _in_ui(path) else b'Bearer realm="skewless"'
            message = "a token is required: send 'Authorization: Bearer <token>' (see serving.tokens)"
            if authorization:
                message = "the token is not valid here: no serving.tokens entry has its hash"
            return await _refuse(
                scope, receive, send, 401, "AuthenticationError", message, [(b"www-authenticate", scheme)]
            )
        if _in_ui(path) and not grant.may_browse:
            message = f"token '{grant.name}' may not browse the catalog: that takes a token with services: ['*']"
            return await _refuse(scope, receive, send, 403, "PermissionError", message)
        if scope["method"] not in _BODY_METHODS:
            return Admitted(path, grant, None)
        if not _is_json(content_type):
            shown = (content_type or b"none").decode("latin-1")
            message = f"the body must be JSON: send 'Content-Type: application/json' (got {shown})"
            return await _refuse(scope, receive, send, 415, "UnsupportedMediaType", message)
        if content_length is not None and _too_long(content_length, self.max_body_bytes):
            return await _too_large(scope, receive, send, self.max_body_bytes)
        try:
            body = await read_body(receive, self.max_body_bytes)
        except RequestTooLargeError:
            return await _too_large(scope, receive, send, self.max_body_bytes)
        return 0 if body is None else Admitted(path, grant, body)


_NOBODY = Grant("", frozenset(), frozenset())  # on an open path, with tokens configured: no scope at all


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when the client went away before sending all of it;
    :class:`~features.errors.RequestTooLargeError` as soon as more than ``limit`` bytes arrived (nothing past them
    is read)."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) once, then whatever the client sends next (a disconnect)."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


class TaggedSend:
    """``send`` adding the request's ``X-Request-ID`` header to the answer, and keeping the status it sent
    (``status``: 0 until then)."""

    __slots__ = ("header", "send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.header = (REQUEST_ID_HEADER, REQUEST_ID.get().encode())
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message["headers"] = [*message.get("headers", ()), self.header]
        await self.send(message)


def tag(response: Response) -> Response:
    """``response`` with the request's ``X-Request-ID`` header."""
    response.raw_headers.append((REQUEST_ID_HEADER, REQUEST_ID.get().encode()))
    return response


def _app_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _in_ui(path: str) -> bool:
    return path.startswith(UI_PREFIX) or path == UI_PREFIX[:-1]


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def _too_long(content_length: bytes, limit: int) -> bool:
    try:
        return int(content_length) > limit
    except ValueError:
        return False  # the server rejects a malformed length before the app sees it


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> int:
    message = f"the request body is larger than {limit} bytes (serving.max_body_bytes); split the request"
    return await _refuse(scope, receive, send, 413, "RequestRequestTooLargeError", message, [(b"connection", b"close")])


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    error_type: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """Answer ``status`` with an error body (and ``headers``); the body is left unread. Returns ``status``."""
    response = tag(error(status, error_type, message))
    response.raw_headers.extend(headers or ())
    await response(scope, receive, send)
    return status
