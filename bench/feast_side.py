"""Feast's side of the side-by-side benchmark, run with bench/.feast-venv's Python (never skewless's).

    python bench/feast_side.py REPO apply
    python bench/feast_side.py REPO materialize START END
    python bench/feast_side.py REPO pit ENTITIES.parquet OUT.parquet
    python bench/feast_side.py REPO online USERS_JSON --seconds 5 --max-calls 2000

``REPO`` holds ``feature_store.yaml`` and ``repo.py`` (written by bench/run.py). Imports only Feast, pandas and
the standard library. The last line of stdout is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

FEATURES = [
    "user_profile:credit_score",
    "user_profile:income",
    "user_profile:tenure_days",
    "user_profile:segment",
    "user_profile:risk",
    "user_activity:clicks_1d",
    "user_activity:spend_1d",
    "user_activity:sessions_7d",
    "user_activity:last_device",
    "user_activity:avg_basket",
]

REPO_PY = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

OFFLINE = "{offline}"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)


def _view(name, ttl_days, fields):
    if OFFLINE == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        source = SparkSource(
            name=name + "_source",
            path="{data}/" + name + ".parquet",
            file_format="parquet",
            timestamp_field="event_ts",
            created_timestamp_column="created_ts",
        )
    else:
        source = FileSource(
            name=name + "_source",
            path="{data}/" + name + ".parquet",
            timestamp_field="event_ts",
            created_timestamp_column="created_ts",
        )
    return FeatureView(
        name=name,
        entities=[user],
        ttl=timedelta(days=ttl_days),
        schema=[Field(name=n, dtype=t) for n, t in fields],
        source=source,
        online=True,
    )


user_profile = _view(
    "user_profile",
    30,
    [("credit_score", Int64), ("income", Float64), ("tenure_days", Int64), ("segment", String), ("risk", Float64)],
)
user_activity = _view(
    "user_activity",
    7,
    [("clicks_1d", Int64), ("spend_1d", Float64), ("sessions_7d", Int64), ("last_device", String),
     ("avg_basket", Float64)],
)
"""

FEATURE_STORE_YAML = """project: bench
registry: {repo}/registry.db
provider: local
offline_store:
  type: {offline}{spark_conf}
online_store:
  type: redis
  connection_string: "127.0.0.1:{redis_port}"
entity_key_serialization_version: 3
"""


def write_repo(repo: Path, data: Path, redis_port: int, offline: str = "duckdb") -> None:
    """The Feast feature repository for the workload (called by bench/run.py, from skewless's venv)."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "repo.py").write_text(REPO_PY.replace("{data}", str(data)).replace("{offline}", offline))
    spark_conf = ""
    if offline == "spark":  # the same local Spark as skewless's: 2 cores, UTC, no UI
        spark_conf = (
            '\n  spark_conf:\n    spark.master: "local[2]"\n    spark.ui.enabled: "false"\n'
            '    spark.sql.session.timeZone: "UTC"\n    spark.driver.memory: "4g"\n'
            '    spark.ui.showConsoleProgress: "false"\n'
            '    spark.sql.shuffle.partitions: "4"'
        )
    (repo / "feature_store.yaml").write_text(
        FEATURE_STORE_YAML.format(repo=repo, offline=offline, redis_port=redis_port, spark_conf=spark_conf)
    )


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def store_of(repo: Path) -> Any:
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo))


def apply(repo: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_feast_repo", repo / "repo.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {repo / 'repo.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = store_of(repo)
    store.apply([module.user, module.user_profile, module.user_activity])
    emit({"applied": True})


def materialize(repo: Path, start: str, end: str) -> None:
    store = store_of(repo)
    began = time.perf_counter()
    store.materialize(start_date=datetime.fromisoformat(start), end_date=datetime.fromisoformat(end))
    emit({"seconds": time.perf_counter() - began})


def pit(repo: Path, entities_path: str, out: str) -> None:
    import pandas as pd

    entities = pd.read_parquet(entities_path).rename(columns={"ts": "event_timestamp"})
    store = store_of(repo)
    if store.config.offline_store.type == "spark":  # the JVM starts outside the in-process time, as for skewless
        from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
            get_spark_session_or_start_new_with_repoconfig,
        )

        get_spark_session_or_start_new_with_repoconfig(store.config.offline_store)
    began = time.perf_counter()
    job = store.get_historical_features(entity_df=entities, features=FEATURES, full_feature_names=True)
    frame = job.to_df()
    seconds = time.perf_counter() - began
    frame.to_parquet(out)
    emit({"seconds": seconds, "rows": len(frame)})


def online(repo: Path, users: list[list[int]], seconds: float, max_calls: int) -> None:
    store = store_of(repo)
    store.get_online_features(features=FEATURES, entity_rows=[{"user_id": u} for u in users[0]]).to_dict()
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while i < max_calls and time.perf_counter() < deadline:
        rows = [{"user_id": u} for u in users[i % len(users)]]
        began = time.perf_counter()
        store.get_online_features(features=FEATURES, entity_rows=rows).to_dict()
        timings.append(time.perf_counter() - began)
        i += 1
    sample = store.get_online_features(
        features=FEATURES, entity_rows=[{"user_id": u} for u in users[0]], full_feature_names=True
    ).to_dict()
    present = sum(v is not None for k, values in sample.items() if "__" in k for v in values)
    emit({"client": timings, "present": present})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("repo")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("apply")
    m = sub.add_parser("materialize")
    m.add_argument("start")
    m.add_argument("end")
    p = sub.add_parser("pit")
    p.add_argument("entities")
    p.add_argument("out")
    o = sub.add_parser("online")
    o.add_argument("users")
    o.add_argument("--seconds", type=float, default=5.0)
    o.add_argument("--max-calls", type=int, default=2000)
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    if args.command == "apply":
        apply(repo)
    elif args.command == "materialize":
        materialize(repo, args.start, args.end)
    elif args.command == "pit":
        pit(repo, args.entities, args.out)
    else:
        online(repo, json.loads(Path(args.users).read_text()), args.seconds, args.max_calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
