"""Driver memory of a materialization at two scales (issue 4: "driver memory flat from 2M to 20M rows").

    python -m bench.driver_memory                      # scales 1 and 10: 2M and 20M feature rows
    python -m bench.driver_memory --scales 0.05,0.5    # a quick look

In Spark's local mode one JVM is driver and executor at once, so its memory grows with what the executors'
sorts hold and says nothing about the driver. Here Spark runs as ``local-cluster[1,2,3072]``: the driver JVM
in the command's process (1 GiB heap), one executor JVM (2 cores, 3 GiB) started by it, as on a cluster.
Every 0.2 s the resident memory of each part is sampled: the Python driver (the ``skewless`` process), the
driver JVM, and the executor with its Python workers. For each scale: the workload is generated
(bench/workload.py), loaded into a PostgreSQL started here, and materialized into an empty Redis started here,
once. Writes
``bench/results/<name>.md`` and ``.json`` (name: ``<date>-driver-memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.backfill import PeakRss, process_table, tree_rss  # noqa: E402
from bench.run import load_postgres, log, write_skewless_repo  # noqa: E402
from bench.workload import generate  # noqa: E402
from tests.servers import postgres_server, redis_server  # noqa: E402

MASTER = "local-cluster[1,2,3072]"
# The driver gets 1 GiB (skewless's local default is 4): finishing 20M rows with it shows it holds no rows.
SPARK = {"spark.master": MASTER, "spark.driver.memory": "1g"}
PARTS = ("python driver", "driver JVM", "executor (JVM and Python workers)")
GROWTH_LIMIT = 1.25  # "flat": the driver at the larger scale within 25% of the smaller one (sampling noise)


class RoleRss(PeakRss):
    """Peak resident memory of a command's parts: itself, its JVM children, and their children (executors)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid, every=0.2)
        self.parts = dict.fromkeys(PARTS, 0)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            table = process_table()
            children, rss = table
            jvms = [c for c in children.get(self.pid, []) if "java" in _cmdline(c)]
            now = {
                PARTS[0]: rss.get(self.pid, 0),
                PARTS[1]: sum(rss.get(j, 0) for j in jvms),
                PARTS[2]: sum(tree_rss(k, table) for j in jvms for k in children.get(j, [])),
            }
            for part, value in now.items():
                self.parts[part] = max(self.parts[part], value)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def measure(scale: float, seed: int, work: Path) -> dict[str, Any]:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    workload = generate(scale, seed, end=end)
    log(f"scale {scale}: {workload.feature_rows:,} feature rows, {workload.users:,} users")
    repo = work / f"scale-{scale}"
    with postgres_server() as pg, redis_server() as rd:
        began = time.perf_counter()
        load_postgres(pg, workload)
        log(f"  loaded PostgreSQL in {time.perf_counter() - began:.1f} s")
        write_skewless_repo(repo, pg, rd, spark=SPARK, arrow_materialize=False)  # Spark's driver is measured
        command = [sys.executable, "-m", "bench.skewless_side", str(repo), "materialize", "--fresh"]
        began = time.perf_counter()
        with open(work / f"scale-{scale}.log", "ab") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, start_new_session=True)
            with RoleRss(proc.pid) as rss:
                out, _ = proc.communicate(timeout=3600)
        seconds = time.perf_counter() - began
        if proc.returncode != 0 or b"RESULT " not in out:
            raise SystemExit(f"materialize failed at scale {scale} ({proc.returncode}); see {work}")
        text = out.decode()
        result = json.loads(text[text.rindex("RESULT ") + 7 :].splitlines()[0])
    peaks = {part: round(value / 2**20) for part, value in rss.parts.items()}
    log(f"  materialized in {seconds:.1f} s; peak MiB {peaks}")
    return {
        "scale": scale,
        "feature_rows": workload.feature_rows,
        "users": workload.users,
        "whole_seconds": round(seconds, 1),
        "rows_published": result["rows_published"],
        "peak_mib": peaks,
    }


def render(runs: list[dict[str, Any]], date: str) -> str:
    lines = [
        f"# Driver memory while materializing, {date}",
        "",
        f"Spark as `{MASTER}`: the driver JVM in the command's process (1 GiB heap), one executor JVM (2 cores,",
        "3 GiB) as on a cluster, so the driver's memory is measured apart from the executors'. Peak resident memory",
        "of each part, sampled every 0.2 s; one materialization of both views into an empty Redis per scale.",
        f"Machine: {os.cpu_count()} cores.",
        "",
        "| feature rows | users | whole process (s) | " + " | ".join(f"{p} (MiB)" for p in PARTS) + " |",
        "| ---: | ---: | ---: | " + " | ".join("---:" for _ in PARTS) + " |",
    ]
    for run in runs:
        peaks = run["peak_mib"]
        lines.append(
            f"| {run['feature_rows']:,} | {run['users']:,} | {run['whole_seconds']} | "
            + " | ".join(f"{peaks[p]:,}" for p in PARTS)
            + " |"
        )
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        driver = [r["peak_mib"][PARTS[0]] + r["peak_mib"][PARTS[1]] for r in (small, large)]
        growth = driver[1] / max(driver[0], 1)
        met = "yes" if growth <= GROWTH_LIMIT else "**no**"
        lines += [
            "",
            "| target | measured | met |",
            "| --- | --- | --- |",
            f"| driver memory flat from {small['feature_rows']:,} to {large['feature_rows']:,} rows (Python driver "
            f"and driver JVM; within {GROWTH_LIMIT:.2f}x) | {driver[0]:,} -> {driver[1]:,} MiB ({growth:.2f}x) "
            f"| {met} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,10", help="comma-separated scales (1: 2M feature rows)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default=None, help="results file name (default: <date>-driver-memory)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    work = ROOT / "bench" / ".work" / f"driver-memory-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    runs = [measure(float(s), args.seed, work) for s in args.scales.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{date}-driver-memory"
    (out / f"{name}.json").write_text(json.dumps({"date": date, "master": MASTER, "runs": runs}, indent=2) + "\n")
    markdown = render(runs, date)
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    log(f"wrote {out / name}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
