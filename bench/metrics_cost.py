"""What ``/metrics`` costs a 1-entity lookup: ``skewless serve --workers 2`` with ``serving.metrics`` on (every
request counted and timed, in prometheus_client's multiprocess mode) and off, measured with wrk (16 connections)
in interleaved rounds (off then on, on then off, ...) on the same machine and redis-server.

    python bench/metrics_cost.py --rounds 6 --seconds 5

Prints one JSON line per round, then the medians and spreads, then two measurements less exposed to a shared
machine's noise, in multiprocess mode: the per-request metric work alone (one request's count and latency, and
the statuses of a 2-view answer; best of 5 x 100,000) and its share of a request at the median req/s; and the
whole lookup in-process (the app called as a server calls it, real Redis), metrics on and off in alternating
rounds (:func:`app_microseconds`). The issue's target is a cost of at most 3% of req/s. About 3 minutes.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import SKEWLESS_CLI, log, server, wrk_load  # noqa: E402
from features.dtypes import DType  # noqa: E402
from features.lookup import FeatureValues, LookupResult  # noqa: E402
from online.redis_store import RedisOnlineStore  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402
from tests.serving.conftest import publish_rows, write_repo  # noqa: E402

BODY = json.dumps({"feature_service": "fraud", "entities": {"card_id": [1], "merchant": ["acme"]}}).encode()
WORKERS = "2"


def metric_work_microseconds(calls: int = 100_000) -> float:
    """One request's metric work, in µs (best of 5 runs of ``calls``), in multiprocess mode (memory-mapped files,
    as with several workers): the request counted and timed, and a 1-entity answer of 2 views' statuses."""
    assert "prometheus_client.values" not in sys.modules, "multiprocess mode is chosen when the client is imported"
    from serving_api.metrics import SERVICE, service_metrics

    metrics = service_metrics()
    SERVICE.set("fraud")
    present = ["present"]
    result = LookupResult(
        plan_version=1,
        entities={"card_id": [1], "merchant": ["acme"]},
        features={
            "card__limit": FeatureValues(DType.FLOAT64, [1.0], present, [0]),
            "card__tier": FeatureValues(DType.STRING, ["gold"], present, [0]),
            "merchant__risk": FeatureValues(DType.INT64, [7], present, [0]),
        },
    )

    async def measure() -> float:  # on an event loop, as in a worker (the copy of the counts is scheduled there)
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(calls):
                metrics.answered("/v1/features", 200, 0.0003)
                metrics.served(result)
            best = min(best, (time.perf_counter() - began) / calls * 1e6)
        return best

    return asyncio.run(measure())


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its descendants (the server and its workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for children in Path(f"/proc/{current}/task").glob("*/children"):
                pending += [int(c) for c in children.read_text().split()]
        except OSError:
            continue  # gone meanwhile
    return total


def app_microseconds(redis_url: str, rounds: int = 16, requests: int = 1500) -> dict[str, float]:
    """The whole in-process lookup (``ServingApp`` called as the server calls it: the gate, the lookup, the
    Redis round trip on a real redis-server, the answer), metrics on and off, in alternating rounds of
    ``requests`` one at a time: the median µs per request of each, in wall time and in this thread's CPU time
    (which the waits for Redis and the other processes of the machine do not inflate). Fewer moving parts than two
    servers and wrk."""
    from serving_api.app import create_app
    from tests.serving.conftest import plan_version

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    scope = {"type": "http", "method": "POST", "path": "/v1/features", "root_path": "", "headers": headers}
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    async def measure() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        times: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}  # this thread's CPU time: not the waits, not others
        with RedisOnlineStore(redis_url, project="metricsbench") as store:
            apps = {
                setting: create_app(plan_provider=plan_version, store=store, metrics=setting == "on")
                for setting in ("off", "on")
            }
            for round_ in range(rounds):
                for setting in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                    began, began_cpu = time.perf_counter(), time.thread_time()
                    for _ in range(requests):
                        await apps[setting](dict(scope), receive, send)  # type: ignore[arg-type]
                    times[setting].append((time.perf_counter() - began) / requests * 1e6)
                    cpu[setting].append((time.thread_time() - began_cpu) / requests * 1e6)
        return times, cpu

    times, cpu = asyncio.run(measure())
    if set(statuses) != {200}:
        raise SystemExit(f"in-process lookups answered {sorted(set(statuses))}")
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {
        "app_us_metrics_off": round(off, 1),
        "app_us_metrics_on": round(on, 1),
        "app_cost_pct": round(100 * (on / off - 1), 2),
        "app_cpu_us_metrics_off": round(statistics.median(cpu["off"]), 1),
        "app_cpu_us_metrics_on": round(statistics.median(cpu["on"]), 1),
        "app_cpu_cost_pct": round(100 * (statistics.median(cpu["on"]) / statistics.median(cpu["off"]) - 1), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}  # the server's CPU µs per request answered
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        with RedisOnlineStore(redis_url, project="metricsbench") as store:
            publish_rows(store)
        repos = {}
        for setting in ("off", "on"):
            (Path(tmp) / setting).mkdir()
            serving = f"  metrics: {'true' if setting == 'on' else 'false'}\n"
            repos[setting] = write_repo(Path(tmp) / setting, redis_url, "metricsbench", serving)
        for round_ in range(args.rounds):
            # Which goes first alternates too: on a shared machine the second server of a pair was often slower.
            for setting in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                port = free_port()
                command = [str(SKEWLESS_CLI), "serve", "--repo", str(repos[setting]), "--port", str(port)]
                log_file = Path(tmp) / f"serve-{setting}.log"
                with server([*command, "--workers", WORKERS], port, logfile=log_file) as pid:
                    url = f"http://127.0.0.1:{port}/v1/features"
                    wrk_load(url, BODY, 2, Path(tmp))  # warm up
                    used = cpu_seconds(pid)
                    rps, p99, errors = wrk_load(url, BODY, args.seconds, Path(tmp))
                    used = cpu_seconds(pid) - used
                if errors or not rps:
                    raise SystemExit(f"{errors} answers were not 2xx, {rps} req/s with metrics {setting}")
                # CPU time per request is less exposed than req/s to the other work on a shared machine.
                cpu[setting].append(round(used / (rps * args.seconds) * 1e6, 1))
                results[setting].append(rps)
                row = {"round": round_, "metrics": setting, "requests_per_s": rps, "p99_ms": p99}
                log(json.dumps(row | {"server_cpu_us_per_request": cpu[setting][-1]}))
        with tempfile.TemporaryDirectory() as folder:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # as with several workers
            work = metric_work_microseconds()
            in_process = app_microseconds(redis_url)
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    print(
        json.dumps(
            {
                "workers": int(WORKERS),
                "rps_metrics_off": results["off"],
                "rps_metrics_on": results["on"],
                "median_rps_metrics_off": off,
                "median_rps_metrics_on": on,
                "spread_pct_off": round(100 * (max(results["off"]) - min(results["off"])) / off, 1),
                "spread_pct_on": round(100 * (max(results["on"]) - min(results["on"])) / on, 1),
                "cost_pct": round(100 * (1 - on / off), 1),
                "median_pair_cost_pct": round(
                    100 * (1 - statistics.median(b / a for a, b in zip(results["off"], results["on"], strict=True))), 1
                ),
                "server_cpu_us_per_request_off": cpu["off"],
                "server_cpu_us_per_request_on": cpu["on"],
                "cpu_cost_pct": round(100 * (statistics.median(cpu["on"]) / statistics.median(cpu["off"]) - 1), 1),
                "load_average": os.getloadavg(),
            }
        )
    )
    # The wall time per request at the median req/s: with 2 workers each request has about twice that in a
    # worker, so the share below is an upper bound.
    per_request_us = 1e6 / off
    print(
        json.dumps(
            {
                "metric_work_us": round(work, 2),
                "request_us_at_median_rps": round(per_request_us, 1),
                "metric_work_pct_at_most": round(100 * work / per_request_us, 2),
                **in_process,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
