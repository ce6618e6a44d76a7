"""Kill `skewless materialize` mid-run (the whole process group: driver JVM and Python workers): Delta Lake
and Redis are left as they were before the run or fully after it, never half; a rerun completes it. A run that
publishes its changed entities in place (an incremental run) is killed too: each entity then serves its old or
its new row, never another, and the rerun publishes the rest."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from features.store import FeatureStore

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.slow]

ENTITIES = 60_000

DEFINITIONS = """
from datetime import timedelta
from features import Entity, Feature, FeatureView, Float64, Int64, SqlSource

account = Entity(join_keys={"account_id": Int64})
balances = FeatureView(
    entities=[account],
    source=SqlSource(connection="db", table="balances", timestamp="ts"),
    features=[Feature("balance", Float64), Feature("doubled", Float64, expr="balance * 2")],
    ttl=timedelta(days=3650),
)
"""


def write_generation(db: Path, generation: int) -> None:
    """Add one row per account at a later time, with values that tell the generation apart."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS balances (account_id BIGINT, ts TIMESTAMP, balance REAL)")
    ts = f"2024-01-{generation + 1:02d} 00:00:00"
    con.executemany(
        "INSERT INTO balances VALUES (?, ?, ?)", ((i, ts, generation * 1_000_000.0 + i) for i in range(ENTITIES))
    )
    con.commit()
    con.close()


def materialize(repo: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "features.cli", "materialize", "--repo", str(repo), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def generations_online(store: FeatureStore, sample: list[int]) -> set[int]:
    plan = store.plan_version().plan
    view = plan.view("balances")
    [found] = store.online_store().read([(view, ("balance",))], {view.key_names[0]: sample})
    return {int(v[0] // 1_000_000) if v is not None else -1 for v in found.values}


def offline_rows(store: FeatureStore) -> tuple[int, set[int]]:
    from offline.spark.session import get_spark

    view = store.plan_version().plan.view("balances")
    path = store.config.resolved_offline_path() / "balances" / view.storage_fingerprint
    frame = get_spark().read.format("delta").load(str(path))
    generations = {int(r[0] // 1_000_000) for r in frame.select("balance").distinct().collect()}
    return frame.count(), generations


def test_killed_runs_leave_stores_before_or_after(tmp_path: Path, redis_url: str, spark: object) -> None:
    db = tmp_path / "source.db"
    repo = tmp_path / "repo"
    (repo / "defs").mkdir(parents=True)
    (repo / "defs" / "balances.py").write_text(DEFINITIONS)
    (repo / "skewless.yaml").write_text(
        f"project: crash_{uuid.uuid4().hex[:6]}\nregistry: sqlite:///registry.db\ndefinitions: defs\n"
        f"online:\n  url: {redis_url}\n  update_in_place: true\nconnections:\n  db: sqlite:///{db}\n"
    )
    write_generation(db, 1)
    store = FeatureStore(repo)
    store.apply()
    first = materialize(repo)
    assert first.wait(timeout=600) == 0, first.stdout.read() if first.stdout else ""
    sample = list(range(0, ENTITIES, 997))
    assert generations_online(store, sample) == {1}
    assert offline_rows(store) == (ENTITIES, {1})

    # Run 2 is killed while it publishes a whole snapshot: staged keys appear in Redis before the commit.
    write_generation(db, 2)
    client = redis.Redis.from_url(redis_url)
    baseline = client.dbsize()
    run = materialize(repo, "--republish")
    deadline = time.monotonic() + 600
    while client.dbsize() < baseline + 1_000:
        assert run.poll() is None, "the run finished before it could be killed mid-publication"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    kill_group(run)
    assert generations_online(store, sample) == {1}, "a half publication became visible"
    count, generations = offline_rows(store)
    assert (count, generations) in [(ENTITIES, {1}), (2 * ENTITIES, {1, 2})], "Delta holds half a run"

    # Run 3 is killed early, while Spark reads or merges; the stores stay consistent again.
    write_generation(db, 3)
    run = materialize(repo)
    time.sleep(6)
    kill_group(run)
    assert generations_online(store, sample) <= {1, 3}  # a run killed mid-update: each entity old or new
    count, generations = offline_rows(store)
    assert generations in ({1}, {1, 2}, {1, 2, 3}) and count == ENTITIES * len(generations)
    finished = materialize(repo)
    assert finished.wait(timeout=600) == 0, finished.stdout.read() if finished.stdout else ""
    assert generations_online(store, sample) == {3}

    # Run 4 is killed while it writes its changed entities into the live snapshot: some are new, the rest old.
    write_generation(db, 4)
    run = materialize(repo)
    while run.poll() is None and 4 not in generations_online(store, sample):
        time.sleep(0.005)
    if run.poll() is None:
        kill_group(run)
    assert generations_online(store, sample) <= {3, 4}

    # A rerun completes everything.
    final = materialize(repo)
    assert final.wait(timeout=600) == 0, final.stdout.read() if final.stdout else ""
    assert generations_online(store, sample) == {4}
    assert offline_rows(store) == (4 * ENTITIES, {1, 2, 3, 4})
    store.close()
