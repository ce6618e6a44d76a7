"""skewless's side of the side-by-side benchmark, one measured action per process (run by bench/run.py).

    python -m bench.skewless_side REPO materialize [--fresh] [--warm] [--republish]
    python -m bench.skewless_side REPO pit ENTITIES.parquet OUT.parquet [--warm]
    python -m bench.skewless_side REPO online USERS_JSON --seconds 5 --max-calls 2000
    python -m bench.skewless_side REPO publish DATA_DIR

The last line of stdout is ``RESULT {json}``: the in-process seconds of the measured call (the harness times
the whole process and samples its memory from outside). ``--warm``: the repository's warm engine
(``skewless engine start``) runs the jobs Spark runs, and this process never starts Spark; without it, Spark
starts here when a job needs it. Views that fit materialize in Arrow in this process either way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.feast_side import FEATURES  # defined there: Feast's venv runs that file on its own


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def materialize(repo: Path, fresh: bool, republish: bool = False) -> None:
    from features.store import FeatureStore

    if fresh:  # an empty offline store and registry: the first run a new user makes
        shutil.rmtree(repo / "offline", ignore_errors=True)
        (repo / "registry.db").unlink(missing_ok=True)
    with FeatureStore(repo) as store:
        store.apply()
        # No JVM is started beforehand: views that fit materialize in Arrow without one (a view left to Spark
        # starts it inside the measured time, as it would for a user).
        began = time.perf_counter()
        results = store.materialize(republish=republish)
        seconds = time.perf_counter() - began
        emit(
            {
                "seconds": seconds,
                "rows_read": sum(r.rows_read for r in results),
                "rows_written": sum(r.rows_written_offline for r in results),
                "rows_published": sum(r.rows_published or 0 for r in results),
                "engines": sorted({r.engine for r in results}),
            }
        )


def pit(repo: Path, entities_path: str, out: str, warm: bool) -> None:
    import pandas as pd

    from features.store import FeatureStore

    entities = pd.read_parquet(entities_path)
    with FeatureStore(repo) as store:
        # No JVM is started beforehand: the 2M-row tables are joined in Arrow, without one.
        began = time.perf_counter()
        frame = store.get_training_dataset(entities, features=FEATURES, timestamp_column="ts")
        seconds = time.perf_counter() - began
    frame.to_parquet(out)
    emit({"seconds": seconds, "rows": len(frame)})


def online(repo: Path, users: list[list[int]], seconds: float, max_calls: int) -> None:
    """Latencies of ``get_online_features`` and of the raw Redis round trip (one MGET of the same keys)."""
    from features.store import FeatureStore

    with FeatureStore(repo) as store:
        store.get_online_features({"user_id": users[0]}, features=FEATURES)  # warm: plan, connection, script
        redis_store: Any = store.online_store()  # the Redis store: its client and pointers, beyond the protocol
        client = redis_store.client()
        versions = {view: redis_store.live_version(view)["version"] for view in ("user_profile", "user_activity")}
        prefix = store.config.project
        answer: dict[str, Any] = {}
        for label in ("client", "raw_mget"):
            timings: list[float] = []
            deadline = time.perf_counter() + seconds
            i = 0
            while i < max_calls and time.perf_counter() < deadline:
                entity_ids = users[i % len(users)]
                began = time.perf_counter()
                if label == "client":
                    store.get_online_features({"user_id": entity_ids}, features=FEATURES)
                else:
                    keys = [f"{prefix}:{view}:v{versions[view]}:{u}" for view in versions for u in entity_ids]
                    client.mget(keys)
                timings.append(time.perf_counter() - began)
                i += 1
            answer[label] = timings
        sample = store.get_online_features({"user_id": users[0]}, features=FEATURES).to_dict()
        answer["present"] = sum(s == "present" for f in sample["features"].values() for s in f["statuses"])
    emit(answer)


def publish(repo: Path, data: Path) -> None:
    """Redis publishing alone: the latest row per user of each view, written by one process through
    ``RedisPublication.write`` (encoding and MSETs, what each Spark executor runs), then aborted so the live
    snapshot is untouched. Materialization runs one writer per partition, so this is a per-writer rate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.store import FeatureStore

    with FeatureStore(repo) as store:
        plan = store.plan_version().plan
        online = store.online_store()
        keys, seconds = 0, 0.0
        for view in plan.views:
            frame = pq.read_table(data / f"{view.name}.parquet").to_pandas()
            latest = frame.sort_values([*view.key_names, "event_ts", "created_ts"]).drop_duplicates(
                list(view.key_names), keep="last"
            )
            latest = latest.rename(columns={"event_ts": "event_timestamp", "created_ts": "created_timestamp"})
            batches = pa.Table.from_pandas(latest, preserve_index=False).to_batches(max_chunksize=10_000)
            publication = online.start_publication(view, watermark=0)
            began = time.perf_counter()
            keys += publication.write(batches)
            seconds += time.perf_counter() - began
            publication.abort()
        emit({"seconds": seconds, "keys": keys, "keys_per_s": keys / seconds})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("repo")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("materialize")
    m.add_argument("--fresh", action="store_true")
    m.add_argument("--warm", action="store_true")
    # A rerun that finds nothing new publishes nothing (the store already serves it); the case "onto filled
    # keys" measures writing them again, as Feast does.
    m.add_argument("--republish", action="store_true")
    p = sub.add_parser("pit")
    p.add_argument("entities")
    p.add_argument("out")
    p.add_argument("--warm", action="store_true")
    o = sub.add_parser("online")
    o.add_argument("users", help="a JSON file: a list of entity batches (lists of user ids)")
    o.add_argument("--seconds", type=float, default=5.0)
    o.add_argument("--max-calls", type=int, default=2000)
    w = sub.add_parser("publish")
    w.add_argument("data", help="the workload's Parquet folder")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    if args.command == "materialize":
        materialize(repo, args.fresh, args.republish)  # --warm: the engine is found, nothing to pass
    elif args.command == "pit":
        pit(repo, args.entities, args.out, args.warm)
    elif args.command == "publish":
        publish(repo, Path(args.data))
    else:
        online(repo, json.loads(Path(args.users).read_text()), args.seconds, args.max_calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
