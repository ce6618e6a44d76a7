"""The audit finds nothing on a clean run of the benchmark workload (issue 22: no false positives), at a small scale,
on real PostgreSQL, Delta and redis-server; ``bench/audit_cost.py`` measures it at full scale.

The oracle is the workload itself: a clean run has no skew, so every logged value must be reported equal, with no
drift and no freshness lag; the audit's counts are checked against the number of lookups the test made.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.audit_cost import log_lookups
from bench.run import load_postgres, online_users, write_skewless_repo
from bench.workload import generate
from features.store import FeatureStore

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LOOKUPS = 150


def test_a_clean_run_of_the_benchmark_workload_audits_clean(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    workload = generate(0.003, 11, end=end)
    load_postgres(postgres_url, workload)
    repo = tmp_path / "repo"
    write_skewless_repo(repo, postgres_url, redis_url)
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize()
        users = online_users(workload, datetime.now(UTC), LOOKUPS, 1, seed=random.Random(3).randint(0, 99))
        assert log_lookups(store, users) == LOOKUPS
        result = store.audit()
    assert result.lookups == LOOKUPS and result.recomputed
    assert len(result.features) == 10
    for feature in result.features:
        assert (feature.total, feature.equal) == (LOOKUPS, LOOKUPS), feature.to_json()
        assert (feature.drifted, feature.lagged, feature.drift_compared) == (0, 0, LOOKUPS), feature.to_json()
    assert result.worst_rate == 0.0
