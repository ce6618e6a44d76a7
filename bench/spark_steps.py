"""Where a Spark materialization spends its time, step by step (issue 25, section 1: "profile it step by step").

    python -m bench.spark_steps                         # scale 1: the benchmark's 2M rows, local[2]
    python -m bench.spark_steps --scale 0.1 --rounds 1  # a quick look
    python -m bench.spark_steps --conf spark.sql.shuffle.partitions=8   # try a setting

A first run of a view without aggregations over a PostgreSQL source has its tasks read a slice of the entities
each with ADBC, compute, deduplicate, describe and write them in Arrow, and one commit creates the table
(:mod:`offline.spark.first_write`); the staged latest rows are then published from the executors. Over another
source (SQLite), Spark reads the source through JDBC and computes the features, and its tasks get the rows
shuffled by entity. A later run deduplicates in Spark (``prepare_rows``), anti-joins against the table and
MERGEs. Spark fuses the steps of a pass, so each is measured as the difference between two runs of a longer and a
shorter pipeline, the shorter ones ending in Spark's ``noop`` sink (which computes every row and writes nothing):

- session: starting the session (JVM, Delta and the JDBC drivers);
- first write, tasks read: :func:`offline.spark.first_write.create_table` onto no table from the source's slices
  (:func:`~offline.spark.first_write.source_slices`): the tasks' read, features, deduplication, statistics,
  Parquet files and staged latest rows, and the commit;
- jdbc read: the source's rows through JDBC (:func:`offline.spark.jdbc.read_source`), partitioned as a run does;
- features: computing the features (``compute_features``);
- first write: :func:`offline.spark.first_write.create_table` onto no table from Spark's JDBC read, minus the two
  steps above (the shuffle by entity, the tasks' deduplication, statistics, files and latest rows, the commit);
- publication: the real publication of those staged rows into an empty Redis (``published``);
- features + dedup: computing the features and deduplicating in Spark (``prepare_rows``, what a later run does),
  minus the read;
- statistics: :func:`offline.spark.stats.spark_stats` of the table's rows (persisted, as a later run has its
  changed rows);
- merge (no change): ``write_rows`` onto the table just written (every source row read, anti-joined against the
  table, nothing committed: a ``--start`` range that changed nothing);
- latest rows: the latest row per entity of the table (``latest_rows``, what a later run's publication computes).

Every view of the benchmark workload goes through the steps in turn, in one session, ``--rounds`` times
(round 1 is a cold JVM, as in a new process; later rounds are warm, as in the warm engine). The per-unit costs
(rows per second per core) feed docs/SCALING.md (``bench/capacity.py``). Writes ``bench/results/<name>.md`` and
``.json`` (name: ``<date>-spark-steps``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.run import load_postgres, log, write_skewless_repo  # noqa: E402
from bench.workload import generate  # noqa: E402
from tests.servers import postgres_server, redis_server  # noqa: E402

#: The steps of a first run over PostgreSQL; of one over a source its tasks do not read; then those only later runs
#: take.
FIRST_RUN = ("first write, tasks read", "publication")
JDBC_FIRST_RUN = ("jdbc read", "features", "first write", "publication")
STEPS = (
    "first write, tasks read",
    *JDBC_FIRST_RUN,
    "features + dedup",
    "statistics",
    "merge (no change)",
    "latest rows",
)


def timed(action: Callable[[], Any]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def profile_view(spark: Any, store: Any, view: Any, work: Path) -> tuple[dict[str, float], int]:
    """The seconds of each step of :data:`STEPS` for one view (see the module docstring), and how many keys its
    publication wrote."""
    from offline.publication import published
    from offline.spark.first_write import SourceSlices, create_table, source_slices
    from offline.spark.jdbc import read_source
    from offline.spark.materialize import _write_from_executors, compute_features, latest_rows
    from offline.spark.stats import spark_stats
    from offline.spark.tables import prepare_rows, read_table, write_rows

    url = store.config.connection_url(view.source.connection)

    def noop(frame: Any) -> None:
        frame.write.format("noop").mode("overwrite").save()

    def computed() -> Any:
        return compute_features(view, read_source(spark, view.source, url))

    path = work / view.name
    shutil.rmtree(path, ignore_errors=True)
    slices = source_slices(spark, url, view, None, None)
    assert isinstance(slices, SourceSlices), slices
    tasks_read = timed(lambda: create_table(spark, path, view, slices, datetime.now(UTC)).discard())
    shutil.rmtree(path)
    read = timed(lambda: noop(read_source(spark, view.source, url)))
    features = timed(lambda: noop(computed()))
    created: list[Any] = []
    first = timed(lambda: created.append(create_table(spark, path, view, computed(), datetime.now(UTC))))
    online = store.online_store()
    keys: list[int] = []
    publish = timed(
        lambda: keys.append(
            published(view, 0, online, _write_from_executors(spark, view, path, 0, {}, created=created[0]))[0]
        )
    )
    created[0].discard()
    dedup = timed(lambda: noop(prepare_rows(view, computed()).frame))
    written = read_table(spark, str(path), 0).persist()
    rows = written.count()
    stats = timed(lambda: spark_stats(written, [(f.name, f.dtype) for f in view.features], rows))
    written.unpersist()
    merge = timed(lambda: write_rows(spark, path, view, prepare_rows(view, computed()), datetime.now(UTC)))
    latest = timed(lambda: noop(latest_rows(view, read_table(spark, str(path), 0))))
    steps = {
        "first write, tasks read": tasks_read,
        "jdbc read": read,
        "features": features - read,
        "first write": first - features,
        "publication": publish,
        "features + dedup": dedup - read,
        "statistics": stats,
        "merge (no change)": merge,
        "latest rows": latest,
    }
    return steps, keys[0]


def measure(scale: float, seed: int, rounds: int, conf: dict[str, str], work: Path) -> dict[str, Any]:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    workload = generate(scale, seed, end=end)
    log(f"scale {scale}: {workload.feature_rows:,} feature rows, {workload.users:,} users")
    with postgres_server() as pg, redis_server() as rd:
        load_postgres(pg, workload)
        repo = work / "repo"
        write_skewless_repo(repo, pg, rd, spark={"spark.master": "local[2]", **conf}, arrow_materialize=False)
        from features.store import FeatureStore
        from offline.spark.session import get_spark, stop_spark

        with FeatureStore(repo) as store:
            store.apply()
            views = store.plan_version().plan.views
            session = timed(lambda: get_spark(store.config))
            spark = get_spark(store.config)
            cores = spark.sparkContext.defaultParallelism
            log(f"  session started in {session:.1f} s ({cores} cores)")
            results = []
            for round_ in range(1, rounds + 1):
                for view in views:
                    import redis

                    redis.Redis.from_url(rd).flushall()
                    steps, keys = profile_view(spark, store, view, work / "tables")
                    rows = workload.views[view.name].frame.shape[0]
                    log(f"  round {round_} {view.name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
                    results.append({"round": round_, "view": view.name, "rows": rows, "keys": keys, "steps": steps})
            stop_spark()
    return {
        "scale": scale,
        "feature_rows": workload.feature_rows,
        "users": workload.users,
        "cores": cores,
        "session_seconds": round(session, 2),
        "conf": conf,
        "views": results,
    }


def per_round(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per round: rows and published keys (all views) and seconds per step (summed over the views), and per step
    rows/s per core (the publication's: keys/s per core)."""
    rounds: dict[int, dict[str, Any]] = {}
    for entry in result["views"]:
        total = rounds.setdefault(entry["round"], {"rows": 0, "keys": 0, "steps": dict.fromkeys(STEPS, 0.0)})
        total["rows"] += entry["rows"]
        total["keys"] += entry.get("keys", 0)
        for step in STEPS:
            total["steps"][step] += entry["steps"][step]
    out = []
    for number, total in sorted(rounds.items()):
        per_core = {
            step: (total["keys"] if step == "publication" else total["rows"]) / max(seconds, 1e-3) / result["cores"]
            for step, seconds in total["steps"].items()
        }
        out.append({"round": number, **total, "rows_per_second_per_core": per_core})
    return out


def render(result: dict[str, Any], date: str) -> str:
    rounds = per_round(result)
    conf = ", ".join(f"`{k}={v}`" for k, v in result["conf"].items()) or "skewless's defaults"
    lines = [
        f"# Spark materialization, step by step, {date}",
        "",
        f"{result['feature_rows']:,} source rows in {len(result['views']) // len(rounds)} views, "
        f"{result['users']:,} users; Spark `local[2]` ({conf}) on a {os.cpu_count()}-core machine shared with "
        f"other work (load average {os.getloadavg()[0]:.1f} at the end). Session start: "
        f"{result['session_seconds']} s. Each step's seconds summed over the views (bench/spark_steps.py says how "
        "each is isolated); round 1 is a cold JVM, later rounds warm.",
        "",
        "| step | "
        + " | ".join(f"round {r['round']} (s)" for r in rounds)
        + " | rows/s per core (last round; the publication's: keys/s) |",
        "| --- | " + " | ".join("---:" for _ in rounds) + " | ---: |",
    ]
    for step in STEPS:
        lines.append(
            f"| {step} | "
            + " | ".join(f"{r['steps'][step]:.1f}" for r in rounds)
            + f" | {rounds[-1]['rows_per_second_per_core'][step]:,.0f} |"
        )
    for label, steps in (("a first run", FIRST_RUN), ("a first run after a JDBC read", JDBC_FIRST_RUN)):
        lines.append(
            f"| **{label} ("
            + ", ".join(steps)
            + ")** | "
            + " | ".join(f"**{sum(r['steps'][s] for s in steps):.1f}**" for r in rounds)
            + " | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="1: the benchmark's 2M source rows")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2, help="1 cold round, then warm ones")
    parser.add_argument("--conf", action="append", default=[], help="a Spark setting KEY=VALUE (repeatable)")
    parser.add_argument("--name", default=None, help="results file name (default: <date>-spark-steps)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    conf = dict(item.split("=", 1) for item in args.conf)
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    work = ROOT / "bench" / ".work" / f"spark-steps-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    result = measure(args.scale, args.seed, args.rounds, conf, work)
    result["rounds"] = per_round(result)
    name = args.name or f"{date}-spark-steps"
    report.save(Path(args.out), name, {"date": date, **result}, render(result, date))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
