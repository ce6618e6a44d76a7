"""The Spark jobs and stages a materialization launches (issue 25, section 1: the Spark path's fixed costs).

    python -m bench.spark_jobs                                   # 2M rows, 100,000 keys, local[2]
    python -m bench.spark_jobs --rows 200000 --keys 10000        # a quick look
    python -m bench.spark_jobs --label before --jobs             # every job's description and time too

Wall times on a shared machine are noisy; the number of Spark jobs and stages a run launches is not. In one
process (the JVM started before any run is timed, and stated), on the incremental benchmark's view
(:mod:`bench.incremental`, Spark forced with ``offline.arrow_materialize_max_rows: 0``), three runs:

- first: the table does not exist yet, every source row is read, written and published;
- unchanged: a rerun with no new source row;
- 1% changed: a rerun after one new row for 1% of the entities (after the watermark).

For each: seconds, Spark jobs, stages run and stages skipped (their shuffle output was reused), and the
seconds of the jobs themselves (the rest is the driver: Python, Delta's log, Redis), read from Spark's own status
store (what the Spark UI shows). Prints one JSON line per run; ``--out`` appends it to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.incremental import add_new_rows, fill, write_repo  # noqa: E402
from tests.servers import postgres_server, redis_server  # noqa: E402


def spark_jobs(spark: Any, after: int) -> list[dict[str, Any]]:
    """Every job of the session with an id >= ``after``, oldest first, from Spark's status store."""
    jobs = []
    for job in _job_data(spark):
        if job.jobId() < after:
            continue
        began, ended = job.submissionTime(), job.completionTime()
        timed = began.isDefined() and ended.isDefined()
        seconds = (ended.get().getTime() - began.get().getTime()) / 1000 if timed else 0
        jobs.append(
            {
                "id": job.jobId(),
                "name": job.name(),
                "stages": job.numCompletedStages(),
                "skipped": job.numSkippedStages(),
                "seconds": round(seconds, 3),
            }
        )
    return sorted(jobs, key=lambda j: j["id"])


def _job_data(spark: Any) -> list[Any]:
    """Spark's ``JobData`` of every job it retained (a Scala Seq through py4j)."""
    seq = spark.sparkContext._jsc.sc().statusStore().jobsList(None)
    return [seq.apply(i) for i in range(seq.length())]


def next_job_id(spark: Any) -> int:
    ids = [job.jobId() for job in _job_data(spark)]
    return max(ids) + 1 if ids else 0


def measure(store: Any, spark: Any, label: str) -> dict[str, Any]:
    first = next_job_id(spark)
    logging.getLogger(__name__).info("run '%s' starts", label)
    began = time.perf_counter()
    (result,) = store.materialize()
    seconds = time.perf_counter() - began
    jobs = spark_jobs(spark, first)
    return {
        "run": label,
        "seconds": round(seconds, 3),
        "jobs": len(jobs),
        "stages": sum(j["stages"] for j in jobs),
        "skipped_stages": sum(j["skipped"] for j in jobs),
        "job_seconds": round(sum(j["seconds"] for j in jobs), 3),
        "rows_read": result.rows_read,
        "rows_written": result.rows_written_offline,
        "keys_published": result.rows_published,
        "job_list": jobs,
    }


def with_settings(yaml: Path, conf: dict[str, str]) -> None:
    """Add ``conf`` to the ``offline.spark`` settings of the repository's ``skewless.yaml``."""
    master = "    spark.master: local[2]\n"
    text = yaml.read_text()
    yaml.write_text(text.replace(master, master + "".join(f"    {k}: '{v}'\n" for k, v in conf.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--label", default="", help="a name for this measurement (e.g. the branch)")
    parser.add_argument("--jobs", action="store_true", help="print every job's description and seconds")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    parser.add_argument("--conf", action="append", default=[], help="a Spark setting KEY=VALUE (repeatable)")
    parser.add_argument("--log", action="store_true", help="log each step of the runs (INFO), with times")
    args = parser.parse_args(argv)
    if args.log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("py4j").setLevel(logging.WARNING)
    from features.store import FeatureStore
    from offline.spark.session import get_spark, stop_spark

    work = ROOT / "bench" / ".work" / f"spark-jobs-{time.time_ns()}"
    lines = []
    with postgres_server() as pg_url, redis_server() as redis_url:
        fill(pg_url, args.rows, args.keys)
        write_repo(work, pg_url, redis_url, "spark")
        with_settings(work / "skewless.yaml", dict(item.split("=", 1) for item in args.conf))
        with FeatureStore(work) as store:
            store.apply()
            began = time.perf_counter()
            spark = get_spark(store.config)
            jvm = round(time.perf_counter() - began, 3)
            runs = [measure(store, spark, "first"), measure(store, spark, "unchanged")]
            add_new_rows(pg_url, args.rows, args.keys)
            runs.append(measure(store, spark, "1% changed"))
            stop_spark()
    for run in runs:
        line = {"label": args.label, "conf": args.conf, "rows": args.rows, "keys": args.keys, "jvm_start_s": jvm, **run}
        if not args.jobs:
            line.pop("job_list")
        lines.append(json.dumps(line))
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.write("".join(f"{line}\n" for line in lines))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
