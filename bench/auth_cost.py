"""What authentication costs a 1-entity lookup: ``skewless serve`` (1 worker) with and without ``serving.tokens``,
measured with wrk (16 connections) in alternating rounds on the same machine, on a real redis-server.

    python bench/auth_cost.py --rounds 3 --seconds 8

Prints one JSON line per round and the medians, then the gate alone in-process (``serving_api/guard.py``: request
id, token, content type, body read; best of 5 x 200,000 calls), whose difference is what a token costs without
the noise of a shared machine. The issue's target is a cost of at most 5% of req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import SKEWLESS_CLI, log, server, wrk_load  # noqa: E402
from online.redis_store import RedisOnlineStore  # noqa: E402
from serving_api.auth import Authenticator, hash_token, new_token  # noqa: E402
from serving_api.guard import Gate  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402
from tests.serving.conftest import publish_rows, write_repo  # noqa: E402

BODY = json.dumps({"feature_service": "fraud", "entities": {"card_id": [1], "merchant": ["acme"]}}).encode()


def _folder(tmp: str, name: str) -> Path:
    (Path(tmp) / name).mkdir()
    return Path(tmp) / name


def gate_microseconds(token: str | None, calls: int = 200_000) -> float:
    """The gate's time per request, in µs (best of 5 runs of ``calls``), with a token configured and sent or not."""
    tokens = {"bench": {"hash": hash_token(token), "services": ["fraud"]}} if token else {}
    sent = [(b"authorization", f"Bearer {token}".encode())] if token else []
    gate = Gate(Authenticator(tokens), 1 << 20)
    headers = [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    scope = {"type": "http", "method": "POST", "path": "/v1/features", "root_path": "", "headers": headers + sent}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError(f"the gate answered: {message}")

    async def measure() -> float:
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(calls):
                await gate.admit(scope, receive, send)
            best = min(best, (time.perf_counter() - began) / calls * 1e6)
        return best

    return asyncio.run(measure())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    token = new_token()
    serving = f'  tokens:\n    bench: {{hash: "{hash_token(token)}", services: [fraud]}}\n'
    results: dict[str, list[float]] = {"off": [], "on": []}
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        with RedisOnlineStore(redis_url, project="authbench") as store:
            publish_rows(store)
        repos = {
            "off": write_repo(_folder(tmp, "off"), redis_url, "authbench"),
            "on": write_repo(_folder(tmp, "on"), redis_url, "authbench", serving),
        }
        for round_ in range(args.rounds):
            for auth in ("off", "on"):
                port = free_port()
                command = [str(SKEWLESS_CLI), "serve", "--repo", str(repos[auth]), "--port", str(port)]
                with server(command, port, logfile=Path(tmp) / f"serve-{auth}.log"):
                    url = f"http://127.0.0.1:{port}/v1/features"
                    headers = {"Authorization": f"Bearer {token}"} if auth == "on" else None
                    wrk_load(url, BODY, 2, Path(tmp), headers)  # warm up
                    rps, p99, errors = wrk_load(url, BODY, args.seconds, Path(tmp), headers)
                if errors:
                    raise SystemExit(f"{errors} answers were not 2xx with auth {auth}")
                results[auth].append(rps)
                log(json.dumps({"round": round_, "auth": auth, "requests_per_s": rps, "p99_ms": p99}))
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    print(
        json.dumps({"median_rps_auth_off": off, "median_rps_auth_on": on, "cost_pct": round(100 * (1 - on / off), 1)})
    )
    gate_off, gate_on = gate_microseconds(None), gate_microseconds(token)
    per_request_us = 1e6 / off
    print(
        json.dumps(
            {
                "gate_us_auth_off": round(gate_off, 2),
                "gate_us_auth_on": round(gate_on, 2),
                "request_us_at_median_rps": round(per_request_us, 1),
                "token_cost_pct": round(100 * (gate_on - gate_off) / per_request_us, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
