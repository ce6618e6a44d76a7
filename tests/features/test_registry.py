"""The registry on SQLite and on a real PostgreSQL: versions, no-op applies, run records."""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import features.store
from features.config import RepoConfig
from features.errors import RegistryError
from features.plan import Plan
from features.registry import Registry, RunRecord
from features.run_stats import FeatureStats, RunStats
from features.store import FeatureStore
from tests.features.conftest import ENTITIES, VIEWS
from tests.servers import fresh_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'registry.db'}"
    return fresh_database(request.getfixturevalue("postgres_url"), f"reg_{abs(hash(tmp_path)) % 10**8}")


def test_versions_round_trip(make_repo: Callable[..., RepoConfig], registry_url: str) -> None:
    plan = FeatureStore(config=make_repo()).compile()
    registry = Registry(registry_url)
    assert registry.latest() is None
    first, created = registry.apply(plan)
    assert created and first.version == 1
    again, created = registry.apply(plan)
    assert not created and again.version == 1
    stored = Registry(registry_url).get(1)
    assert stored.plan == plan
    assert stored.fingerprint == plan.fingerprint
    assert stored.applied_at.tzinfo is not None

    now = datetime(2024, 1, 2, tzinfo=UTC)
    view = plan.views[0]
    registry.record_run(RunRecord(view.name, view.storage_fingerprint, 1, None, now, 10, 9, 3, 8, now))
    runs = registry.runs(view.name)
    assert [(r.rows_read, r.rows_written_offline, r.offline_version, r.rows_published) for r in runs] == [(10, 9, 3, 8)]
    assert registry.materialized_storage() == {(view.name, view.storage_fingerprint)}
    registry.close()


def test_missing_version_is_a_clear_error(tmp_path: Path) -> None:
    from features.errors import RegistryError

    with pytest.raises(RegistryError, match="plan version 7 is not in the registry"):
        Registry(f"sqlite:///{tmp_path / 'r.db'}").get(7)


def test_unreachable_registry_is_a_clear_error() -> None:
    from features.errors import RegistryError

    with pytest.raises(RegistryError, match="cannot open the registry"):
        Registry("postgresql://nobody@127.0.0.1:1/none")


def test_an_older_registry_gets_the_new_run_columns_and_keeps_its_runs(registry_url: str) -> None:
    """A registry created before runs recorded their start, engine and outcome: opening it adds the columns;
    its rows read as successful runs; failed runs are kept apart from the successful ones."""
    import sqlalchemy as sa

    if registry_url.startswith("sqlite:///"):
        Path(registry_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    from features.registry import materialization_runs

    engine = sa.create_engine(registry_url)
    newer = ("started_at", "engine", "outcome", "error", "stats_json")
    first_release = sa.Table(  # the run table as the first release created it
        materialization_runs.name,
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, autoincrement=c.autoincrement)
            for c in materialization_runs.columns
            if c.name not in newer
        ),
    )
    first_release.create(engine)
    with engine.begin() as conn:
        conn.execute(
            first_release.insert().values(
                view="old", storage_fingerprint="fp1", plan_version=1, rows_read=5, rows_written_offline=4,
                offline_version=0, rows_published=3, finished_at=datetime(2024, 1, 1, tzinfo=UTC),
            )
        )  # fmt: skip
    engine.dispose()
    registry = Registry(registry_url)
    (old,) = registry.runs()
    assert (old.view, old.rows_read, old.outcome, old.engine, old.started_at) == ("old", 5, "ok", None, None)
    now = datetime(2024, 1, 2, tzinfo=UTC)
    failed = RunRecord("new", "fp2", 1, None, None, 0, 0, None, 0, now, now, None, "failed", "RuntimeError: down")
    registry.record_run(failed)
    assert [r.view for r in registry.runs()] == ["old"]
    assert [(r.view, r.outcome, r.error) for r in registry.runs(failed=True)] == [
        ("old", "ok", None),
        ("new", "failed", "RuntimeError: down"),
    ]
    assert registry.materialized_storage() == {("old", "fp1")}  # a failed run orphans nothing
    assert old.stats is None  # a run recorded before statistics were
    stats = RunStats(
        "spark",
        {"amount": FeatureStats("float64", 3, 1, nan=1, min=-1.5, max=-1.5, mean=-1.5, quantiles={"p50": -1.5})},
        {"label": FeatureStats("string", 2, 0, top=(("yes", 2),), distinct=1)},
        1e-4,
        0.01,
    )
    registry.record_run(dataclasses.replace(failed, view="with_stats", outcome="ok", error=None, stats=stats))
    assert [(r.view, r.stats) for r in registry.runs("with_stats")] == [("with_stats", stats)]
    assert [r.run_id for r in registry.runs(failed=True)] == [1, 2, 3]
    registry.close()
    Registry(registry_url).close()  # opening it again adds nothing twice


def test_training_sets_round_trip_and_an_older_registry_gets_their_table(registry_url: str) -> None:
    """A registry created before training sets were recorded (no such table) gets the table when opened; what is
    recorded reads back as written, oldest first, numbered."""
    import sqlalchemy as sa

    from features.registry import TrainingSetRecord, plan_versions

    if registry_url.startswith("sqlite:///"):
        Path(registry_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = sa.create_engine(registry_url)
    plan_versions.to_metadata(sa.MetaData()).create(engine)  # a registry of the first release: no training sets
    assert "skewless_training_sets" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    registry = Registry(registry_url)
    assert registry.training_sets() == []
    when = datetime(2024, 3, 1, 12, tzinfo=UTC)
    first = TrainingSetRecord("/d/a.parquet", "/d/a.parquet.manifest.json", 2, ("v:x", "w:y"), 10, when, "svc")
    second = TrainingSetRecord("/d/b.parquet", "/d/b.parquet.manifest.json", 3, ("w:y",), 0, when)
    registry.record_training_set(first)
    registry.record_training_set(second)
    registry.close()
    stored = Registry(registry_url).training_sets()
    assert [(t.output, t.plan_version, t.features, t.rows, t.feature_service) for t in stored] == [
        ("/d/a.parquet", 2, ("v:x", "w:y"), 10, "svc"),
        ("/d/b.parquet", 3, ("w:y",), 0, None),
    ]
    assert [t.created_at for t in stored] == [when, when] and stored[0].views == ("v", "w")
    assert len({t.set_id for t in stored}) == 2


def _variants(make_repo: Callable[..., RepoConfig], count: int) -> list[Plan]:
    """``count`` plans that differ (one expression each), compiled from real definitions."""
    plans = []
    for i in range(count):
        views = VIEWS.replace("amount * fx_rate", f"amount * fx_rate + {i}")
        plans.append(FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": views})).compile())
    assert len({p.fingerprint for p in plans}) == count
    return plans


def _at_once(calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` in threads released together by one barrier; what each returned, or the RegistryError
    it raised, in the order of ``calls``."""
    barrier = threading.Barrier(len(calls))
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = calls[i]()
        except RegistryError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return [outcomes.get(i) for i in range(len(calls))]


def _race(registries: list[Registry], plans: list[Plan], planned_against: int | None) -> list[tuple[int, object]]:
    """Registry ``i`` applies ``plans[i]``, all at once; (i, (version, created) or the error)s."""

    def apply(i: int) -> object:
        version, created = registries[i].apply(plans[i], planned_against=planned_against)
        return version.version, created

    return list(enumerate(_at_once([functools.partial(apply, i) for i in range(len(registries))])))


def test_processes_opening_a_new_registry_at_once_all_open_it(registry_url: str) -> None:
    """Two applies on a new registry both create its tables: the slower one used to fail with "table
    skewless_plan_versions already exists" (seen with two `skewless apply` processes)."""
    for _ in range(5):
        Registry(registry_url).drop()
        assert _at_once([lambda: _latest_of_new(registry_url)] * 4) == [None] * 4


def _latest_of_new(url: str) -> object:
    registry = Registry(url)
    try:
        return registry.latest()
    finally:
        registry.close()


def test_concurrent_applies_on_one_version_exactly_one_wins(
    make_repo: Callable[..., RepoConfig], registry_url: str
) -> None:
    """Racing applies, each from its own connection pool as separate processes would: per round, exactly one
    writes the next version, every other fails naming the move, and nothing replaces the winner's plan."""
    racers, rounds = 4, 8
    plans = _variants(make_repo, racers * rounds)
    Registry(registry_url).close()  # the tables exist before the race
    registries = [Registry(registry_url) for _ in range(racers)]
    for round_ in range(rounds):
        outcomes = _race(registries, plans[round_ * racers : (round_ + 1) * racers], planned_against=round_ or None)
        winners = [(i, o) for i, o in outcomes if not isinstance(o, Exception)]
        losers = [o for _, o in outcomes if isinstance(o, Exception)]
        assert len(outcomes) == racers
        assert len(winners) == 1, outcomes
        winner, result = winners[0]
        assert result == (round_ + 1, True)
        before = "no version" if round_ == 0 else f"version {round_}"
        for loser in losers:
            assert str(loser) == (
                f"the registry moved from {before} to version {round_ + 1} since this plan (another apply wrote "
                f"it); nothing was written: run plan again"
            )
        stored = Registry(registry_url)
        assert [v.version for v in stored.versions()] == list(range(1, round_ + 2))
        assert stored.latest().fingerprint == plans[round_ * racers + winner].fingerprint  # type: ignore[union-attr]
        stored.close()
    for registry in registries:
        registry.close()


def test_apply_writes_only_on_top_of_the_version_it_planned_against(
    make_repo: Callable[..., RepoConfig], registry_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of the finding, made deterministic: B applies while A is between its plan and its write. A
    used to write version 2 over B's version 1 without a word; now it fails and B's definitions stay."""
    plan_b = _variants(make_repo, 1)[0]
    a = FeatureStore(config=make_repo())
    a.__dict__["registry"] = Registry(registry_url)
    b = Registry(registry_url)  # another process's apply
    real_diff = features.store.diff_plans

    def diff_then_b_applies(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(features.store, "diff_plans", real_diff)
        b.apply(plan_b, planned_against=None)  # after A read the latest version, before A writes
        return real_diff(*args, **kwargs)

    monkeypatch.setattr(features.store, "diff_plans", diff_then_b_applies)
    with pytest.raises(RegistryError, match=r"moved from no version to version 1 since this plan.*run plan again"):
        a.apply()
    latest = a.registry.latest()
    assert latest is not None and latest.version == 1 and latest.fingerprint == plan_b.fingerprint
    assert a.apply().version.version == 2  # planned again: applies on top of B's version
    a.registry.close()
    b.close()
