"""What authentication costs a 1-entity lookup: ``skewless serve`` (1 worker) with and without ``serving.tokens``,
measured with wrk (16 connections) in alternating rounds on the same machine, on a real redis-server.

    python bench/auth_cost.py --rounds 3 --seconds 8

Prints one JSON line per round and the medians; the issue's target is a cost of at most 5% of req/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import SKEWLESS_CLI, log, server, wrk_load  # noqa: E402
from features.registry import Registry  # noqa: E402
from online.redis_store import RedisOnlineStore  # noqa: E402
from serving_api.auth import hash_token, new_token  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402
from tests.serving.conftest import PLAN, publish_rows  # noqa: E402

BODY = json.dumps({"feature_service": "fraud", "entities": {"card_id": [1], "merchant": ["acme"]}}).encode()


def write_repo(root: Path, redis_url: str, token: str | None) -> Path:
    serving = f'serving:\n  tokens:\n    bench: {{hash: "{hash_token(token)}", services: [fraud]}}\n' if token else ""
    root.mkdir(parents=True)
    (root / "skewless.yaml").write_text(
        f"project: authbench\nregistry: sqlite:///.skewless/registry.db\nonline:\n  url: {redis_url}\n{serving}"
    )
    registry = Registry(f"sqlite:///{root}/.skewless/registry.db")
    registry.apply(PLAN)
    registry.close()
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    token = new_token()
    results: dict[str, list[float]] = {"off": [], "on": []}
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        with RedisOnlineStore(redis_url, project="authbench") as store:
            publish_rows(store)
        repos = {
            "off": write_repo(Path(tmp) / "off", redis_url, None),
            "on": write_repo(Path(tmp) / "on", redis_url, token),
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
