"""The floor: a bare FastAPI app that answers a lookup with one Redis ``MGET`` of the same keys skewless reads.

No plan, no statuses, no decoding of the rows: the JSON body is parsed, one key per entity and view is built,
one ``MGET`` goes to Redis and the raw rows come back as a JSON list: what a bare app on the usual stack
(FastAPI, uvicorn, redis-py's asyncio client with hiredis) does at the least, so it shows how close a feature
server is to that limit. skewless's server can pass it: it pipelines a worker's concurrent reads on one
connection (``online/pipelined.py``), where redis-py's asyncio pool gives each concurrent request its own.

    FLOOR_REDIS_URL=redis://127.0.0.1:6379/0 FLOOR_PREFIXES=bench:user_profile:v1:,bench:user_activity:v1: \\
        python -m bench.floor_app --port 6570 --workers 2

Started through :func:`main`, not the ``uvicorn`` command: with ``--workers`` uvicorn binds the listening socket
itself, with protocol number 0, so asyncio's transport does not recognise it as TCP and leaves Nagle's algorithm
on; a response written in two pieces then waits for the client's delayed ACK (about 40 ms on Linux) on every
keep-alive request. The floor sets ``TCP_NODELAY`` on the listening socket, which accepted sockets inherit.
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response

# FastAPI's native OpenTelemetry off, as in `skewless serve`: checking for providers costs ~20 µs a request.
app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
_prefixes = [p for p in os.environ.get("FLOOR_PREFIXES", "").split(",") if p]
_redis = aioredis.from_url(os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.post("/v1/features")
async def features(request: Request) -> Response:
    body = orjson.loads(await request.body())
    ids = body["entities"]["user_id"]
    rows = await _redis.mget([f"{prefix}{i}" for prefix in _prefixes for i in ids])
    values = [r.decode() if isinstance(r, bytes) else r for r in rows]
    return Response(orjson.dumps(values), media_type="application/json")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6570)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    original = uvicorn.Config.bind_socket

    def bind_socket(self: Any) -> socket.socket:
        sock = original(self)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    uvicorn.Config.bind_socket = bind_socket  # type: ignore[method-assign]
    uvicorn.run(
        "bench.floor_app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
