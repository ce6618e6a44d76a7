"""The registry on SQLite and on a real PostgreSQL: versions, no-op applies, run records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from features.config import RepoConfig
from features.registry import Registry, RunRecord
from features.store import FeatureStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'registry.db'}"
    base: str = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    name = f"reg_{abs(hash(tmp_path)) % 10**8}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return base.rsplit("/", 1)[0] + f"/{name}"


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
