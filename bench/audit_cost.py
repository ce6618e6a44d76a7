"""How long ``skewless audit`` takes on 100,000 logged lookups of the benchmark workload, as a whole process.

    python -m bench.audit_cost --lookups 100000 --rounds 2

The benchmark workload (``bench/workload.py``, scale 1.0 by default: 2,000,000 feature rows of 100,000 users in
two views, 10 features) is loaded into PostgreSQL and materialized into Delta and a real redis-server. Then
``--lookups`` 1-entity lookups of the ten features are made and logged exactly as ``skewless serve`` logs them:
the lookup through ``FeatureStore.get_online_features``, its answer encoded as the service encodes it, one JSON
line per lookup (``features.served_log.raw_line``) in the landing folder. Each round times ``skewless audit`` (a
new process: landing the log, the three layers with the views recomputed from their sources, the report) from
a fresh copy of the landing folder. The issue's target: <= 60 s whole process.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.run import FEATURES, SKEWLESS_CLI, load_postgres, log, online_users, write_skewless_repo  # noqa: E402
from bench.workload import generate  # noqa: E402
from features.served_log import landing_dir, log_dir, raw_line, write_lines  # noqa: E402
from features.store import FeatureStore  # noqa: E402
from tests.servers import postgres_server, redis_server  # noqa: E402


def log_lookups(store: FeatureStore, users: list[list[int]]) -> int:
    """Look each batch of users up and log it as the service does; the lookups logged."""
    lines = []
    for i, ids in enumerate(users):
        result = store.get_online_features({"user_id": ids}, features=FEATURES)
        answer = orjson.dumps(result.to_dict())
        lines.append(raw_line(f"bench-{i}", result.at_micros, None, answer, None, result.snapshots))
        if len(lines) == 10_000:  # one batch per ~10,000 lookups, as a worker flushing every second would
            write_lines(store.config, lines)
            lines = []
    if lines:
        write_lines(store.config, lines)
    return len(users)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    workload = generate(args.scale, 7, end=end)
    with postgres_server() as pg_url, redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        load_postgres(pg_url, workload)
        write_skewless_repo(repo, pg_url, redis_url)
        with FeatureStore(repo) as store:
            store.apply()
            began = time.perf_counter()
            store.materialize()
            log(f"materialized {workload.feature_rows:,} rows in {time.perf_counter() - began:.1f} s")
            users = online_users(workload, datetime.now(UTC), args.lookups, 1, seed=random.Random(7).randint(0, 99))
            began = time.perf_counter()
            logged = log_lookups(store, users)
            log(f"logged {logged:,} lookups in {time.perf_counter() - began:.1f} s")
            landing = landing_dir(store.config)
            kept = Path(tmp) / "landing"
            shutil.copytree(landing, kept)
        seconds = []
        for round_ in range(args.rounds):
            shutil.rmtree(log_dir(store.config), ignore_errors=True)  # the table too: each round lands it again
            shutil.copytree(kept, landing)
            report = Path(tmp) / f"audit-{round_}.json"
            began = time.perf_counter()
            done = subprocess.run(
                [str(SKEWLESS_CLI), "audit", "--repo", str(repo), "--json", str(report)],
                capture_output=True,
                text=True,
                check=False,
            )
            seconds.append(time.perf_counter() - began)
            if done.returncode != 0:
                raise SystemExit(f"audit exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
            result = json.loads(report.read_text())
            log(
                json.dumps(
                    {
                        "round": round_,
                        "seconds": round(seconds[-1], 1),
                        "lookups": result["lookups"],
                        "values": result["values"],
                        "worst_rate": result["worst_rate"],
                    }
                )
            )
    print(
        json.dumps(
            {
                "lookups": args.lookups,
                "feature_rows": workload.feature_rows,
                "median_seconds": round(statistics.median(seconds), 1),
                "min_max_seconds": [round(min(seconds), 1), round(max(seconds), 1)],
                "target_seconds": 60,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
