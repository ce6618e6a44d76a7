"""Driver memory of a materialization at two scales (issues 4 and 25: "driver memory flat from 2M to 20M rows").

    python -m bench.driver_memory                      # scales 1 and 10: 2M and 20M feature rows
    python -m bench.driver_memory --scales 0.05,0.5    # a quick look
    python -m bench.driver_memory --cluster standalone # on a Spark standalone cluster started here

In Spark's local mode one JVM is driver and executor at once, so its memory grows with what the executors'
sorts hold and says nothing about the driver. Here Spark runs as ``local-cluster[1,2,3072]``: the driver JVM
in the command's process (1 GiB heap), one executor JVM (2 cores, 3 GiB) started by it, as on a cluster.
Every 0.2 s the resident memory of each part is sampled: the Python driver (the ``skewless`` process), the
driver JVM, and the executor with its Python workers. For each scale: the workload is generated
(bench/workload.py), loaded into a PostgreSQL started here, and materialized into an empty Redis started here,
once. Writes
``bench/results/<name>.md`` and ``.json`` (name: ``<date>-driver-memory``, ``-standalone`` on the cluster).

``--cluster standalone``: a Spark standalone master and worker (2 cores, 3 GiB) run on loopback
(:func:`tests.servers.spark_standalone`, pyspark's own ``spark-class``) and ``spark.master`` in ``skewless.yaml``
names the master: the driver (1 GiB) is the command's process and its JVM, as before, and the executor is the
worker's child, measured with its Python workers. Delta tables are on local disk, which the worker shares.
"""

from __future__ import annotations

import argparse
import contextlib
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

from bench import report  # noqa: E402
from bench.backfill import PeakRss, process_table, tree_rss  # noqa: E402
from bench.run import load_postgres, log, write_skewless_repo  # noqa: E402
from bench.workload import generate  # noqa: E402
from tests.servers import SparkCluster, postgres_server, redis_server, spark_standalone  # noqa: E402

MASTER = "local-cluster[1,2,3072]"
# The driver gets 1 GiB (skewless's local default is 4): finishing 20M rows with it shows it holds no rows.
SPARK = {"spark.master": MASTER, "spark.driver.memory": "1g"}
WORKER_MB = 3072


def standalone_conf(cluster: SparkCluster) -> dict[str, str]:
    """The ``offline.spark`` settings of a run on ``cluster``: what a user sets to point skewless at a cluster."""
    return {
        "spark.master": cluster.master,
        "spark.driver.memory": "1g",
        "spark.executor.memory": f"{WORKER_MB - 512}m",  # the worker's memory, less the executor's overhead
        "spark.pyspark.python": sys.executable,  # the workers run on this machine, with this interpreter
        "spark.sql.shuffle.partitions": "4",  # 2 cores: Spark's default 200 tasks per shuffle cost more than they do
    }


PARTS = ("python driver", "driver JVM", "executor (JVM and Python workers)")
GROWTH_LIMIT = 1.25  # "flat": the driver at the larger scale within 25% of the smaller one (sampling noise)


class RoleRss(PeakRss):
    """Peak resident memory of a command's parts: itself, its JVM children, and their children (executors)."""

    def __init__(self, pid: int, worker: int | None = None) -> None:
        super().__init__(pid, every=0.2)
        self.worker = worker  # a standalone worker, whose children are the executors (None: the driver's JVM's)
        self.parts = dict.fromkeys(PARTS, 0)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            table = process_table()
            children, rss = table
            jvms = [c for c in children.get(self.pid, []) if "java" in _cmdline(c)]
            parents = jvms if self.worker is None else [self.worker]
            now = {
                PARTS[0]: rss.get(self.pid, 0),
                PARTS[1]: sum(rss.get(j, 0) for j in jvms),
                PARTS[2]: sum(tree_rss(k, table) for j in parents for k in children.get(j, [])),
            }
            for part, value in now.items():
                self.parts[part] = max(self.parts[part], value)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def measure(scale: float, seed: int, work: Path, cluster: SparkCluster | None = None) -> dict[str, Any]:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    workload = generate(scale, seed, end=end)
    log(f"scale {scale}: {workload.feature_rows:,} feature rows, {workload.users:,} users")
    repo = work / f"scale-{scale}"
    with postgres_server() as pg, redis_server() as rd:
        began = time.perf_counter()
        load_postgres(pg, workload)
        log(f"  loaded PostgreSQL in {time.perf_counter() - began:.1f} s")
        spark = SPARK if cluster is None else standalone_conf(cluster)
        write_skewless_repo(repo, pg, rd, spark=spark, arrow_materialize=False)  # Spark's driver is measured
        command = [sys.executable, "-m", "bench.skewless_side", str(repo), "materialize", "--fresh"]
        began = time.perf_counter()
        with open(work / f"scale-{scale}.log", "ab") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, start_new_session=True)
            with RoleRss(proc.pid, None if cluster is None else cluster.worker_pid) as rss:
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


def render(runs: list[dict[str, Any]], date: str, standalone: bool = False) -> str:
    where = (
        "Spark on a standalone cluster started on loopback (a master and one worker with 2 cores and 3 GiB, from "
        "pyspark's `spark-class`): the driver JVM in the command's process (1 GiB heap), the executor a child of the "
        "worker,"
        if standalone
        else f"Spark as `{MASTER}`: the driver JVM in the command's process (1 GiB heap), one executor JVM (2 cores, "
        "3 GiB) as on a cluster,"
    )
    lines = [
        f"# Driver memory while materializing, {date}",
        "",
        f"{where} so the driver's memory is measured apart from the executors'. Peak resident memory",
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
    parser.add_argument("--cluster", choices=("local-cluster", "standalone"), default="local-cluster")
    parser.add_argument("--name", default=None, help="results file name (default: <date>-driver-memory)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    work = ROOT / "bench" / ".work" / f"driver-memory-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    standalone = args.cluster == "standalone"
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(spark_standalone(cores=2, memory_mb=WORKER_MB)) if standalone else None
        runs = [measure(float(s), args.seed, work, cluster) for s in args.scales.split(",")]
    name = args.name or f"{date}-driver-memory" + ("-standalone" if standalone else "")
    master = "standalone" if standalone else MASTER
    data = {"date": date, "master": master, "runs": runs}
    report.save(Path(args.out), name, data, render(runs, date, standalone))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
