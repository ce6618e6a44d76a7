"""``FeatureStore.materialize`` runs views at once (``offline.concurrent_views``) and attempts every view even
when one fails, and each run is recorded where it runs. The engine here is a stand-in behind the real router:
what engines compute is tested against oracles in tests/offline and tests/integration (which run the real
engines, concurrent views included)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from features.cli import main
from features.config import RepoConfig
from features.errors import ConfigError, MaterializationError, SchemaMismatchError
from features.protocols import MaterializationResult
from features.store import FeatureStore
from offline.jobs import Materialization
from offline.router import Router
from tests.features.conftest import ENTITIES, VIEWS

THREE_VIEWS = (
    VIEWS
    + """
card_small = FeatureView(entities=[card], source=txns, features=[Feature("n", Int64)])
card_label = FeatureView(entities=[card], source=txns, features=[Feature("label", String)])
"""
)


class StandInEngine:
    """An engine (:class:`offline.jobs.Engine`) that records which views ran at the same time; ``fail`` maps a
    view to the error it raises."""

    name = "stand-in"
    remote = False

    def __init__(self, fail: dict[str, BaseException] | None = None, barrier: threading.Barrier | None = None) -> None:
        self.fail = fail or {}
        self.barrier = barrier
        self.running: set[str] = set()
        self.together: list[set[str]] = []
        self._lock = threading.Lock()

    def refusal(self, job: Any) -> str | None:
        return None

    def materialize(self, job: Materialization, online: Any, progress: Any) -> MaterializationResult:
        view = job.view
        with self._lock:
            self.running.add(view.name)
            self.together.append(set(self.running))
        try:
            if self.barrier is not None:
                self.barrier.wait(timeout=10)  # breaks (and fails the view) unless enough views run at once
            if view.name in self.fail:
                raise self.fail[view.name]
            return MaterializationResult(view.name, 10, 9, 0, 5, True, 0.1, engine="spark")
        finally:
            with self._lock:
                self.running.discard(view.name)


def store_with(config: RepoConfig, engine: StandInEngine, concurrent: int) -> FeatureStore:
    store = FeatureStore(config=dataclasses.replace(config, concurrent_views=concurrent))
    store.apply()
    store.__dict__["offline"] = Router(store.config, engines=[engine])  # the cached engine, replaced
    store.__dict__["_online"] = object()  # no online store is opened; the stand-in never uses it
    return store


@pytest.fixture
def config(make_repo: Callable[..., RepoConfig]) -> RepoConfig:
    return make_repo({"entities.py": ENTITIES, "views.py": THREE_VIEWS})


def test_views_run_at_once_up_to_the_setting(config: RepoConfig) -> None:
    engine = StandInEngine(barrier=threading.Barrier(2))
    results = store_with(config, engine, 2).materialize(["card_txn", "card_small"])
    assert [r.view for r in results] == ["card_txn", "card_small"]
    assert {"card_txn", "card_small"} in engine.together


def test_one_view_at_a_time_when_set_to_one(config: RepoConfig) -> None:
    engine = StandInEngine()
    store = store_with(config, engine, 1)
    results = store.materialize()
    assert [r.view for r in results] == [v.name for v in store.plan_version().plan.views]  # the plan's order
    assert all(len(running) == 1 for running in engine.together)


@pytest.mark.parametrize("concurrent", [1, 3])
def test_a_failed_view_does_not_stop_the_others(config: RepoConfig, concurrent: int) -> None:
    failure = SchemaMismatchError("card_small: column 'n' is now TEXT")
    engine = StandInEngine(fail={"card_small": failure})
    store = store_with(config, engine, concurrent)
    with pytest.raises(SchemaMismatchError) as raised:
        store.materialize()
    assert raised.value is failure  # a single failure keeps its own type and message
    assert {run.view for run in store.registry.runs()} == {"card_txn", "card_label"}


def test_several_failed_views_are_all_named(config: RepoConfig) -> None:
    engine = StandInEngine(fail={"card_txn": RuntimeError("source down"), "card_label": RuntimeError("disk full")})
    store = store_with(config, engine, 2)
    with pytest.raises(MaterializationError) as raised:
        store.materialize()
    message = str(raised.value)
    assert "2 of 3 views failed" in message
    assert "'card_txn': source down" in message and "'card_label': disk full" in message
    assert "materialized: 'card_small'" in message
    assert {run.view for run in store.registry.runs()} == {"card_small"}


def test_every_run_is_recorded_with_its_outcome_and_shown_by_skewless_runs(
    config: RepoConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = StandInEngine(fail={"card_label": RuntimeError("disk full")})
    store = store_with(config, engine, 1)
    with pytest.raises(RuntimeError):
        store.materialize()
    history = {r.view: r for r in store.registry.runs(failed=True)}
    assert history["card_label"].outcome == "failed" and history["card_label"].error == "RuntimeError: disk full"
    assert history["card_txn"].outcome == "ok" and history["card_txn"].engine == "spark"  # the stand-in's result
    for run in history.values():
        assert run.started_at is not None and run.started_at <= run.finished_at
    capsys.readouterr()
    assert main(["runs", "--repo", str(config.root), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(r["view"], r["outcome"]) for r in shown] == [
        (v.name, history[v.name].outcome) for v in store.plan_version().plan.views
    ]
    assert main(["runs", "card_label", "--repo", str(config.root)]) == 0
    out = capsys.readouterr().out
    assert "disk full" in out and "card_txn" not in out


def test_a_view_named_twice_runs_once(config: RepoConfig) -> None:
    engine = StandInEngine()
    results = store_with(config, engine, 2).materialize(["card_txn", "card_txn"])
    assert [r.view for r in results] == ["card_txn"]
    assert len(engine.together) == 1


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, True])
def test_concurrent_views_must_be_a_positive_whole_number(config: RepoConfig, value: object) -> None:
    with pytest.raises(ConfigError, match=r"offline.concurrent_views must be a whole number of at least 1"):
        RepoConfig.from_dict(config.root, {"offline": {"concurrent_views": value}})
    assert RepoConfig.from_dict(config.root, {"offline": {"concurrent_views": 4}}).concurrent_views == 4
    assert RepoConfig.from_dict(config.root, {}).concurrent_views == 2


def test_an_interrupted_run_is_recorded_as_interrupted(config: RepoConfig) -> None:
    engine = StandInEngine(fail={"card_small": KeyboardInterrupt()})
    store = store_with(config, engine, 1)
    with pytest.raises(KeyboardInterrupt):
        store.materialize(["card_small"])
    [run] = store.registry.runs("card_small", failed=True)
    assert run.outcome == "interrupted" and run.error == "KeyboardInterrupt: " and run.engine == "stand-in"
