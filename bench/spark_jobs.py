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


# Which step of a run a job belongs to, by the call site Spark names it with (the first match wins). Adaptive
# execution's stage jobs carry no call site of their own: they count for the next job that has one.
STEPS = (
    ("jdbc.py", "source bounds and cursor (JDBC)"),
    ("stats.py", "read, dedup, compare, statistics"),
    ("count at", "read, dedup, compare, statistics"),
    ("save at", "Delta write"),
    ("getHistory", "Delta log and MERGE"),
    ("Delta", "Delta log and MERGE"),
    ("Databricks", "Delta log and MERGE"),
    ("materialize.py:8", "publication"),
    ("materialize.py:3", "changed entities"),
    ("parquet at", "changed entities"),
)
ADAPTIVE = "withThreadLocalCaptured"


def steps_of(jobs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Jobs and their seconds per step (see :data:`STEPS`); the statistics of the latest rows count for the
    publication they follow."""
    out: dict[str, dict[str, float]] = {}
    pending: list[dict[str, Any]] = []
    published = False
    for job in jobs:
        pending.append(job)
        if ADAPTIVE in job["name"] or not job["name"]:
            continue
        step = next((name for marker, name in STEPS if marker in job["name"]), "other")
        published = published or step in ("publication", "changed entities")
        step = "publication" if published and step == STEPS[1][1] else step
        total = out.setdefault(step, {"jobs": 0, "seconds": 0.0})
        total["jobs"] += len(pending)
        total["seconds"] += sum(j["seconds"] for j in pending)
        pending = []
    if pending:
        total = out.setdefault("other", {"jobs": 0, "seconds": 0.0})
        total["jobs"] += len(pending)
        total["seconds"] += sum(j["seconds"] for j in pending)
    return out


def render(lines: list[dict[str, Any]]) -> str:
    """A Markdown table per run kind: each label's jobs, stages and seconds (min-max over its measurements),
    then the jobs and job seconds per step (medians)."""
    from statistics import median

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["run"], line["label"]), []).append(line)
    labels = list(dict.fromkeys(line["label"] for line in lines))
    out = []
    for run in dict.fromkeys(line["run"] for line in lines):
        out += [
            f"### {run}",
            "",
            "| label | n | jobs | stages run (skipped) | job seconds | wall seconds |",
            "|---|---|---|---|---|---|",
        ]
        for label in labels:
            got = groups.get((run, label), [])
            if not got:
                continue

            def spread(key: str, rows: list[dict[str, Any]] = got) -> str:
                values = sorted(r[key] for r in rows)
                return f"{values[0]:g}" if values[0] == values[-1] else f"{values[0]:g}-{values[-1]:g}"

            stages = f"{spread('stages')} ({spread('skipped_stages')})"
            cells = [label, str(len(got)), spread("jobs"), stages, spread("job_seconds"), spread("seconds")]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        per_label = {
            label: [steps_of(r["job_list"]) for r in groups.get((run, label), []) if "job_list" in r]
            for label in labels
        }
        names = list(dict.fromkeys(name for steps in per_label.values() for s in steps for name in s))
        if names:
            out += [
                "| step | " + " | ".join(f"{label}: jobs, s" for label in labels) + " |",
                "|---" * (len(labels) + 1) + "|",
            ]
            for name in names:
                cells = []
                for label in labels:
                    found = [s.get(name, {"jobs": 0, "seconds": 0.0}) for s in per_label[label]]
                    if not found:
                        cells.append("")
                        continue
                    jobs = median(f["jobs"] for f in found)
                    cells.append(f"{jobs:g}, {median(f['seconds'] for f in found):.2f}")
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


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
    parser.add_argument("--report", default=None, help="print the Markdown tables of this JSON-lines file, and exit")
    parser.add_argument("--log", action="store_true", help="log each step of the runs (INFO), with times")
    args = parser.parse_args(argv)
    if args.report:
        print(render([json.loads(line) for line in Path(args.report).read_text().splitlines() if line.strip()]))
        return 0
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
