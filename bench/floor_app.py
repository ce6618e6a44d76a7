"""The floor: a bare FastAPI app that answers a lookup with one Redis ``MGET`` of the same keys skewless reads.

No plan, no statuses, no decoding of the rows: the JSON body is parsed, one key per entity and view is built,
one ``MGET`` goes to Redis and the raw rows come back as a JSON list. Nothing useful can be faster on this
stack (FastAPI, uvicorn, redis-py with hiredis), so it shows how close a feature server is to the limit.

    FLOOR_REDIS_URL=redis://127.0.0.1:6379/0 FLOOR_PREFIXES=bench:user_profile:v1:,bench:user_activity:v1: \\
        uvicorn bench.floor_app:app --workers 2 --port 6570
"""

from __future__ import annotations

import os

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response

app = FastAPI()
_prefixes = [p for p in os.environ.get("FLOOR_PREFIXES", "").split(",") if p]
_redis = aioredis.from_url(os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.post("/v1/features")
async def features(request: Request) -> Response:
    body = orjson.loads(await request.body())
    ids = body["entities"]["user_id"]
    rows = await _redis.mget([f"{prefix}{i}" for prefix in _prefixes for i in ids])
    return Response(orjson.dumps([r.decode() if r is not None else None for r in rows]), media_type="application/json")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
