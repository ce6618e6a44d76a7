"""The validation gate on real components (PostgreSQL source, Delta, real Redis), in both engines: a run whose rows
fail a blocking check is neither committed nor published (the Delta version and the live Redis snapshot are
checked directly), is recorded as failed with its checks and example rows, and the next run after the data is
fixed publishes; warnings publish; ``--skip-checks`` publishes and is recorded. Counts are held to pandas over the
same source rows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import ChecksFailedError, FeatureStore
from features.cli import main
from features.protocols import MaterializationResult
from features.status import view_statuses
from offline import delta_rs
from offline.tables import table_path

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BASE = datetime(2024, 5, 1, tzinfo=UTC)
ALLOWED = ["food", "travel", "retail"]

DEFINITIONS = """
from datetime import timedelta

from features import (
    AllowedValues, Drift, Entity, Feature, FeatureView, Float64, MaxNulls, Int64, Range, RowCount, SqlSource, String,
    UniqueKeys,
)

merchant = Entity(join_keys={{"merchant_id": Int64}})
scores = SqlSource(connection="shop", table="{table}", timestamp="scored_at")

risk = FeatureView(
    entities=[merchant],
    source=scores,
    ttl=timedelta(days=3650),
    features=[
        Feature("rate", Float64, checks=[Range(0, 1), MaxNulls(0.25)]),
        Feature("category", String, checks=[AllowedValues({allowed!r}, level="warning")]),
    ],
    checks=[RowCount(min=3), UniqueKeys()],
)
"""


def run_sql(url: str, statement: str, rows: list[tuple[Any, ...]] | None = None) -> None:
    """One statement on PostgreSQL (``rows``: executed once per row)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if rows is None:
            conn.execute(statement)
        else:
            with conn.cursor() as cursor:
                cursor.executemany(statement, rows)


class Repo:
    """A repository whose one view ``risk`` reads its own PostgreSQL table, one batch of scores per day."""

    def __init__(self, root: Path, postgres_url: str, redis_url: str, engine: str) -> None:
        self.table = f"checks_{uuid.uuid4().hex[:8]}"
        self.postgres_url = postgres_url
        self.engine = engine
        self.rows: list[dict[str, Any]] = []
        self._sql(
            f"CREATE TABLE {self.table} (merchant_id BIGINT, rate DOUBLE PRECISION, category TEXT, scored_at TIMESTAMP)"
        )
        (root / "definitions").mkdir(parents=True)
        (root / "definitions" / "views.py").write_text(DEFINITIONS.format(table=self.table, allowed=ALLOWED))
        (root / "skewless.yaml").write_text(
            f"project: checks_{uuid.uuid4().hex[:8]}\nregistry: sqlite:///{root / 'registry.db'}\n"
            f"offline:\n  path: offline\nonline:\n  url: {redis_url}\nconnections:\n  shop: {postgres_url}\n"
        )
        self.root = root
        self.store = FeatureStore(root)
        self.store.apply()
        self.view = self.store.plan_version().plan.view("risk")

    def _sql(self, statement: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        run_sql(self.postgres_url, statement, rows)

    def add_day(self, day: float, rates: list[float | None], categories: list[str] | None = None) -> None:
        """One score per merchant 1..n on ``day`` (days after BASE: 1.5 is noon of the second day)."""
        at = BASE + timedelta(days=day)
        categories = categories or [ALLOWED[i % 3] for i in range(len(rates))]
        batch = [
            {"merchant_id": i + 1, "rate": r, "category": c, "scored_at": at}
            for i, (r, c) in enumerate(zip(rates, categories, strict=True))
        ]
        self._sql(
            f"INSERT INTO {self.table} VALUES (%s, %s, %s, %s)",
            [(b["merchant_id"], b["rate"], b["category"], at.replace(tzinfo=None)) for b in batch],
        )
        self.rows.extend(batch)

    def fix_rates(self) -> None:
        """The data is fixed at the source: every rate above 1 becomes 0.5."""
        self._sql(f"UPDATE {self.table} SET rate = 0.5 WHERE rate > 1")
        for row in self.rows:
            if row["rate"] is not None and row["rate"] > 1:
                row["rate"] = 0.5

    def run(self, day: int, *, skip_checks: bool = False) -> MaterializationResult:
        """Materialize the batch of ``day`` in this repository's engine, as the facade would (recorded)."""
        version = self.store.plan_version()
        return self.store.offline.materialize(  # type: ignore[call-arg]
            version.plan,
            self.view,
            start=BASE + timedelta(days=day),
            end=BASE + timedelta(days=day + 1),
            online=self.store.online_store(),
            engine=self.engine,
            plan_version=version.version,
            skip_checks=skip_checks,
        )

    def delta_version(self) -> int | None:
        return delta_rs.latest_version(table_path(self.store.config, self.view))

    def served(self, merchants: list[int]) -> list[Any]:
        result = self.store.get_online_features({"merchant_id": merchants}, features=["risk:rate"]).to_dict()
        return list(result["features"]["risk__rate"]["values"])

    def day_rows(self, day: float) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        return frame[frame["scored_at"] == BASE + timedelta(days=day)]


@pytest.fixture(params=["arrow", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow])])
def repo(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Repo]:
    if request.param == "spark":
        request.getfixturevalue("spark")  # the session every Spark test shares
    made = Repo(tmp_path / "repo", postgres_url, redis_url, request.param)
    try:
        yield made
    finally:
        made.store.close()


MERCHANTS = list(range(1, 11))


def test_a_blocking_check_stops_exactly_that_run_and_the_fixed_run_publishes(repo: Repo) -> None:
    repo.add_day(0, [i / 20 for i in range(10)])
    first = repo.run(0)
    assert first.engine == repo.engine and first.online_committed
    snapshot = repo.store.online_store().live_snapshot(repo.view)
    assert snapshot is not None and repo.delta_version() == 0
    served_before = repo.served(MERCHANTS)
    assert served_before == list(repo.day_rows(0)["rate"])

    # Day 1: three rates out of [0, 1] (one of them infinite): the run is blocked before its commit.
    bad = [0.1, 5.0, 0.2, float("inf"), 0.3, 0.4, 1.5, 0.5, 0.6, 0.7]
    repo.add_day(1, bad)
    with pytest.raises(ChecksFailedError, match="range\\(rate\\)") as raised:
        repo.run(1)
    assert repo.delta_version() == 0  # Delta stays at its previous version
    assert repo.store.online_store().live_snapshot(repo.view) == snapshot  # Redis serves the previous snapshot
    assert repo.served(MERCHANTS) == served_before

    # Recorded as failed, with the failing check, its count (oracle: pandas over the day's rows) and examples.
    day = repo.day_rows(1)
    out_of_range = day[(day["rate"] < 0) | (day["rate"] > 1)]
    failed_run = repo.store.registry.runs("risk", failed=True)[-1]
    assert failed_run.outcome == "failed" and failed_run.rows_read == len(day)
    assert failed_run.checks is not None and not failed_run.checks.skipped
    (range_check,) = [o for o in failed_run.checks.blocking]
    assert range_check.check.startswith("range(rate)")
    assert range_check.failing_rows == len(out_of_range) == 3
    assert {e["merchant_id"] for e in range_check.examples} == set(out_of_range["merchant_id"])
    assert raised.value.reports["risk"].blocking == failed_run.checks.blocking
    finite = day["rate"][np.isfinite(day["rate"])]
    assert failed_run.stats is not None and failed_run.stats.written["rate"].max == finite.max()
    assert failed_run.stats.written["rate"].pos_inf == int(np.isposinf(day["rate"]).sum())
    assert view_statuses(repo.store)[0]["checks"][0]["check"] == range_check.check

    # The data is fixed at the source: the next run of the same batch publishes normally.
    repo.fix_rates()
    fixed = repo.run(1)
    assert fixed.online_committed and repo.delta_version() == 1
    assert repo.served(MERCHANTS) == list(repo.day_rows(1)["rate"])
    assert fixed.checks is not None and not fixed.checks.failed
    assert view_statuses(repo.store)[0]["checks"] == []


def test_warnings_publish_and_skip_checks_publishes_and_is_recorded(repo: Repo) -> None:
    repo.add_day(0, [0.1] * 10)
    repo.run(0)

    # A category outside the allowed values is a warning: the run publishes and reports it.
    categories = ["food", "crypto", "travel", "crypto", *["retail"] * 6]
    repo.add_day(1, [0.2] * 10, categories)
    warned = repo.run(1)
    assert warned.online_committed and repo.delta_version() == 1
    assert repo.served(MERCHANTS) == [0.2] * 10
    assert warned.checks is not None
    (allowed,) = warned.checks.failed
    assert allowed.level == "warning" and allowed.failing_rows == categories.count("crypto") == 2
    assert {e["category"] for e in allowed.examples} == {"crypto"}

    # A blocking failure (a duplicate merchant, a null flood) under --skip-checks: published, and recorded so.
    repo.add_day(2, [None, None, None, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])
    repo._sql(
        f"INSERT INTO {repo.table} VALUES (%s, %s, %s, %s)",
        [(4, 0.9, "food", (BASE + timedelta(days=2, hours=1)).replace(tzinfo=None))],
    )
    skipped = repo.run(2, skip_checks=True)
    assert skipped.online_committed and repo.delta_version() == 2
    assert repo.served([4, 5]) == [0.9, 0.3]
    record = repo.store.registry.runs("risk")[-1]
    assert record.outcome == "ok" and record.checks is not None and record.checks.skipped
    blocking = {o.check.split(" ")[0]: o for o in record.checks.blocking}
    assert set(blocking) == {"max_nulls(rate)", "unique_keys"}
    assert blocking["max_nulls(rate)"].failing_rows == 3
    assert blocking["unique_keys"].failing_rows == 1
    assert blocking["unique_keys"].examples == ({"merchant_id": 4, "rows": 2},)
    listed = view_statuses(repo.store)[0]["checks"]
    assert {c["check"].split(" ")[0] for c in listed if c["level"] == "blocking"} == set(blocking)


def test_materialize_exits_non_zero_with_a_table_and_skip_checks_publishes(
    tmp_path: Path, postgres_url: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repo(tmp_path / "repo", postgres_url, redis_url, "arrow")
    root = str(repo.root)
    window = ["--start", BASE.date().isoformat(), "--end", (BASE + timedelta(days=1)).date().isoformat()]
    try:
        repo.add_day(0, [0.1, 0.2, 7.0])
        assert main(["materialize", "risk", "--repo", root, *window]) == 1
        shown = capsys.readouterr().out
        assert "Checks failed: not committed, not published" in shown and "range(rate)" in shown
        assert '"merchant_id": 3' in shown and repo.delta_version() is None

        assert main(["materialize", "risk", "--repo", root, *window, "--skip-checks"]) == 0
        shown = capsys.readouterr().out
        assert "--skip-checks: published despite blocking checks: risk" in shown
        assert repo.delta_version() == 0 and repo.served([3]) == [7.0]
        assert main(["describe", "risk", "--repo", root, "--json"]) == 0
        declared = [c["check"] for c in json.loads(capsys.readouterr().out)["checks"]]
        assert declared == [
            "range(rate) [0, 1]",
            "max_nulls(rate) <= 25.00%",
            f"allowed_values(category) in {ALLOWED}",
            "row_count [3, inf]",
            "unique_keys",
        ]
        assert main(["status", "--repo", root, "--json"]) == 0
        (status,) = json.loads(capsys.readouterr().out)
        assert [(c["check"], c["level"]) for c in status["checks"]] == [("range(rate) [0, 1]", "blocking")]
    finally:
        repo.store.close()


def test_a_drift_against_a_training_contract_blocks_the_run_that_left_it(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    repo = Repo(tmp_path / "repo", postgres_url, redis_url, "arrow")
    try:
        merchants = list(range(1, 61))
        repo.add_day(0, [0.05 + (i % 10) / 100 for i in range(60)])  # rates 0.05 to 0.14
        repo.run(0)
        entities = pd.DataFrame({"merchant_id": merchants, "event_timestamp": [BASE + timedelta(days=0.5)] * 60})
        out = tmp_path / "set.parquet"
        trained = repo.store.get_training_dataset(entities, features=["risk:rate"], output=str(out))
        repo.store.register_contract(f"{out}.manifest.json", name="risk_model")

        views = repo.root / "definitions" / "views.py"
        views.write_text(views.read_text().replace("UniqueKeys()]", 'UniqueKeys(), Drift(against="risk_model")]'))
        repo.store.apply()
        repo.view = repo.store.plan_version().plan.view("risk")

        # Day 1 stays within every range, but its rates sit far from those the model was trained on.
        repo.add_day(1, [0.75 + (i % 10) / 100 for i in range(60)])
        with pytest.raises(ChecksFailedError, match="drift against risk_model") as raised:
            repo.run(1)
        (blocked,) = raised.value.reports["risk"].blocking
        # Oracle: the training set's rates (pandas) against the day's rows.
        trained_mean, day_mean = trained["risk__rate"].mean(), repo.day_rows(1)["rate"].mean()
        assert f"rate: mean {trained_mean:.4g} -> {day_mean:.4g}" in blocked.observed
        assert repo.delta_version() == 0 and repo.served([1]) == [0.05]
    finally:
        repo.store.close()


WINDOWED = """
from features import Aggregation

daily = FeatureView(
    entities=[merchant],
    source=scores,
    cadence="1d",
    ttl=timedelta(days=3650),
    aggregations=[Aggregation("max", "rate", windows=["1d"], name="rate_max")],
    checks=[Range(0, 1, feature="rate_max_1d")],
)
"""


@pytest.mark.spark
@pytest.mark.slow
def test_a_windowed_view_is_gated_before_its_values_are_committed(
    tmp_path: Path, postgres_url: str, redis_url: str, spark: Any
) -> None:
    repo = Repo(tmp_path / "repo", postgres_url, redis_url, "spark")
    try:
        views = repo.root / "definitions" / "views.py"
        views.write_text(views.read_text() + WINDOWED)
        repo.store.apply()
        repo.view = repo.store.plan_version().plan.view("daily")
        # Scores at noon: the tick at the next midnight holds them (each window is (tick - 1d, tick]).
        repo.add_day(0.5, [0.1] * 10)
        repo.run(0)
        version, snapshot = repo.delta_version(), repo.store.online_store().live_snapshot(repo.view)
        assert version is not None and snapshot is not None

        repo.add_day(1.5, [0.1, 5.0, 0.2, float("inf"), 0.3, 0.4, 1.5, 0.5, 0.6, 0.7])
        with pytest.raises(ChecksFailedError) as raised:
            repo.run(1)
        (blocked,) = raised.value.reports["daily"].blocking
        day = repo.day_rows(1.5)
        assert blocked.failing_rows == int((day["rate"] > 1).sum()) == 3  # the day's max per merchant (pandas)
        assert repo.delta_version() == version
        assert repo.store.online_store().live_snapshot(repo.view) == snapshot

        repo.fix_rates()
        fixed = repo.run(1)
        assert fixed.online_committed and repo.delta_version() == version + 1
    finally:
        repo.store.close()
