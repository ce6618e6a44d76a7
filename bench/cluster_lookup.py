"""Lookups on a Redis Cluster beside a single redis-server: the same 2-view service (``card`` and ``merchant``), the
same rows, on one redis-server and on a cluster of 3 primaries and 3 replicas (every node a redis-server on this
machine's loopback, as the tests start them).

    python bench/cluster_lookup.py --rounds 6 --seconds 5

Two measurements, each in interleaved rounds (single then cluster, cluster then single, ...) because the machine is
shared and drifts:

- HTTP: ``skewless serve --workers 2`` on each store, wrk with 16 connections for ``--seconds``: req/s and p99;
- in-process: :meth:`RedisOnlineStore.read` (the blocking read, one call at a time) for 1 and 100 entities of both
  views: median µs per call of each round; and :meth:`RedisOnlineStore.read_async` (the serving path), 16 reads at
  a time on one event loop: reads per second. Less exposed than HTTP to the other work of a shared machine.

Prints one JSON line per round, then the medians with their spread (max - min over the median, in %), and on which
primaries the two views landed (on different ones a read is two round trips, sent at once). About 2 minutes with
the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from tests.servers import free_port, redis_cluster, redis_server  # noqa: E402
from tests.serving.conftest import CARD, MERCHANT, publish_rows, write_repo  # noqa: E402

BODY = json.dumps({"feature_service": "fraud", "entities": {"card_id": [1], "merchant": ["acme"]}}).encode()
WORKERS = "2"
STORES = ("single", "cluster")


def read_microseconds(store: RedisOnlineStore, entities: int, calls: int) -> float:
    """Median µs of ``calls`` blocking reads of ``entities`` entities of both views."""
    requests = [(CARD, ["limit", "tier"]), (MERCHANT, ["risk"])]
    keys = {"card_id": list(range(entities)), "merchant": [f"m{i}" for i in range(entities)]}
    store.read(requests, keys)  # the Lua read once; the rest are MGETs
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        store.read(requests, keys)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def async_reads_per_s(store: RedisOnlineStore, concurrency: int, calls: int) -> float:
    """1-entity reads of both views per second through ``read_async`` (the serving path: one pipelined connection
    per node and event loop), ``concurrency`` at a time on one event loop, as a worker under load runs them."""
    requests = [(CARD, ["limit", "tier"]), (MERCHANT, ["risk"])]
    keys = {"card_id": [1], "merchant": ["acme"]}

    async def worker(count: int) -> None:
        for _ in range(count):
            await store.read_async(requests, keys)

    async def main() -> float:
        await store.read_async(requests, keys)
        started = time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        return (calls // concurrency) * concurrency / (time.perf_counter() - started)

    return asyncio.run(main())


def two_primaries_project(cluster: Any) -> str:
    """A project name whose two views land on two primaries: the cluster's read is then a fan-out to two nodes,
    the case that costs more than one round trip."""
    for i in range(100):
        project = f"clusterbench{i}"
        if cluster.primary_of(f"{{{project}:{CARD.name}}}") != cluster.primary_of(f"{{{project}:{MERCHANT.name}}}"):
            return project
    raise SystemExit("no project name of 100 puts the two views on two primaries")


def spread_pct(values: list[float]) -> float:
    return round(100 * (max(values) - min(values)) / statistics.median(values), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=2000, help="in-process reads per round and size")
    args = parser.parse_args()
    rps: dict[str, list[float]] = {s: [] for s in STORES}
    p99: dict[str, list[float]] = {s: [] for s in STORES}
    reads: dict[str, list[float]] = {f"{s}_{n}": [] for s in STORES for n in (1, 100)}
    async_rps: dict[str, list[float]] = {s: [] for s in STORES}
    failed: list[dict[str, Any]] = []
    with redis_server() as single_url, redis_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        urls = {"single": single_url, "cluster": cluster.url}
        project = two_primaries_project(cluster)
        repos: dict[str, Path] = {}
        stores: dict[str, RedisOnlineStore] = {}
        for name in STORES:
            stores[name] = RedisOnlineStore(urls[name], project=project)
            publish_rows(stores[name])
            (Path(tmp) / name).mkdir()
            repos[name] = write_repo(Path(tmp) / name, urls[name], project)
        primaries = {v.name: cluster.primary_of(stores["cluster"].keys_of(v.name).pointer) for v in (CARD, MERCHANT)}
        log(f"cluster: project {project}, views on primaries {primaries}")
        for round_ in range(args.rounds):
            for name in STORES if round_ % 2 == 0 else STORES[::-1]:
                port = free_port()
                command = [str(SKEWLESS_CLI), "serve", "--repo", str(repos[name]), "--port", str(port)]
                with server([*command, "--workers", WORKERS], port, logfile=Path(tmp) / f"serve-{name}.log"):
                    url = f"http://127.0.0.1:{port}/v1/features"
                    wrk_load(url, BODY, 2, Path(tmp))  # warm up
                    got, latency, errors = wrk_load(url, BODY, args.seconds, Path(tmp))
                row: dict[str, Any] = {"round": round_, "store": name, "requests_per_s": got, "p99_ms": latency}
                if errors or not got:  # the machine is shared: a round starved of CPU is reported, not averaged
                    failed.append(row | {"non_2xx": errors})
                    log(f"round {round_} on the {name} store left out: {errors} answers not 2xx, {got} req/s")
                else:
                    rps[name].append(got)
                    p99[name].append(latency)
                for entities in (1, 100):
                    reads[f"{name}_{entities}"].append(round(read_microseconds(stores[name], entities, args.calls), 1))
                    row[f"read_us_{entities}"] = reads[f"{name}_{entities}"][-1]
                async_rps[name].append(round(async_reads_per_s(stores[name], 16, 4 * args.calls)))
                row["async_reads_per_s_16"] = async_rps[name][-1]
                log(json.dumps(row))
        for store in stores.values():
            store.close()
    summary: dict[str, Any] = {"workers": int(WORKERS), "views_on_primaries": primaries}
    # Per round, the cluster over the single server: the two were measured seconds apart, so the machine's drift
    # cancels more than in the medians.
    for name in STORES:
        for entities in (1, 100):
            values = reads[f"{name}_{entities}"]
            summary[f"median_read_us_{entities}_{name}"] = statistics.median(values)
            summary[f"spread_pct_read_{entities}_{name}"] = spread_pct(values)
        summary[f"median_async_reads_per_s_{name}"] = statistics.median(async_rps[name])
        summary[f"spread_pct_async_{name}"] = spread_pct(async_rps[name])
    for entities in (1, 100):
        ratios = [c / s for c, s in zip(reads[f"cluster_{entities}"], reads[f"single_{entities}"], strict=True)]
        summary[f"median_pair_ratio_read_{entities}"] = round(statistics.median(ratios), 2)
    ratios = [c / s for c, s in zip(async_rps["cluster"], async_rps["single"], strict=True)]
    summary["median_pair_ratio_async"] = round(statistics.median(ratios), 2)
    for name in STORES:  # rounds starved of CPU are left out (listed below)
        summary[f"median_rps_{name}"] = statistics.median(rps[name]) if rps[name] else None
        summary[f"spread_pct_rps_{name}"] = spread_pct(rps[name]) if rps[name] else None
        summary[f"median_p99_ms_{name}"] = statistics.median(p99[name]) if p99[name] else None
    summary["rps_single"], summary["rps_cluster"] = rps["single"], rps["cluster"]
    summary["rounds_left_out"] = failed
    summary["load_average"] = os.getloadavg()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
