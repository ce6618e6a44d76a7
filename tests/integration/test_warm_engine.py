"""The warm engine (offline/warm/server.py) as its callers meet it: errors, progress and logs come back; a caller
with other code runs its job itself; strangers are refused; it stops when told or when idle.

That its jobs give the same values as in-process ones is checked by the "warm engine" parameter of
tests/integration/test_end_to_end.py, against the pandas oracle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from definitions._example_data import create_example_data
from features.cli import main
from features.config import RepoConfig
from features.errors import OnDemandInputError
from features.store import FeatureStore
from offline.router import Router
from offline.warm import client as daemon
from offline.warm import server as warm_server
from tests.integration.test_end_to_end import make_repo

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.slow]


class RecordingProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def start(self, task: str, total: int | None = None) -> None:
        self.calls.append(("start", task))

    def advance(self, task: str, amount: int = 1) -> None:
        self.calls.append(("advance", task))

    def finish(self, task: str) -> None:
        self.calls.append(("finish", task))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, spark: Any, redis_url: str) -> Iterator[FeatureStore]:
    tmp = tmp_path_factory.mktemp("warm")
    url = f"sqlite:///{tmp / 'payments.db'}"
    create_example_data(url, cards=40, merchants=10, payments=400, days=5)
    repo = make_repo(tmp / "repo", url, url, redis_url, arrow_join=False)  # training sets go to the engine
    assert main(["engine", "start", "--repo", str(repo)]) == 0
    store = FeatureStore(repo)
    store.apply()
    try:
        yield store
    finally:
        daemon.stop_engine(store.config)
        store.close()


def jobs(store: FeatureStore) -> int:
    info = daemon.engine_info(store.config)
    assert info is not None
    return int(info["jobs"])


def test_progress_and_log_records_reach_the_caller(store: FeatureStore, caplog: pytest.LogCaptureFixture) -> None:
    before = jobs(store)
    progress = RecordingProgress()
    with caplog.at_level(logging.INFO, logger="offline"):
        [result] = store.materialize(["card_profile"], progress=progress)
    assert jobs(store) == before + 1
    assert result.rows_read > 0 and result.online_committed
    reading, publishing = "card_profile: source rows read", "card_profile: keys published"
    assert progress.calls[0] == ("start", reading) and progress.calls[-1] == ("finish", publishing)
    assert ("advance", reading) in progress.calls and ("advance", publishing) in progress.calls
    relayed = [r for r in caplog.records if r.name == "offline.spark.materialize"]
    assert any(f"read {result.rows_read} source row(s)" in r.getMessage() for r in relayed)


def test_views_run_as_concurrent_jobs(store: FeatureStore) -> None:
    """``offline.concurrent_views`` (2) views at once: the engine runs each caller's job in its own thread.
    Their values are checked against the oracle by tests/integration/test_end_to_end.py ("warm engine")."""
    before = jobs(store)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            info = daemon.engine_info(store.config)
            seen.append(int(info["running"]) if info else 0)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = store.materialize()
    finally:
        done.set()
        watcher.join(timeout=10)
    assert [r.view for r in results] == [v.name for v in store.plan_version().plan.views]
    assert all(r.online_committed for r in results if r.rows_published)
    assert jobs(store) == before + len(results)
    assert max(seen) == 2  # two at once, never more


def test_errors_come_back_with_their_type_and_message(store: FeatureStore) -> None:
    """The same bad call, in the engine and in this process, raises the same error. (Entity rows without a key
    column are refused before any engine is asked; rows without a request field an on-demand feature reads
    fail in the engine that joins them.)"""
    entities = pd.DataFrame({"card_id": [1], "ts": [pd.Timestamp("2024-01-01", tz="UTC")]})  # no payment amount
    refs = ["payment_checks:amount_eur"]
    before = jobs(store)
    with pytest.raises(OnDemandInputError) as remote:
        store.get_training_dataset(entities, features=refs, timestamp_column="ts")
    assert jobs(store) == before + 1
    local = FeatureStore(store.config.root)
    local.offline = Router(local.config, in_process=True)
    with pytest.raises(OnDemandInputError) as here:
        local.get_training_dataset(entities, features=refs, timestamp_column="ts")
    local.close()
    assert str(remote.value) == str(here.value)
    assert "'amount'" in str(remote.value) and "card_id" in str(remote.value)


def test_ctrl_c_in_the_caller_leaves_the_run_to_finish_and_be_recorded_in_the_engine(store: FeatureStore) -> None:
    """Ctrl-C while the engine runs a caller's job: the engine finishes the run (its Delta commit and online
    publication are atomic steps) and records it in the registry itself, since the caller is gone."""
    view = "card_spend"  # windowed: recomputing five days of hourly ticks keeps the engine busy a while
    count_before = len(store.registry.runs(view, failed=True))
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=6)).strftime("%Y-%m-%d")
    caller = subprocess.Popen(
        [sys.executable, "-m", "features.cli", "materialize", view, "--start", start, "--repo", str(store.config.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:  # wait until the engine runs the caller's job, then press Ctrl-C in the caller
        info = daemon.engine_info(store.config)
        if info and int(info["running"]) >= 1:
            break
        assert caller.poll() is None and time.monotonic() < deadline, "the job never reached the engine"
        time.sleep(0.02)
    caller.send_signal(signal.SIGINT)
    out, err = caller.communicate(timeout=60)
    assert caller.returncode == 130, out + err
    # The interrupt came while the caller waited for the engine (the only place that says this).
    assert "interrupted: the warm engine" in err and "finishes view 'card_spend'" in err, out + err
    deadline = time.monotonic() + 120
    while len(store.registry.runs(view, failed=True)) == count_before:
        assert time.monotonic() < deadline, "the engine never recorded the run"
        time.sleep(0.2)
    [run] = store.registry.runs(view, failed=True)[count_before:]
    assert run.outcome == "ok" and run.engine == "spark" and run.window_start is not None, run.error
    # Oracle: the table's latest version, from the Delta log's files on disk.
    table = store.config.root / "offline" / view / store.plan_version().plan.view(view).storage_fingerprint
    assert run.offline_version == max(int(p.stem) for p in (table / "_delta_log").glob("*.json"))


def test_a_training_set_the_arrow_join_takes_stays_in_the_caller(store: FeatureStore) -> None:
    """With Arrow allowed, no job reaches the engine, and the set equals the one the engine joins in Spark."""
    entities = pd.DataFrame({"card_id": [1, 2, 3, 99], "ts": [pd.Timestamp.now(tz="UTC")] * 4})
    refs = ["card_profile:credit_limit"]
    before = jobs(store)
    in_engine = store.get_training_dataset(entities, features=refs, timestamp_column="ts")
    assert jobs(store) == before + 1
    arrow = FeatureStore(config=dataclasses.replace(store.config, arrow_join_max_mb=1024))
    try:
        here = arrow.get_training_dataset(entities, features=refs, timestamp_column="ts")
    finally:
        arrow.close()
    assert jobs(store) == before + 1
    pd.testing.assert_frame_equal(here, in_engine)
    assert here["card_profile__credit_limit"].notna().sum() == 3  # cards 1-3 have a profile; card 99 does not


def test_a_caller_with_other_code_or_settings_runs_the_job_itself(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon, "fingerprint", lambda config: "edited since the engine started")
    monkeypatch.setattr(daemon, "_warned", set())
    before = jobs(store)
    entities = pd.DataFrame({"card_id": [1, 2], "ts": pd.to_datetime(["2030-01-01", "2030-01-02"], utc=True)})
    with caplog.at_level(logging.WARNING, logger="offline.warm.client"):
        frame = store.get_training_dataset(entities, features=["card_profile:credit_limit"], timestamp_column="ts")
    assert len(frame) == 2
    assert jobs(store) == before  # ran here
    assert any("skewless engine restart" in r.getMessage() for r in caplog.records)


def test_skewless_engine_here_keeps_the_job_in_this_process(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(daemon.ENV_ENGINE, "here")
    before = jobs(store)
    entities = pd.DataFrame({"card_id": [3], "ts": pd.to_datetime(["2030-01-01"], utc=True)})
    frame = store.get_training_dataset(entities, features=["card_profile:credit_limit"], timestamp_column="ts")
    assert len(frame) == 1
    assert jobs(store) == before


def test_the_engine_s_jvm_keeps_the_optimizing_jit(store: FeatureStore) -> None:
    from offline.spark.session import ONE_SHOT_JIT

    info = daemon.engine_info(store.config)
    assert info is not None
    children = Path(f"/proc/{info['pid']}/task/{info['pid']}/children").read_text().split()
    command_lines = [Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0") for child in children]
    jvms = [line for line in command_lines if any(b"SparkSubmit" in part for part in line)]
    assert len(jvms) == 1  # the engine's Spark, started when the engine started
    assert not any(ONE_SHOT_JIT.encode() in part for part in jvms[0])
    assert any(b"-Duser.timezone=UTC" in part for part in jvms[0])  # the rest of the driver's options stay


def test_a_caller_without_the_key_is_refused(store: FeatureStore) -> None:
    info = daemon.engine_info(store.config)
    assert info is not None
    port = int(json.loads((daemon.engine_dir(store.config) / daemon.INFO_FILE).read_text())["port"])
    with pytest.raises(AuthenticationError):
        Client(("127.0.0.1", port), authkey=b"not the key")
    key_file = daemon.engine_dir(store.config) / daemon.KEY_FILE
    assert key_file.stat().st_mode & 0o077 == 0  # only the owner may read the key
    assert daemon.engine_info(store.config) is not None  # still serving


def test_a_connection_that_never_speaks_blocks_nobody(store: FeatureStore) -> None:
    """A stranger's idle TCP connection: status and jobs go on at once, and it is dropped after the handshake's
    deadline (it used to hold the engine's single accept thread until it closed)."""
    port = int(json.loads((daemon.engine_dir(store.config) / daemon.INFO_FILE).read_text())["port"])
    before = jobs(store)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as stuck:
        opened = time.monotonic()
        dropped: list[float] = []

        def read_until_dropped() -> None:
            with contextlib.suppress(OSError):
                while stuck.recv(4096):  # the engine's challenge, unanswered, then the end of the connection
                    pass
                dropped.append(time.monotonic())

        reader = threading.Thread(target=read_until_dropped, daemon=True)
        reader.start()
        status = threading.Thread(target=main, args=(["engine", "status", "--repo", str(store.config.root)],))
        status.start()
        status.join(timeout=daemon.HANDSHAKE_SECONDS - 1)
        assert not status.is_alive(), "engine status waited for the silent connection"
        assert time.monotonic() - opened < daemon.HANDSHAKE_SECONDS  # before the engine dropped the stranger
        [result] = store.materialize(["card_profile"])
        assert jobs(store) == before + 1 and result.rows_read > 0  # it ran in the engine
        reader.join(timeout=30)
        assert dropped and dropped[0] - opened < daemon.HANDSHAKE_SECONDS + 5
    assert daemon.engine_info(store.config) is not None


def test_a_caller_does_not_wait_forever_on_an_engine_that_never_answers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens (the kernel accepts) and never speaks
        started = time.monotonic()
        with pytest.raises((EOFError, OSError)):
            daemon.connect(silent.getsockname()[1], b"key", seconds=0.5)
        assert time.monotonic() - started < 5


def test_stop_terminates_an_engine_that_never_answers(tmp_path: Path) -> None:
    """An engine process that accepts but never speaks (stuck): ``engine stop`` ends it instead of hanging."""
    config = RepoConfig(root=tmp_path)
    stuck = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, time; s = socket.create_server(('127.0.0.1', 0)); "
            "print(s.getsockname()[1], flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stuck.stdout is not None
        port = int(stuck.stdout.readline())
        directory = daemon.engine_dir(config)
        directory.mkdir(parents=True)
        (directory / daemon.INFO_FILE).write_text(json.dumps({"pid": stuck.pid, "port": port}))
        (directory / daemon.KEY_FILE).write_bytes(b"k" * 32)
        started = time.monotonic()
        assert daemon.engine_info(config) is None  # it does not answer: not an engine to send jobs to
        assert daemon.stop_engine(config) is True
        assert stuck.wait(10) == -signal.SIGTERM
        assert time.monotonic() - started < 3 * daemon.HANDSHAKE_SECONDS
    finally:
        stuck.kill()
        stuck.wait()


def test_stop_ends_the_engine_and_jobs_run_here_again(store: FeatureStore) -> None:
    info = daemon.engine_info(store.config)
    assert info is not None
    assert main(["engine", "stop", "--repo", str(store.config.root)]) == 0
    assert daemon.engine_info(store.config) is None
    assert not daemon._alive(int(info["pid"]))
    assert main(["engine", "status", "--repo", str(store.config.root)]) == 1
    [result] = store.materialize(["merchant_risk"])  # in this process now
    assert result.rows_read > 0


def test_an_idle_engine_stops_by_itself(tmp_path: Path) -> None:
    server = warm_server.EngineServer(RepoConfig(root=tmp_path), idle_minutes=0.5 / 60)
    server.last_active = time.monotonic() - 1.0
    watchdog = threading.Thread(target=server._stop_when_idle, daemon=True)
    watchdog.start()
    watchdog.join(timeout=10)
    assert server._stopping.is_set()
