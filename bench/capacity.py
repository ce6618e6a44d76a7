"""Per-unit costs for the capacity model of docs/SCALING.md (issue 25, section 4), and the model itself.

    python -m bench.capacity                        # 20,000 entities of a 200-feature view
    python -m bench.capacity --entities 2000        # a quick look
    python -m bench.capacity --measured bench/results/2026-12-06-capacity.json   # the model again, no measuring

Measures here:

- **bytes per key in Redis**: a view with 200 features (150 float64 with full precision, 30 int64, 20 short
  strings, the mix of a wide production view) over ``--entities`` entities, materialized into an empty
  redis-server started here; ``MEMORY USAGE`` of every row key (the key name, the encoded row and Redis's own
  overhead), and the growth of ``used_memory`` per entity (everything the view costs, its pointer keys included);
- **seconds of each Spark step** over those 200-feature rows (:func:`bench.spark_steps.profile_view` in a new
  ``local[2]`` session): at the row counts this machine affords, the fixed costs of 200-column jobs dominate, so
  they are reported, not used as per-row rates;

and takes from the results of the other benchmarks in ``bench/results``:

- **rows per second per core** of each Spark step for the benchmark's 5-feature rows at 2M rows (the newest
  ``*-spark-steps.json``, bench/spark_steps.py), which :func:`model` scales to 200 features by
  :func:`width_factor`; and the largest run of ``bench/driver_memory.py --cluster standalone``, to check the
  model's time against it when there is one;
- **lookups per second per serving worker** (``bench/run.py`` results, :data:`SERVING_RESULTS` or
  ``--serving``: requests/s under 16 connections, divided by the server's 2 workers, at the p99 measured with
  them).

Then computes, for :data:`TARGET`, what each component needs (see :func:`model`), and writes
``bench/results/<name>.md`` and ``.json`` (name: ``<date>-capacity``). docs/SCALING.md explains the model and
quotes these numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.run import log  # noqa: E402
from bench.spark_steps import FIRST_RUN  # noqa: E402
from tests.servers import postgres_server, redis_server  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FLOATS, INTS, STRINGS = 150, 30, 20  # 200 features
# The deployment docs/SCALING.md sizes.
TARGET = {
    "source_rows": 1_000_000_000,
    "entities": 100_000_000,
    "features": 200,
    "runs_per_day": 24,
    "lookups_per_second": 50_000,
    "p99_ms": 10,
}
# Assumptions the model states (docs/SCALING.md discusses each).
SOURCE_DAYS = 365  # the source rows span a year: an hourly run's new rows are 1/(365*24) of them
LATE_HOURS = 2  # each incremental run rereads a lookback of late rows: 1 + 2 hours of rows
SNAPSHOTS_DURING_PUBLICATION = 2  # a full publication writes a new snapshot beside the served one
REDIS_PRIMARY_GIB = 25.0  # usable per primary (a 32 GiB node with room for fork, buffers and fragmentation)
REDIS_OPS_PER_PRIMARY = 80_000  # MGET round trips per second one primary serves well under 1 ms (conservative)
SERVING_HEADROOM = 0.6  # run serving workers at 60% of their measured saturation to keep p99 down
EXECUTOR_CORES = 4  # a common executor shape: 4 cores, ~4 GiB per core


def newest(pattern: str, has: str | None = None) -> Path | None:
    """The newest dated results file (``<yyyy-mm-dd>-...``) in bench/results matching ``pattern`` (and containing
    ``has``); undated files (quick looks such as ``example-small``) are left out. By name without the extension:
    a later run of the same day carries a suffix (``-2``, ``-sliced``), which sorts after the name alone."""
    dated = (p for p in RESULTS.glob(pattern) if p.name[:4].isdigit())
    found = sorted((p for p in dated if has is None or has in p.read_text()), key=lambda p: p.stem)
    return found[-1] if found else None


def wide_view_costs(entities: int, seed: int = 5) -> tuple[dict[str, Any], dict[str, Any]]:
    """Materialize a 200-feature view of ``entities`` entities into an empty Redis and measure what it takes, then
    run the same rows through each Spark step; returns (Redis costs, Spark rates)."""
    import numpy as np
    import pandas as pd
    import psycopg
    import redis

    from features.store import FeatureStore

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"entity_id": np.arange(1, entities + 1, dtype="int64")})
    frame["event_ts"] = datetime(2026, 1, 1) + pd.to_timedelta(rng.integers(0, 86_400 * 30, entities), unit="s")
    columns = {f"f{i}": rng.normal(100, 50, entities) for i in range(FLOATS)}  # full precision: the worst case
    columns |= {f"i{i}": rng.integers(0, 100_000, entities) for i in range(INTS)}
    words = ["none", "low", "medium", "high", "EUR", "card_present"]
    columns |= {f"s{i}": rng.choice(words, entities) for i in range(STRINGS)}
    frame = pd.concat([frame, pd.DataFrame(columns)], axis=1)
    features = (
        [(f"f{i}", "Float64", "DOUBLE PRECISION") for i in range(FLOATS)]
        + [(f"i{i}", "Int64", "BIGINT") for i in range(INTS)]
        + [(f"s{i}", "String", "TEXT") for i in range(STRINGS)]
    )
    work = ROOT / "bench" / ".work" / f"capacity-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with postgres_server() as pg, redis_server() as rd:
        with psycopg.connect(pg, autocommit=True) as conn:
            columns = ", ".join(f"{n} {sql}" for n, _, sql in features)
            conn.execute(f"CREATE TABLE wide (entity_id BIGINT, event_ts TIMESTAMP, {columns})")
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False)
            with conn.cursor().copy("COPY wide FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(buffer.getvalue())
        (work / "definitions").mkdir(parents=True)
        feats = ",\n        ".join(f'Feature("{n}", {t})' for n, t, _ in features)
        (work / "definitions" / "wide.py").write_text(
            "from datetime import timedelta\n\n"
            "from features import Entity, Feature, FeatureView, Float64, Int64, SqlSource, String\n\n"
            'entity = Entity(join_keys={"entity_id": Int64})\n'
            "rows = SqlSource(connection='src', table='wide', timestamp='event_ts')\n\n"
            f"wide = FeatureView(\n    entities=[entity],\n    source=rows,\n    ttl=timedelta(days=365),\n"
            f"    features=[\n        {feats},\n    ],\n)\n"
        )
        (work / "skewless.yaml").write_text(
            f"project: cap\nregistry: sqlite:///{work / 'registry.db'}\noffline:\n  path: offline\n"
            f"online:\n  url: {rd}\nconnections:\n  src: {pg}\n"
        )
        client = redis.Redis.from_url(rd)
        before = int(client.info("memory")["used_memory"])
        with FeatureStore(work) as store:
            store.apply()
            began = time.perf_counter()
            [result] = store.materialize()
            seconds = time.perf_counter() - began
            after = int(client.info("memory")["used_memory"])
            row_keys = [k for k in client.scan_iter(match="cap:wide:v*", count=10_000)]
            usage = [int(client.memory_usage(k, samples=0) or 0) for k in row_keys]
            value_bytes = [int(client.strlen(k)) for k in row_keys[:1000]]
            client.close()
            log(f"  Redis: {sum(usage) / len(usage):,.0f} B per row key; Spark steps next")
            spark = wide_spark_rates(store, entities, work)
    redis_cost = {
        "entities": entities,
        "features": len(features),
        "row_keys": len(row_keys),
        "engine": result.engine,
        "materialize_seconds": round(seconds, 2),
        "memory_usage_per_key": round(sum(usage) / max(len(usage), 1), 1),
        "encoded_row_bytes": round(sum(value_bytes) / max(len(value_bytes), 1), 1),
        "used_memory_per_entity": round((after - before) / entities, 1),
    }
    shutil.rmtree(work, ignore_errors=True)
    return redis_cost, spark


def wide_spark_rates(store: Any, rows: int, work: Path) -> dict[str, Any]:
    """Seconds (and rows per second per core) of each Spark step over the wide view's rows, in a new local session
    (a cold JVM, as a scheduled run in a new process)."""
    from bench.spark_steps import profile_view
    from offline.spark.session import get_spark, stop_spark

    spark = get_spark(store.config)
    cores = spark.sparkContext.defaultParallelism
    view = store.plan_version().plan.view("wide")
    steps = profile_view(spark, store, view, work / "tables")
    stop_spark()
    rates = {step: rows / max(seconds, 1e-3) / cores for step, seconds in steps.items()}
    return {"source": "measured here (200 features)", "rows": rows, "cores": cores, "steps": steps, "rates": rates}


def narrow_spark_rates() -> dict[str, Any] | None:
    """Rows per second per core of each step for the benchmark's 5-feature rows, from the newest
    bench/spark_steps.py results (its last round); None when there are none."""
    path = newest("*-spark-steps*.json")
    if path is None:
        return None
    data = json.loads(path.read_text())
    last = data["rounds"][-1]
    return {"file": path.name, "rows": last["rows"], "cores": data["cores"], "rates": last["rows_per_second_per_core"]}


# The bench/run.py results the serving rates come from: the full-scale run of issue 4's last comparison with Feast,
# on a quiet machine (load average 2.5). Runs measured while the machine was busy give a fraction of it.
SERVING_RESULTS = "2026-12-06-ab-after.json"


def serving_rates(name: str = SERVING_RESULTS) -> dict[str, Any]:
    """Lookups per second per worker (1 entity and 100 entities a request), from bench/run.py results ``name``."""
    path = RESULTS / name
    data = json.loads(path.read_text())

    def median(case: str, metric: str) -> float:
        for m in data["measurements"]:
            if m["case"] == case and m["metric"] == metric and m["system"] == "skewless":
                values = sorted(m["values"])
                return float(values[len(values) // 2])
        raise SystemExit(f"{path.name}: no skewless '{case}' '{metric}'")

    workers = 2  # bench/run.py serves with 2 workers on the 2-core machine (wrk runs beside them)
    return {
        "file": path.name,
        "one_entity_per_worker": median("4. HTTP, 1 entity", "req/s, 16 connections") / workers,
        "one_entity_p99_ms": median("4. HTTP, 1 entity", "p99, 16 connections (ms)"),
        "hundred_entities_per_worker": median("4. HTTP, 100 entities", "req/s, 16 connections") / workers,
        "hundred_entities_p99_ms": median("4. HTTP, 100 entities", "p99, 16 connections (ms)"),
    }


def width_factor(features: int) -> float:
    """How many times the cost of a benchmark row (5 features) a row of ``features`` costs in Spark, taken as the
    ratio of their column counts (keys, event and created time, features): every step reads, sorts, encodes or
    writes each column of a row, so a row's cost follows its columns. An assumption, see docs/SCALING.md."""
    return (features + 3) / (5 + 3)


def model(redis_cost: dict[str, Any], narrow: dict[str, Any], serving: dict[str, Any]) -> dict[str, Any]:
    """What :data:`TARGET` needs, from the per-unit costs: the Spark rates of the benchmark's 5-feature rows
    (``narrow``: :func:`narrow_spark_rates`) divided by :func:`width_factor`, Redis's bytes per 200-feature key,
    the serving rates. Core-hours = rows / (rows/s per core) / 3600 per step."""
    factor = width_factor(TARGET["features"])
    rates = {step: rate / factor for step, rate in narrow["rates"].items()}
    full_steps = list(FIRST_RUN)  # a first run's tasks deduplicate, describe and write; then its publication
    rows = TARGET["source_rows"]
    entities = TARGET["entities"]
    hourly_rows = rows / (SOURCE_DAYS * 24) * (1 + LATE_HOURS)
    changed = min(entities, hourly_rows)  # at most one changed entity per new row

    def core_hours(step: str, count: float) -> float:
        return count / rates[step] / 3600

    # A full run reads every row and publishes every entity (its tasks find the latest rows as they write).
    full = {s: core_hours(s, entities if s == "publication" else rows) for s in full_steps}
    # An incremental run (issue 25, section 1): reads the new rows and their lookback, deduplicates and describes
    # them in Spark, writes them, and publishes the entities they changed; the latest rows of those entities only.
    # Their write is costed as a first write's per row (which deduplicates and describes again: an overstatement).
    incremental = {
        "jdbc read": core_hours("jdbc read", hourly_rows),
        "features + dedup": core_hours("features + dedup", hourly_rows),
        "first write": core_hours("first write", hourly_rows),
        "statistics": core_hours("statistics", hourly_rows),
        "latest rows": core_hours("latest rows", hourly_rows),
        "publication": core_hours("publication", changed),
    }
    # Today's rerun without incremental reads: every source row again, anti-joined against the table.
    rerun_today = core_hours("merge (no change)", rows)
    per_key = redis_cost["used_memory_per_entity"] * TARGET["features"] / redis_cost["features"]
    gib = entities * per_key / 2**30
    peak_gib = gib * SNAPSHOTS_DURING_PUBLICATION
    primaries = max(
        math.ceil(peak_gib / REDIS_PRIMARY_GIB), math.ceil(TARGET["lookups_per_second"] / REDIS_OPS_PER_PRIMARY)
    )
    per_worker = serving["one_entity_per_worker"]
    workers = math.ceil(TARGET["lookups_per_second"] / (per_worker * SERVING_HEADROOM))
    executors_for_hour = {  # executors so that a run fits in its hour with room (30 minutes)
        "full": math.ceil(sum(full.values()) / 0.5 / EXECUTOR_CORES),
        "incremental": max(1, math.ceil(sum(incremental.values()) / 0.5 / EXECUTOR_CORES)),
    }
    return {
        "target": TARGET,
        "assumptions": {
            "source_days": SOURCE_DAYS,
            "late_hours": LATE_HOURS,
            "snapshots_during_publication": SNAPSHOTS_DURING_PUBLICATION,
            "redis_primary_gib": REDIS_PRIMARY_GIB,
            "redis_ops_per_primary": REDIS_OPS_PER_PRIMARY,
            "serving_headroom": SERVING_HEADROOM,
            "executor_cores": EXECUTOR_CORES,
            "width_factor": round(factor, 1),
        },
        "spark_core_hours": {
            "full": {k: round(v, 2) for k, v in full.items()},
            "full_total": round(sum(full.values()), 1),
            "incremental": {k: round(v, 4) for k, v in incremental.items()},
            "incremental_total": round(sum(incremental.values()), 3),
            "rerun_without_incremental_reads": round(rerun_today, 1),
            "hourly_rows": round(hourly_rows),
        },
        "executors": executors_for_hour,
        "redis": {
            "bytes_per_key_200_features": round(per_key),
            "gib_one_snapshot": round(gib, 1),
            "gib_peak": round(peak_gib, 1),
            "primaries": primaries,
        },
        "serving": {"lookups_per_worker": round(per_worker), "workers": workers},
    }


def check_largest(spark: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model's time for the largest run of bench/driver_memory.py on the standalone cluster (2 cores; 20M rows
    at scale 10) from the 5-feature rates, against that run's measured time; None without both."""
    path = newest("*-driver-memory-standalone*.json")
    if path is None or spark is None:
        return None
    run = max(json.loads(path.read_text())["runs"], key=lambda r: r["feature_rows"])
    rates = spark["rates"]
    rows, users = run["feature_rows"], run["users"] * 2  # two views, each publishing every user
    steps = [s for s in FIRST_RUN if s != "publication"]
    predicted = sum(rows / rates[s] for s in steps) / 2 + users / rates["publication"] / 2
    return {"file": path.name, "rows": rows, "predicted_seconds": round(predicted), "measured": run["whole_seconds"]}


def render(result: dict[str, Any], date: str) -> str:
    r, m = result["redis"], result["model"]
    spark, serving = result["spark"], result["serving"]
    lines = [
        f"# Capacity model inputs and results, {date}",
        "",
        f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared). docs/SCALING.md explains.",
        "",
        "## Per-unit costs measured",
        "",
        "| cost | value | from |",
        "| --- | ---: | --- |",
        f"| Redis `MEMORY USAGE` per row key, {r['features']} features | {r['memory_usage_per_key']:,.0f} B | "
        f"{r['row_keys']:,} keys, materialized here in {r['engine']} |",
        f"| encoded row (value bytes) | {r['encoded_row_bytes']:,.0f} B | the same keys |",
        f"| Redis `used_memory` growth per entity | {r['used_memory_per_entity']:,.0f} B | the same run |",
    ]
    for step, seconds in spark["steps"].items():
        lines.append(
            f"| Spark {step}, 200 features, {spark['rows']:,} rows (fixed costs dominate) | {seconds:,.1f} s | here |"
        )
    narrow = result.get("narrow_spark")
    for step, rate in (narrow["rates"] if narrow else {}).items():
        lines.append(f"| Spark {step}, 5 features | {rate:,.0f} rows/s per core | {narrow['file']} |")
    lines += [
        f"| lookups per serving worker, 1 entity | {serving['one_entity_per_worker']:,.0f} /s at p99 "
        f"{serving['one_entity_p99_ms']:.1f} ms | {serving['file']} |",
        f"| lookups per serving worker, 100 entities | {serving['hundred_entities_per_worker']:,.0f} /s at p99 "
        f"{serving['hundred_entities_p99_ms']:.1f} ms | {serving['file']} |",
        "",
        "## What the target needs",
        "",
        "```json",
        json.dumps(m, indent=2),
        "```",
    ]
    if result.get("check_largest"):
        c = result["check_largest"]
        lines += [
            "",
            f"Check at {c['rows']:,} rows on 2 cores: the per-unit costs predict {c['predicted_seconds']:,} s; the "
            f"measured run ({c['file']}) took {c['measured']:,} s for the whole process.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--measured", default=None, help="a capacity .json whose Redis and Spark costs to reuse")
    parser.add_argument("--serving", default=SERVING_RESULTS, help="bench/run.py results with the HTTP cases")
    parser.add_argument("--name", default=None, help="results file name (default: <date>-capacity)")
    args = parser.parse_args(argv)
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    if args.measured:  # the measured costs of an earlier run; the rest collected and computed again
        earlier = json.loads(Path(args.measured).read_text())
        redis_cost, spark = earlier["redis"], earlier["spark"]
    else:
        log(f"materializing a 200-feature view of {args.entities:,} entities into an empty Redis")
        redis_cost, spark = wide_view_costs(args.entities)
        log(f"  {redis_cost}")
    narrow, serving = narrow_spark_rates(), serving_rates(args.serving)
    if narrow is None:
        raise SystemExit("no bench/results/*-spark-steps.json: run 'python -m bench.spark_steps' first")
    result = {
        "date": date,
        "redis": redis_cost,
        "spark": spark,
        "narrow_spark": narrow,
        "serving": serving,
        "model": model(redis_cost, narrow, serving),
        "check_largest": check_largest(narrow),
    }
    name = args.name or f"{date}-capacity"
    report.save(RESULTS, name, result, render(result, date))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
