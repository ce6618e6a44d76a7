"""A new process's Spark start, with and without what earlier starts leave (issue 25, section 1: the cold run).

    python -m bench.spark_start                    # 5 rounds of the four variants, alternating
    python -m bench.spark_start --rounds 2 --variants off,both

Each measurement is a new Python process that starts the session (:func:`offline.spark.session.get_spark`,
skewless's defaults: ``local[2]``, Delta, the JDBC drivers) and runs a first real job: a JDBC read of 50,000
rows from SQLite and a Delta write of them. Variants (:mod:`offline.spark.start_cache`):

- off: neither the remembered jars nor the class archive (Ivy resolves ``spark.jars.packages``, as before);
- jars: the jars an earlier start resolved, passed as ``spark.jars``;
- archive: the driver JVM maps the class data sharing archive an earlier start recorded;
- both: what a start does now.

Each process reports the seconds since it began at each phase (imports done, session started, first job done)
and how long the gateway's launch took (``spark-submit`` until Python connects: Ivy's resolution is there).

The cache is made first (a start that records, then one that accepts the archive) in a directory of its own.
The cache (class archive and jar list) is in the measurement's temporary directory; Ivy's stays the user's.
Rounds alternate the variants' order. This process is the subreaper of the processes it starts, so the CPU
seconds are those of the whole tree (Python, the JVM, the Python workers) until the JVM has exited; the wall
seconds end when the Python process exits. Writes ``bench/results/<name>.md`` and ``.json`` (name:
``<date>-jvmstart``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.run import log  # noqa: E402

VARIANTS = ("off", "jars", "archive", "both")
PHASES = ("imports", "gateway launch", "session", "first job")
SOURCE_ROWS = 50_000


def child(variant: str, began: float, work: Path) -> None:
    """One measured process: the session and its first job, the seconds since ``began`` printed as JSON."""
    marks = {}
    from offline.spark import session, start_cache

    marks["imports"] = time.time() - began
    start_cache.CACHE_DIR = work / "cache"
    if variant in ("off", "archive"):
        start_cache.with_remembered_jars = lambda conf, directory=None: None
    if variant in ("off", "jars"):
        start_cache.ClassArchive.for_this_java = classmethod(lambda cls, directory=None: None)  # type: ignore[assignment]
    import pyspark.core.context

    launch = pyspark.core.context.launch_gateway

    def timed_launch(*args: Any, **kwargs: Any) -> Any:
        # spark-submit until Python connects: Ivy's resolution happens here, not yet the SparkContext.
        launched = time.time()
        gateway = launch(*args, **kwargs)
        marks["gateway launch"] = time.time() - launched
        return gateway

    pyspark.core.context.launch_gateway = timed_launch
    spark = session.get_spark()
    marks["session"] = time.time() - began
    from pyspark.sql import functions as F

    url = f"jdbc:sqlite:{work / 'source.db'}"
    frame = spark.read.format("jdbc").options(url=url, dbtable="events", driver="org.sqlite.JDBC").load()
    frame.withColumn("ts", F.timestamp_seconds("ts")).write.format("delta").mode("overwrite").save(str(work / variant))
    marks["first job"] = time.time() - began
    print(json.dumps(marks))


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table events (user_id integer, ts integer, amount real)")
        rows = ((i % 1000, 1_767_225_600 + i, i * 0.5) for i in range(SOURCE_ROWS))
        db.executemany("insert into events values (?, ?, ?)", rows)


def reap_descendants() -> None:
    """Wait for every process of the tree (the JVM outlives the Python process that started it)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def run_one(variant: str, work: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.time()
    command = [sys.executable, __file__, "--child", variant, str(began), str(work)]
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - began
    reap_descendants()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{variant}: the process failed:\n{done.stderr[-4000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process": wall, "cpu": cpu}


def measure(rounds: int, variants: list[str]) -> dict[str, Any]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the JVMs are reparented here, their CPU counted
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_source(work / "source.db")
        log("making the cache: a start that records the class archive, one that accepts it")
        for _ in range(2):
            run_one("both", work)
        archives = list((work / "cache" / "cds").glob("*.jsa"))
        if len(archives) != 1:
            raise SystemExit(f"expected one accepted class archive after two starts, found {archives}")
        archive_mb = round(archives[0].stat().st_size / 1e6)
        results: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
        for round_ in range(rounds):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                results[variant].append(run_one(variant, work))
                log(
                    f"round {round_ + 1} {variant}: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in results[variant][-1].items())
                )
    return {
        "rounds": rounds,
        "archive_mb": archive_mb,
        "load_average": os.getloadavg()[0],
        "results": results,
    }


def render(data: dict[str, Any]) -> str:
    columns = [*PHASES, "process", "cpu"]
    lines = [
        f"# A new process's Spark start, {datetime.now(UTC):%Y-%m-%d}",
        "",
        f"A new Python process starts skewless's Spark session (`local[2]`, Delta, the JDBC drivers) and runs a "
        f"first job (JDBC read of {SOURCE_ROWS:,} rows from SQLite, Delta write); {data['rounds']} rounds, the "
        f"variants' order alternating, on a 2-core machine shared with other work (load average "
        f"{data['load_average']:.1f} at the end). Seconds since the process began, min / median / max; cpu: the "
        f"whole process tree (Python, JVM, Python workers). Class archive: {data['archive_mb']} MB.",
        "",
        "| variant | " + " | ".join(f"{c} (s)" for c in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for variant, runs in data["results"].items():
        cells = [report.spread([run[c] for run in runs]) for c in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    base = data["results"].get("off")
    if base:
        lines += ["", "Median saving against `off`:", ""]
        for variant, runs in data["results"].items():
            if variant != "off":
                saved = {
                    c: statistics.median(r[c] for r in base) - statistics.median(r[c] for r in runs) for c in columns
                }
                lines.append(
                    f"- {variant}: "
                    + ", ".join(f"{c} {saved[c]:+.2f} s" for c in ("gateway launch", "session", "first job", "cpu"))
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--name", default=f"{datetime.now(UTC):%Y-%m-%d}-jvmstart")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "BEGAN", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, began, work = args.child
        child(variant, float(began), Path(work))
        return 0
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    data = measure(args.rounds, variants)
    report.save(args.out, args.name, data, render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
