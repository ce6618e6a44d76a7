"""What the served-feature log costs a 1-entity lookup: ``skewless serve`` (1 worker) with every lookup logged
(``serving.log.sample_rate: 1``) against the log off, the same server code, in interleaved rounds (off, on, off,
on, ...) on a real redis-server.

    python -m bench.log_cost --rounds 3 --seconds 8

Each round measures req/s and p99 under 16 connections (wrk) and p99 one request at a time
(``bench/http_load.py``). Writes ``bench/results/<date>-served-log.json`` and ``.md``: medians, spread, and the
issue's targets (logged req/s >= 90% of unlogged, p99 at most 10% higher).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.http_load import run as http_run  # noqa: E402
from bench.run import SKEWLESS_CLI, log, server, wrk_load  # noqa: E402
from features.config import RepoConfig  # noqa: E402
from features.served_log import landing_dir, write_lines  # noqa: E402
from online.redis_store import RedisOnlineStore  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402
from tests.serving.conftest import publish_rows, write_repo  # noqa: E402

BODY = json.dumps({"feature_service": "fraud", "entities": {"card_id": [1], "merchant": ["acme"]}}).encode()
METRICS = ("rps_16", "p99_16_ms", "p99_seq_ms", "cpu_us_per_request")


def _repo(tmp: str, name: str, redis_url: str, serving: str) -> Path:
    (Path(tmp) / name).mkdir()
    return write_repo(Path(tmp) / name, redis_url, "logbench", serving)


def logged_lookups(repo: Path) -> int:
    folder = landing_dir(RepoConfig.load(repo))
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("*.jsonl"))  # a line per lookup


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system, every thread) of process ``pid`` so far: what a request costs the server,
    whatever else the machine runs (req/s and latencies move with the load of the other processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(repo: Path, tmp: Path, seconds: float) -> dict[str, float]:
    port = free_port()
    command = [str(SKEWLESS_CLI), "serve", "--repo", str(repo), "--port", str(port)]
    with server(command, port, logfile=tmp / "s.log") as pid:  # one worker: the server's own process
        url = f"http://127.0.0.1:{port}/v1/features"
        wrk_load(url, BODY, 2, tmp)  # warm up
        cpu = cpu_seconds(pid)
        rps, p99, errors = wrk_load(url, BODY, seconds, tmp)
        cpu = cpu_seconds(pid) - cpu
        seq = http_run(url, BODY, connections=1, seconds=min(seconds, 5.0), max_requests=3000)
    if errors or seq.errors:
        raise SystemExit(f"{errors + seq.errors} answers were not 200 ({repo.name})")
    return {
        "rps_16": rps,
        "p99_16_ms": p99,
        "p99_seq_ms": seq.percentile_ms(99),
        "cpu_us_per_request": cpu / (rps * seconds) * 1e6,
    }


def in_process_costs(lookups: int = 4000) -> dict[str, float]:
    """The log's own work per lookup without the noise of a shared machine: ``offer`` on the request path (best of
    5 x 100,000 calls, the answer's bytes given as the service hands them) and the flusher's (one batch of
    ``lookups`` lines joined and written, best of 5), in µs."""
    import time

    from features.dtypes import DType
    from features.lookup import FeatureValues, LookupResult
    from serving_api.served_log import ServedLog

    now = 1_700_000_000_000_000
    features = {
        "card__limit": FeatureValues(DType.FLOAT64, [1000.0], ["present"], [now]),
        "merchant__risk": FeatureValues(DType.INT64, [7], ["present"], [now]),
    }
    result = LookupResult(1, {"card_id": [1], "merchant": ["acme"]}, features, {"card": "1", "merchant": "1"}, now)
    offer, flush = float("inf"), float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        config = RepoConfig(root=Path(tmp))
        for _ in range(5):
            served = ServedLog(lambda lines: write_lines(config, lines), sample_rate=1.0, queue_size=10**6)
            answer = orjson.dumps(result.to_dict())
            began = time.perf_counter()
            for _ in range(100_000):
                served.offer("0123456789abcdef", "fraud", result, None, answer)
            offer = min(offer, (time.perf_counter() - began) / 100_000 * 1e6)
            served._queue = type(served._queue)(list(served._queue)[:lookups])
            began = time.perf_counter()
            served.flush()
            flush = min(flush, (time.perf_counter() - began) / lookups * 1e6)
    return {"offer_us": offer, "flush_us_per_lookup": flush}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-served-log"))
    args = parser.parse_args()
    load_start = round(os.getloadavg()[0], 1)
    rounds: list[dict[str, Any]] = []
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        with RedisOnlineStore(redis_url, project="logbench") as store:
            publish_rows(store)
        repos = {
            "off": _repo(tmp, "off", redis_url, ""),
            "on": _repo(tmp, "on", redis_url, "  log:\n    sample_rate: 1\n"),
        }
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                before = logged_lookups(repos[mode])
                result = {"round": round_, "log": mode, **measure(repos[mode], Path(tmp), args.seconds)}
                result["logged_lookups"] = logged_lookups(repos[mode]) - before
                rounds.append(result)
                log(json.dumps(result))
    summary = {
        mode: {
            metric: {
                "median": statistics.median(r[metric] for r in rounds if r["log"] == mode),
                "min": min(r[metric] for r in rounds if r["log"] == mode),
                "max": max(r[metric] for r in rounds if r["log"] == mode),
            }
            for metric in METRICS
        }
        for mode in ("off", "on")
    }
    off, on = summary["off"], summary["on"]
    ratios = {
        "rps_on_over_off": on["rps_16"]["median"] / off["rps_16"]["median"],
        "p99_16_on_over_off": on["p99_16_ms"]["median"] / off["p99_16_ms"]["median"],
        "p99_seq_on_over_off": on["p99_seq_ms"]["median"] / off["p99_seq_ms"]["median"],
        "cpu_on_over_off": on["cpu_us_per_request"]["median"] / off["cpu_us_per_request"]["median"],
    }
    targets = {
        "req/s with every lookup logged >= 90% of unlogged": ratios["rps_on_over_off"] >= 0.9,
        "p99 (16 connections) grows <= 10%": ratios["p99_16_on_over_off"] <= 1.1,
        "p99 (one at a time) grows <= 10%": ratios["p99_seq_on_over_off"] <= 1.1,
    }
    costs = in_process_costs()
    # against the server's CPU per unlogged request (the wall time per request at its req/s hides the idle time)
    costs["share_of_a_request_pct"] = (
        100 * (costs["offer_us"] + costs["flush_us_per_lookup"]) / off["cpu_us_per_request"]["median"]
    )
    data = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "in_process": costs,
        "rounds": rounds,
        "summary": summary,
        "ratios": ratios,
        "targets": targets,
        "seconds": args.seconds,
        "load_average": [load_start, round(os.getloadavg()[0], 1)],
        "cores": os.cpu_count(),
    }
    Path(args.out + ".json").write_text(json.dumps(data, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(data))
    print(markdown(data))
    return 0


def markdown(data: dict[str, Any]) -> str:
    names = {
        "rps_16": "req/s, 16 connections",
        "p99_16_ms": "p99, 16 connections (ms)",
        "p99_seq_ms": "p99, one at a time (ms)",
        "cpu_us_per_request": "server CPU per request, 16 connections (µs)",
    }
    lines = [
        f"# The served-feature log's cost, {data['date']}",
        "",
        "`python -m bench.log_cost`: `skewless serve` (1 worker), 1-entity lookups of the `fraud` service (2 views),"
        " every lookup logged (`serving.log.sample_rate: 1`, flush every second) or the log off;"
        f" {len(data['rounds']) // 2} interleaved rounds of {data['seconds']:g} s under wrk (16 connections) and up"
        " to 5 s one request at a time;"
        f" {data['cores']} cores, load average {data['load_average'][0]} -> {data['load_average'][1]}.",
        "",
        "| metric | log off: median (min-max) | every lookup logged: median (min-max) | on / off |",
        "| --- | ---: | ---: | ---: |",
    ]
    ratio = {
        "rps_16": "rps_on_over_off",
        "p99_16_ms": "p99_16_on_over_off",
        "p99_seq_ms": "p99_seq_on_over_off",
        "cpu_us_per_request": "cpu_on_over_off",
    }
    for metric in METRICS:
        off, on = data["summary"]["off"][metric], data["summary"]["on"][metric]
        lines.append(
            f"| {names[metric]} | {off['median']:,.2f} ({off['min']:,.2f}-{off['max']:,.2f}) | "
            f"{on['median']:,.2f} ({on['min']:,.2f}-{on['max']:,.2f}) | {data['ratios'][ratio[metric]]:.3f} |"
        )
    costs = data["in_process"]
    lines += [
        "",
        f"In-process, the log's own work measured alone: `offer` on the request path {costs['offer_us']:.2f} µs "
        f"(the lookup's JSON line); the batch written (in a thread) {costs['flush_us_per_lookup']:.2f} µs per lookup; "
        f"together {costs['share_of_a_request_pct']:.1f}% of the server's CPU per unlogged request.",
    ]
    lines += ["", "Targets (issue 22):", ""]
    lines += [f"- {name}: {'met' if met else 'NOT met'}" for name, met in data["targets"].items()]
    lines += ["", "Rounds (logged lookups: lines in the landing folder; warm-up requests included):", ""]
    lines += ["| round | log | req/s | p99 16 conn. (ms) | p99 one at a time (ms) | CPU µs/request | logged lookups |"]
    lines += ["| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["rounds"]:
        lines.append(
            f"| {r['round']} | {r['log']} | {r['rps_16']:,.0f} | {r['p99_16_ms']:.2f} | {r['p99_seq_ms']:.2f} | "
            f"{r['cpu_us_per_request']:.0f} | {r['logged_lookups']:,} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
