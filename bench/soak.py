"""The bounded soak (issue 24): ``skewless serve --workers 2`` under a fixed rate for minutes, while the benchmark
workload is materialized again every 2 minutes.

    python -m bench.soak                         # 10 minutes at 80% of the measured maximum, scale 1.0
    python -m bench.soak --minutes 1 --scale 0.05 --name soak-quick   # a quick look

Starts PostgreSQL and Redis on 127.0.0.1, loads the workload into a generated feature repository under
``bench/.work/`` (as ``bench/run.py`` does), materializes it, starts the server, measures its maximum with 16
connections (closed loop, bodies of 1 and 100 entities alternating, ``bench/http_load.py``), then sends
``--load`` (80%) of that rate open loop (every request due at its time, latency counted from then) for
``--minutes``. Every ``--materialize-every`` minutes a materialization republishes every key (a new version the
server switches to). Per minute: requests, errors, p50 / p99, and the resident memory of the server's process
tree; the growth of that memory after the warm-up. Writes ``bench/results/<name>.md``, ``.json`` and ``.png``
(name: ``<date>-soak``). Everything it starts is stopped at the end; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import http_load  # noqa: E402
from bench.backfill import tree_rss  # noqa: E402
from bench.http_load import percentile  # noqa: E402
from bench.run import (  # noqa: E402
    SKEWLESS_CLI,
    http_body,
    load_postgres,
    log,
    online_users,
    run_measured,
    server,
    write_skewless_repo,
)
from bench.workload import generate  # noqa: E402
from tests.servers import free_port, postgres_server, redis_server  # noqa: E402

RSS_GROWTH_TARGET = 0.05  # the issue's: at most 5% after the warm-up


@dataclass
class Minute:
    """What one minute of the soak saw (requests counted by the minute they were due in)."""

    minute: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rss_mb: float  # the server's tree at the end of the minute
    materializations: int  # started in this minute


@dataclass
class Soak:
    rate: float
    max_rps: float
    minutes: list[Minute] = field(default_factory=list)
    materializations: list[dict[str, Any]] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds from the start, MiB)


def per_minute(
    timed: http_load.Timed, rss: list[tuple[float, float]], materialized_at: list[float], minutes: int
) -> list[Minute]:
    """The requests of an open-loop run and the memory samples, cut into minutes (by when each was due)."""
    latencies: list[list[float]] = [[] for _ in range(minutes)]
    errors = [0] * minutes
    for due, latency, ok in zip(timed.due_s, timed.latencies_s, timed.ok, strict=True):
        m = min(int(due // 60), minutes - 1)
        latencies[m].append(latency)
        errors[m] += not ok
    out = []
    for m in range(minutes):
        inside = [mb for t, mb in rss if t < (m + 1) * 60]
        out.append(
            Minute(
                minute=m + 1,
                requests=len(latencies[m]),
                errors=errors[m],
                p50_ms=round(percentile(latencies[m], 50) * 1000, 3),
                p99_ms=round(percentile(latencies[m], 99) * 1000, 3),
                rss_mb=round(inside[-1], 1) if inside else 0.0,
                materializations=sum(m * 60 <= t < (m + 1) * 60 for t in materialized_at),
            )
        )
    return out


def rss_growth(rss: list[tuple[float, float]], warm_up_s: float) -> float | None:
    """How much the memory grew from the end of the warm-up to the end: the median of the last 30 s of samples
    over the median of the 30 s before the warm-up ended (one sample alone catches a passing peak)."""
    end = rss[-1][0] if rss else 0.0
    before = [mb for t, mb in rss if warm_up_s - 30 <= t < warm_up_s]
    last = [mb for t, mb in rss if t >= end - 30 and t >= warm_up_s]
    if not before or not last:
        return None
    return statistics.median(last) / statistics.median(before) - 1


class Sampler:
    """The resident memory of a process tree every second, from a thread, with the time since ``began``."""

    def __init__(self, pid: int, began: float) -> None:
        self.pid, self.began = pid, began
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((time.perf_counter() - self.began, tree_rss(self.pid) / 2**20))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Materializer:
    """Runs a materialization of the repository every ``every`` seconds (the first one ``every`` s in), in a
    thread, until stopped; each run republishes every key, so the server switches to a new version each time."""

    def __init__(self, repo: Path, every: float, began: float, logs: Path) -> None:
        self.repo, self.every, self.began, self.logs = repo, every, began, logs
        self.runs: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cmd = [
            *("env", "SKEWLESS_ENGINE=here", sys.executable, "-m", "bench.skewless_side", str(self.repo)),
            *("materialize", "--republish"),
        ]
        n = 1
        while not self._stop.wait(max(0.0, self.began + n * self.every - time.perf_counter())):
            at = time.perf_counter() - self.began
            try:
                r = run_measured(cmd, logfile=self.logs / "materialize.log", timeout=self.every * 2)
                self.runs.append({"at_s": round(at, 1), "seconds": round(r["whole_seconds"], 2), "ok": True})
            except Exception as failed:
                self.runs.append({"at_s": round(at, 1), "seconds": None, "ok": False, "error": str(failed)})
            log(f"  materialization at {at:.0f} s: {self.runs[-1]}")
            n += 1

    def __enter__(self) -> Materializer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def prepare_repo(stack: contextlib.ExitStack, work: Path, scale: float, seed: int) -> tuple[Path, list[bytes]]:
    """PostgreSQL and Redis started, the workload loaded, the repository written and materialized; the
    repository and the request bodies (1 entity, then 100)."""
    now = datetime.now(UTC)
    workload = generate(scale, seed, end=now.replace(hour=0, minute=0, second=0, microsecond=0))
    pg_url = stack.enter_context(postgres_server())
    redis_url = stack.enter_context(redis_server())
    load_postgres(pg_url, workload)
    repo = work / "skewless"
    write_skewless_repo(repo, pg_url, redis_url)
    r = run_measured(
        ["env", "SKEWLESS_ENGINE=here", sys.executable, "-m", "bench.skewless_side", str(repo), "materialize"],
        logfile=work / "logs" / "materialize.log",
        timeout=1800,
    )
    log(f"workload: {workload.feature_rows:,} feature rows loaded and materialized ({r['whole_seconds']:.1f} s)")
    bodies = [
        json.dumps(http_body("skewless", online_users(workload, now, 1, size, seed)[0])).encode() for size in (1, 100)
    ]
    return repo, bodies


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began_at = datetime.now(UTC)
    load_start = round(os.getloadavg()[0], 1)
    work = ROOT / "bench" / ".work" / f"soak-{began_at:%Y%m%d-%H%M%S}"
    (work / "logs").mkdir(parents=True)
    minutes = max(1, round(args.minutes))
    with contextlib.ExitStack() as stack:
        repo, bodies = prepare_repo(stack, work, args.scale, args.seed)
        port = free_port()
        command = [str(SKEWLESS_CLI), "serve", "--repo", str(repo), "--workers", "2", "--server", args.server]
        with server([*command, "--port", str(port)], port, logfile=work / "logs" / "server.log") as pid:
            url = f"http://127.0.0.1:{port}/v1/features"
            http_load.run(url, bodies[0], connections=2, seconds=2.0, max_requests=2000)  # warm-up
            closed = http_load.run_alternating(url, bodies, connections=16, seconds=args.max_seconds)
            rate = args.rate or closed.requests_per_s * args.load
            log(
                f"maximum with 16 connections (1 and 100 entities alternating): {closed.requests_per_s:,.0f} req/s; "
                f"soak at {rate:,.0f} req/s for {minutes} min, a materialization every {args.materialize_every:g} min"
            )
            began = time.perf_counter() + 0.05
            with (
                Sampler(pid, began) as sampler,
                Materializer(repo, args.materialize_every * 60, began, work / "logs") as materializer,
            ):
                timed = http_load.run_at_rate(url, bodies, rate=rate, seconds=minutes * 60, connections=256)
    soak = Soak(rate=round(rate, 1), max_rps=round(closed.requests_per_s, 1))
    soak.rss_samples = [(round(t, 1), round(mb, 1)) for t, mb in sampler.samples]
    soak.materializations = materializer.runs
    soak.minutes = per_minute(timed, sampler.samples, [r["at_s"] for r in materializer.runs], minutes)
    growth = rss_growth(sampler.samples, args.warm_up * 60)
    results = {
        "date": began_at.strftime("%Y-%m-%d %H:%M UTC"),
        "config": {
            "minutes": minutes,
            "scale": args.scale,
            "load": args.load,
            "server": args.server,
            "materialize_every_min": args.materialize_every,
            "warm_up_min": args.warm_up,
        },
        "machine": {
            "cores": os.cpu_count(),
            "load_start": load_start,
            "load_end": round(os.getloadavg()[0], 1),
        },
        "rate": soak.rate,
        "max_rps": soak.max_rps,
        "requests": timed.requests,
        "errors": timed.errors,
        "unsent": timed.unsent,
        "rss_growth": None if growth is None else round(growth, 4),
        "minutes": [asdict(m) for m in soak.minutes],
        "materializations": soak.materializations,
        "rss_samples": soak.rss_samples,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{began_at:%Y-%m-%d}-soak"
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    picture = plot(results, out / f"{name}.png")
    markdown = render(results, picture=picture.name)
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    log(f"wrote {out / name}.md, .json and .png")
    return 0 if timed.errors == 0 and timed.unsent == 0 else 1


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The issue's soak targets: (target, measured, met)."""
    growth = results["rss_growth"]
    failed = [r for r in results["materializations"] if not r["ok"]]
    return [
        ("0 errors", f"{results['errors']:,} of {results['requests']:,} requests", results["errors"] == 0),
        (
            "every request sent (the rate kept)",
            f"{results.get('unsent', 0):,} still owed {http_load.LATE_GRACE_S:g} s after the end",
            results.get("unsent", 0) == 0,
        ),
        (
            "server RSS growth after warm-up <= 5%",
            "not measured (too short)" if growth is None else f"{growth:+.1%}",
            None if growth is None else growth <= RSS_GROWTH_TARGET,
        ),
        (
            "every materialization during the soak succeeded",
            f"{len(results['materializations']) - len(failed)} of {len(results['materializations'])}",
            not failed,
        ),
    ]


def render(results: dict[str, Any], *, picture: str | None = None) -> str:
    """The Markdown report of a soak's results (the dict written as JSON)."""
    config, machine = results["config"], results["machine"]
    lines = [
        f"# Soak, {results['date']}",
        "",
        f"`skewless serve --workers 2 --server {config['server']}` for {config['minutes']} min at "
        f"{results['rate']:,.0f} req/s open loop over 256 connections ({config['load']:.0%} of the "
        f"{results['max_rps']:,.0f} req/s measured with 16 connections, closed loop), request bodies of 1 and 100 "
        "entities alternating; a materialization of "
        f"the benchmark workload (scale {config['scale']}, every key republished) every "
        f"{config['materialize_every_min']:g} min. Latency counts from when a request was due. RSS: the server's "
        f"process tree. Warm-up: the first {config['warm_up_min']:g} min. Machine: {machine['cores']} cores, shared "
        f"with other work: load average (1 min) {machine['load_start']} at the start, {machine['load_end']} at the "
        "end; the load generator runs on the same cores.",
        "",
        *([f"![p99 and RSS per minute]({picture})", ""] if picture else []),
        "| minute | requests | errors | p50 (ms) | p99 (ms) | server RSS (MiB) | materializations started |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results["minutes"]:
        lines.append(
            f"| {m['minute']} | {m['requests']:,} | {m['errors']:,} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
            f"{m['rss_mb']:,.1f} | {m['materializations']} |"
        )
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for target, measured, met in verdicts(results):
        lines.append(f"| {target} | {measured} | {'n/a' if met is None else ('yes' if met else '**no**')} |")
    runs = results["materializations"]
    if runs:
        done = [f"{r['at_s']:.0f} s: {r['seconds']} s" if r["ok"] else f"{r['at_s']:.0f} s: failed" for r in runs]
        lines += ["", "Materializations (when, from the start of the soak: whole-process time): " + ", ".join(done)]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path:
    """p99 per minute and the server's RSS over time, one above the other, materializations marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), dpi=110, sharex=True)
    minutes = results["minutes"]
    ends = [m["minute"] for m in minutes]
    top.plot(ends, [m["p99_ms"] for m in minutes], marker="o", color="#4878a8", label="p99")
    top.plot(ends, [m["p50_ms"] for m in minutes], marker=".", color="#999999", label="p50")
    top.set_ylabel("latency (ms)")
    top.set_yscale("log")
    top.legend(fontsize=8)
    top.set_title(
        f"soak {results['date']}: {results['rate']:,.0f} req/s, {results['errors']} errors in "
        f"{results['requests']:,} requests",
        fontsize=10,
    )
    samples = results["rss_samples"]
    bottom.plot([t / 60 for t, _ in samples], [mb for _, mb in samples], color="#e0883a")
    bottom.set_ylabel("server RSS (MiB)")
    bottom.set_xlabel("minutes (a point: the minute ending there; dashed: a materialization started)")
    for axes in (top, bottom):
        for r in results["materializations"]:
            axes.axvline(r["at_s"] / 60, color="grey", linestyle="--", linewidth=0.8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the soak runs (whole minutes)")
    parser.add_argument("--scale", type=float, default=1.0, help="the workload's scale (1.0: 2M feature rows)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--load", type=float, default=0.8, help="the rate, as a share of the measured maximum")
    parser.add_argument("--rate", type=float, default=None, help="a fixed rate (req/s) instead of --load")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="how long the maximum is measured")
    parser.add_argument("--materialize-every", type=float, default=2.0, help="minutes between materializations")
    parser.add_argument("--warm-up", type=float, default=1.0, help="minutes before the memory growth is counted")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--name", default=None, help="results file name (default: <date>-soak)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
