"""How the service answers: JSON rendered by orjson, error bodies of bounded size, and the request id.

Every answer carries an ``X-Request-ID`` header (the caller's own when it sent a short, plain one; else a new
random one); every error body carries it too, as ``request_id``, and so does every log line about a failed
request, so a caller's report finds the server's log line. 5xx bodies say what kind of failure it was in words
that hold no detail of the servers behind (no URL, no host, no message of a driver): that goes to the log,
passed through :func:`features.redaction.redact_text`.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar
from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response
from starlette.types import Send

# The request being answered; set by serving_api.guard for every HTTP request, read by whatever writes an error
# (a context variable: the routed way may answer in a worker thread, and the context goes with it).
REQUEST_ID: ContextVar[str] = ContextVar("skewless_request_id", default="-")
REQUEST_ID_HEADER = b"x-request-id"
_PLAIN_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,64}")
# Bounds on what an error body echoes: an unknown name is the caller's text, a known-names list the plan's.
MAX_MESSAGE_CHARS = 1000
MAX_NAME_CHARS = 200
MAX_KNOWN_NAMES = 100


class JSONAnswer(JSONResponse):
    """A JSON response rendered by orjson (the lookup answer is already JSON-ready: no NaN, no datetimes).

    A :class:`JSONResponse` for FastAPI's OpenAPI: a route's documented answer models are then its schemas (of a
    plain ``Response`` class FastAPI documents ``{"type": "string"}``, which no JSON object matches).
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


#: A lookup's answer as the handler makes it: its status and JSON body (sent by :func:`send_json`, or wrapped in a
#: :func:`json_response` on the routed way).
Answer = tuple[int, bytes]
_JSON_TYPE = (b"content-type", b"application/json")


async def send_json(send: Send, answer: Answer) -> None:
    """Send ``answer`` with the headers a :class:`JSONAnswer` has (content length, type, then the request id),
    built straight as bytes: a Starlette ``Response`` per request (its header list, its ``__call__``) cost more
    than the sending."""
    status, body = answer
    headers = [(b"content-length", b"%d" % len(body)), _JSON_TYPE, (REQUEST_ID_HEADER, REQUEST_ID.get().encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_response(answer: Answer) -> Response:
    """``answer`` as a Starlette response, for a route (the same headers and body as :func:`send_json` sends)."""
    status, body = answer
    return Response(body, status_code=status, media_type=JSONAnswer.media_type)


def answer_of(response: Response) -> Answer:
    """A rendered response's status and body."""
    return response.status_code, bytes(response.body)


def request_id_from(header: bytes | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain (a proxy's id joins the logs), else a new one."""
    if header is not None and _PLAIN_ID.fullmatch(header):
        return header.decode()
    # Unique, not secret (the caller sees it): Python's generator, not a system call per request (os.urandom).
    return f"{random.getrandbits(64):016x}"


def error(status: int, error_type: str, message: str, **extra: Any) -> Response:
    """An error answer: ``{"error", "type", "request_id", ...extra}``, each echoed text and list bounded."""
    body: dict[str, Any] = {"error": clip(message, MAX_MESSAGE_CHARS), "type": error_type}
    for key, value in extra.items():
        if isinstance(value, str):
            value = clip(value, MAX_NAME_CHARS)
        elif isinstance(value, list) and len(value) > MAX_KNOWN_NAMES:
            value = [*value[:MAX_KNOWN_NAMES], f"... ({len(value) - MAX_KNOWN_NAMES} more)"]
        body[key] = value
    body["request_id"] = REQUEST_ID.get()
    return JSONAnswer(body, status_code=status)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
