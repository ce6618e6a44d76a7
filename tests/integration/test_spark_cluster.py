"""Materialization, a windowed backfill and training sets on a Spark standalone cluster (issue 25, section 3).

A master and a worker run on loopback (the ``spark_cluster`` fixture); the repository's ``skewless.yaml`` names
the master in ``offline.spark``, and every job runs in the repository's warm engine, whose session is the
cluster's application: its executors (other JVMs, children of the worker) read PostgreSQL through the JDBC
driver the session ships them, write Delta on the path the worker shares, and publish to Redis. Expected values
come from the same oracles as the local tests (pandas and plain Python), never from skewless.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from definitions._example_data import create_example_data
from features.store import FeatureStore
from offline.warm import client as daemon
from tests import servers
from tests.integration import oracle
from tests.integration import test_end_to_end as e2e
from tests.integration import test_windows as windows

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BACKFILL_END = windows.START + (windows.DAYS + 1) * windows.D
# The windowed view of tests/integration/test_windows.py, on the example's card entity (one entity per name).
WINDOWED = windows.DEFINITIONS.replace(
    'card = Entity(join_keys={"card_id": Int64})\n', "from definitions.entities import card\n"
)


def cluster_yaml(master: str, source_url: str, redis_url: str) -> str:
    """A repository whose every job runs in Spark on ``master``: Arrow takes neither runs nor training sets."""
    return (
        f"project: cluster_{uuid.uuid4().hex[:8]}\n"
        f"registry: {source_url}\n"
        "offline:\n"
        "  path: offline\n"
        "  arrow_materialize_max_rows: 0\n"
        "  arrow_join_max_mb: 0\n"
        "  spark:\n"
        f"    spark.master: {master}\n"
        "    spark.driver.memory: 1g\n"
        "    spark.executor.memory: 1g\n"
        f"    spark.pyspark.python: {sys.executable}\n"
        "    spark.sql.shuffle.partitions: 4\n"
        f"online:\n  url: {redis_url}\n"
        f"connections:\n  payments: {source_url}\n  shop: {source_url}\n"
    )


@pytest.fixture(scope="module")
def on_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    spark_cluster: servers.SparkCluster,
    postgres_url: str,
    redis_url: str,
) -> Iterator[tuple[FeatureStore, dict[str, pd.DataFrame], list[windows.Row]]]:
    """The example repository's row views plus a windowed view, materialized on the cluster (the windowed one as
    a backfill of every tick up to BACKFILL_END in one run). The example's own windowed view (card_spend, hourly
    ticks) is left out: no test here reads it, and card_txn already runs a windowed backfill on the cluster."""
    tmp = tmp_path_factory.mktemp("cluster")
    source_url = servers.fresh_database(postgres_url, f"cluster_{uuid.uuid4().hex[:8]}")
    create_example_data(source_url, cards=150, merchants=30, payments=2_500, days=20)
    rows = windows.generate_rows()
    windows.write_source(source_url, rows)
    repo = tmp / "repo"
    shutil.copytree(ROOT / "definitions", repo / "definitions", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "definitions" / "windowed.py").write_text(WINDOWED)
    (repo / "skewless.yaml").write_text(cluster_yaml(spark_cluster.master, source_url, redis_url))
    store = FeatureStore(repo)
    daemon.start_engine(store.config)
    try:
        store.apply()
        sources = oracle.read_sources(source_url)
        row_views = list(oracle.example_features(sources))  # the views the oracle checks
        results = store.materialize(row_views)
        results += store.materialize(["card_txn"], end=BACKFILL_END)
        assert {r.view for r in results} == {*row_views, "card_txn"}
        yield store, sources, rows
    finally:
        daemon.stop_engine(store.config)
        store.close()


def test_the_jobs_ran_on_the_cluster_executors(
    on_cluster: tuple[FeatureStore, Any, Any], spark_cluster: servers.SparkCluster
) -> None:
    store, sources, _ = on_cluster
    info = daemon.engine_info(store.config)
    views = [*oracle.example_features(sources), "card_txn"]
    assert info is not None and info["jobs"] >= len(views)  # every view's run went to the engine (not to Arrow)
    apps = [app for app in spark_cluster.applications() if app["name"] == "skewless"]
    assert len(apps) == 1 and apps[0]["state"] == "RUNNING" and apps[0]["cores"] > 0, apps


def test_online_holds_the_latest_source_row_per_entity(on_cluster: tuple[FeatureStore, Any, Any]) -> None:
    store, sources, _ = on_cluster
    e2e.test_online_holds_the_latest_source_row_per_entity((store, sources))


def test_training_set_matches_the_merge_asof_oracle(on_cluster: tuple[FeatureStore, Any, Any]) -> None:
    store, sources, _ = on_cluster
    e2e.test_training_set_matches_the_merge_asof_oracle((store, sources))


def test_windowed_backfill_matches_the_plain_python_windows(on_cluster: tuple[FeatureStore, Any, Any]) -> None:
    store, _, rows = on_cluster
    cards = list(range(1, windows.CARDS + 1))
    online = store.get_online_features({"card_id": cards}, features=["card_txn:*"]).to_pandas(statuses=True)
    # A training set at the last tick and between two ticks: Spark's point-in-time join on the cluster.
    at = [BACKFILL_END, BACKFILL_END - timedelta(hours=9)]
    entities = pd.DataFrame({"card_id": cards * len(at), "ts": [t for t in at for _ in cards]})
    trained = store.get_training_dataset(entities, features=["card_txn:*"], timestamp_column="ts")
    last_tick = {BACKFILL_END: BACKFILL_END, at[1]: BACKFILL_END - timedelta(hours=12)}
    checked = 0
    for frame, times in ((online, [BACKFILL_END] * len(cards)), (trained, list(entities["ts"]))):
        for record, when in zip(frame.to_dict("records"), times, strict=True):
            tick = last_tick[when]
            if not any(r["card_id"] == record["card_id"] and r["ts"] <= tick for r in rows):
                continue  # the card that never pays: missing, as the local tests check
            expected = windows.oracle(rows, record["card_id"], tick)
            for name in windows.FEATURES:
                got = record[f"card_txn__{name}"]
                got = None if pd.isna(got) else got
                assert windows.same(expected[name], got), (when, record["card_id"], name, expected[name], got)
                checked += 1
    assert checked >= 2 * (windows.CARDS - 1) * len(windows.FEATURES)


def test_a_master_that_does_not_answer_fails_fast_naming_it(tmp_path: Path, redis_url: str) -> None:
    """``skewless materialize`` against a dead master: a clear error naming the address in seconds (Spark alone
    retries for a minute, then says "Cannot call methods on a stopped SparkContext"), nothing published."""
    source_url = f"sqlite:///{tmp_path / 'payments.db'}"
    create_example_data(source_url, cards=20, merchants=5, payments=200, days=5)
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "definitions", repo / "definitions", ignore=shutil.ignore_patterns("__pycache__"))
    dead = f"spark://127.0.0.1:{servers.free_port()}"
    text = cluster_yaml(dead, source_url, redis_url)
    (repo / "skewless.yaml").write_text(text)
    project = text.split()[1]
    skewless = str(Path(sys.executable).parent / "skewless")
    subprocess.run([skewless, "apply"], cwd=repo, check=True, capture_output=True, timeout=120)
    began = time.monotonic()
    done = subprocess.run(
        [skewless, "materialize", "card_profile"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    seconds = time.monotonic() - began
    assert done.returncode != 0
    assert f"the Spark master at {dead} does not answer" in done.stderr + done.stdout, done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 45, seconds  # Python's start and the CLI's imports included; the probe itself takes <= 5 s
    assert list(repo.glob("offline/*/*/_delta_log")) == []  # no offline table either
    client = redis.Redis.from_url(redis_url)
    assert not any(project in key.decode(errors="replace") for key in client.scan_iter(count=1000))
    client.close()
