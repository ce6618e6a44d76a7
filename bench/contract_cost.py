"""What naming a training contract costs a 1-entity lookup, and what keeping a second version costs in Redis.

    python bench/contract_cost.py --rounds 3 --seconds 8

One ``skewless serve`` (1 worker) on a real redis-server; wrk (16 connections) sends the feature service
``fraud`` without and with ``"contract"`` in alternating rounds against the same server. The issue's target: a
cost of at most 5% of req/s. Then the bytes Redis holds for a view's snapshot of N entities, and for the same
rows kept a second time under a kept version's online name (``<view>@<fingerprint>``, what a contract's earlier
definition is served from): a live lookup reads neither more keys nor other keys because of it (the store reads
the keys of the view plans it is given, and only a lookup under a contract is given the kept one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import SKEWLESS_CLI, log, server, wrk_load  # noqa: E402
from features.registry import Registry  # noqa: E402
from online.redis_store import RedisOnlineStore  # noqa: E402
from tests.online.plans import publish  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402
from tests.serving.conftest import CARD, PLAN, publish_rows, write_repo  # noqa: E402

PLAIN = json.dumps({"feature_service": "fraud", "entities": {"card_id": [1], "merchant": ["acme"]}}).encode()
UNDER_CONTRACT = json.dumps({"contract": "fraud_v1", "entities": {"card_id": [1], "merchant": ["acme"]}}).encode()


def register_contract(root: Path) -> None:
    """The contract a training set of the service ``fraud`` would register (fingerprints from the applied plan)."""
    registry = Registry(f"sqlite:///{root}/.skewless/registry.db")
    fingerprints = {str(ref): PLAN.feature_plan(ref).fingerprint for ref in PLAN.service("fraud").features}
    fields = {"name": "fraud_v1", "plan_version": 1, "plan_fingerprint": PLAN.fingerprint}
    registry.register_contract({**fields, "fingerprints": fingerprints, "manifest": ""}, by="bench")
    registry.close()


def snapshot_bytes(store: RedisOnlineStore, entities: int) -> dict[str, int]:
    """Redis's used memory for CARD's live snapshot of ``entities`` rows, then for the same rows kept again."""
    rows = [
        {"card_id": i, "limit": 1000.0 + i, "tier": "gold", "event_timestamp": datetime(2024, 1, 1, tzinfo=UTC)}
        for i in range(entities)
    ]
    client = store.client()
    client.flushdb()
    base = int(client.info("memory")["used_memory"])
    assert publish(store, CARD, rows)
    live = int(client.info("memory")["used_memory"]) - base
    kept_view = dataclasses.replace(CARD, online_key=f"card@{CARD.storage_fingerprint[:12]}")
    assert publish(store, kept_view, rows)
    kept = int(client.info("memory")["used_memory"]) - base - live
    return {"entities": entities, "live_snapshot_bytes": live, "kept_version_bytes": kept}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--entities", type=int, default=100_000)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"plain": [], "contract": []}
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        with RedisOnlineStore(redis_url, project="contractbench") as store:
            publish_rows(store)
        root = write_repo(Path(tmp), redis_url, "contractbench")
        register_contract(root)
        port = free_port()
        command = [str(SKEWLESS_CLI), "serve", "--repo", str(root), "--port", str(port)]
        with server(command, port, logfile=Path(tmp) / "serve.log"):
            url = f"http://127.0.0.1:{port}/v1/features"
            for body in (PLAIN, UNDER_CONTRACT):
                wrk_load(url, body, 2, Path(tmp))  # warm up both paths
            for round_ in range(args.rounds):
                for name, body in (("plain", PLAIN), ("contract", UNDER_CONTRACT)):
                    rps, p99, errors = wrk_load(url, body, args.seconds, Path(tmp))
                    if errors:
                        raise SystemExit(f"{errors} answers were not 2xx ({name})")
                    results[name].append(rps)
                    log(json.dumps({"round": round_, "lookup": name, "requests_per_s": rps, "p99_ms": p99}))
        with RedisOnlineStore(redis_url, project="contractmemory") as store:
            memory = snapshot_bytes(store, args.entities)
    plain, contract = statistics.median(results["plain"]), statistics.median(results["contract"])
    spread = {k: [round(min(v)), round(max(v))] for k, v in results.items()}
    print(
        json.dumps(
            {
                "median_rps_plain": round(plain),
                "median_rps_contract": round(contract),
                "cost_pct": round(100 * (1 - contract / plain), 1),
                "min_max_rps": spread,
                **memory,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
