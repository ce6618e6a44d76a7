"""The default drift rules, through real runs of the Arrow engine (PostgreSQL source, Delta, real Redis): a stable
source run 20 times fires nothing; a NaN flood, a unit change (x100), a category vanishing and a source that
returns 10% of its usual rows are each caught, as warnings (the runs publish). What each rule reports is held to
pandas over the same rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import FeatureStore
from features.checks import CheckOutcome
from tests.integration.test_checks import run_sql

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BASE = datetime(2024, 5, 1, tzinfo=UTC)
CASES = ("stable", "nan_flood", "unit", "vanish", "volume")
KINDS, SHARES = ["a", "b", "c", "d"], [0.4, 0.3, 0.2, 0.1]

VIEW = """
{name} = FeatureView(
    entities=[merchant],
    source=SqlSource(connection="shop", table="{table}", timestamp="scored_at"),
    ttl=timedelta(days=3650),
    features=[Feature("amount", Float64), Feature("kind", String)],
)
"""


class Sources:
    """One PostgreSQL table and one view per case, in one repository."""

    def __init__(self, root: Path, postgres_url: str, redis_url: str) -> None:
        self.url = postgres_url
        prefix = f"drift_{uuid.uuid4().hex[:8]}"
        self.tables = {case: f"{prefix}_{case}" for case in CASES}
        self.rows: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
        definitions = (
            "from datetime import timedelta\nfrom features import Entity, Feature, FeatureView, Float64, Int64, "
            'SqlSource, String\nmerchant = Entity(join_keys={"merchant_id": Int64})\n'
        )
        for case, table in self.tables.items():
            self._sql(
                f"CREATE TABLE {table} (merchant_id BIGINT, amount DOUBLE PRECISION, kind TEXT, scored_at TIMESTAMP)"
            )
            definitions += VIEW.format(name=case, table=table)
        (root / "definitions").mkdir(parents=True)
        (root / "definitions" / "views.py").write_text(definitions)
        (root / "skewless.yaml").write_text(
            f"project: {prefix}\nregistry: sqlite:///{root / 'registry.db'}\n"
            f"offline:\n  path: offline\nonline:\n  url: {redis_url}\nconnections:\n  shop: {postgres_url}\n"
        )
        self.store = FeatureStore(root)
        self.store.apply()

    def _sql(self, statement: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        run_sql(self.url, statement, rows)

    def add(self, case: str, day: int, frame: pd.DataFrame, *, spread: bool = False) -> None:
        """The rows of ``frame`` on ``day``: all at its midnight, or a second apart with ``spread``."""
        at = BASE + timedelta(days=day)
        times = [at + timedelta(seconds=i if spread else 0) for i in range(len(frame))]
        rows = [
            (int(r.merchant_id), float(r.amount), r.kind, t.replace(tzinfo=None))
            for r, t in zip(frame.itertuples(), times, strict=True)
        ]
        self._sql(f"INSERT INTO {self.tables[case]} VALUES (%s, %s, %s, %s)", rows)
        self.rows[case].extend(frame.assign(day=day, at=times).to_dict("records"))

    def run(self, case: str, day: int) -> tuple[CheckOutcome, ...]:
        (result,) = self.store.materialize([case], start=BASE + timedelta(days=day), end=BASE + timedelta(days=day + 1))
        assert result.engine == "arrow" and result.online_committed  # default rules warn: the run publishes
        assert result.checks is not None
        return result.checks.outcomes

    def day(self, case: str, day: int) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows[case])
        return frame[frame["day"] == day]


def batch(rng: np.random.Generator, n: int | None = None) -> pd.DataFrame:
    """A usual day: about 500 merchants, amounts around 50 with 1% NaN, four kinds in fixed shares."""
    n = n if n is not None else int(rng.integers(460, 540))
    amount = rng.normal(50, 10, n)
    amount[rng.random(n) < 0.01] = np.nan
    return pd.DataFrame({"merchant_id": np.arange(n), "amount": amount, "kind": rng.choice(KINDS, n, p=SHARES)})


@pytest.fixture
def sources(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Sources]:
    made = Sources(tmp_path / "repo", postgres_url, redis_url)
    try:
        yield made
    finally:
        made.store.close()


def _fired(outcomes: tuple[CheckOutcome, ...]) -> dict[str, str]:
    return {o.check: o.observed for o in outcomes if not o.passed}


def test_a_stable_source_run_20_times_fires_nothing(sources: Sources) -> None:
    rng = np.random.default_rng(20)
    for day in range(20):
        sources.add("stable", day, batch(rng))
        outcomes = sources.run("stable", day)
        assert _fired(outcomes) == {}, (day, _fired(outcomes))
        if day:  # every rule did compare: nothing passes by having nothing to look at
            observed = {o.check: o.observed for o in outcomes if o.default}
            assert observed["drift(amount) against previous"] == "amount: no drift"
            assert observed["drift(kind) against previous"] == "kind: no drift"
            assert "source rows" in observed["drift(rows read) against previous"]


def test_each_drift_case_is_caught_by_the_defaults(sources: Sources) -> None:
    rng = np.random.default_rng(4)
    for case in CASES[1:]:
        sources.add(case, 0, batch(rng, 500))
        sources.run(case, 0)

    flood = batch(rng, 500)
    flood.loc[flood.index[:250], "amount"] = np.nan  # half the amounts NaN (stored as NaN, not null)
    sources.add("nan_flood", 1, flood)
    fired = _fired(sources.run("nan_flood", 1))
    before, after = (sources.day("nan_flood", d)["amount"].isna().mean() for d in (0, 1))
    assert list(fired) == ["drift(amount) against previous"]
    assert f"missing share {before:.1%} -> {after:.1%}" in fired["drift(amount) against previous"]

    unit = batch(rng, 500)
    unit["amount"] *= 100  # cents instead of euros
    sources.add("unit", 1, unit)
    fired = _fired(sources.run("unit", 1))
    means = [sources.day("unit", d)["amount"].mean() for d in (0, 1)]
    assert list(fired) == ["drift(amount) against previous"]
    assert f"mean {means[0]:.4g} -> {means[1]:.4g}" in fired["drift(amount) against previous"]
    assert "stddev" in fired["drift(amount) against previous"]  # the spread moved a hundredfold as well

    vanished = batch(rng, 500)
    vanished["kind"] = rng.choice(KINDS[1:], 500, p=[0.5, 0.33, 0.17])  # kind 'a' is gone
    sources.add("vanish", 1, vanished)
    fired = _fired(sources.run("vanish", 1))
    share_a = sources.day("vanish", 0)["kind"].eq("a").mean()
    assert list(fired) == ["drift(kind) against previous"]
    assert f"share of 'a' {share_a:.1%} -> 0.0%" in fired["drift(kind) against previous"]

    sources.add("volume", 1, batch(rng, 50))  # a tenth of the usual rows
    fired = _fired(sources.run("volume", 1))
    assert list(fired) == ["drift(rows read) against previous"]
    assert "source rows 500 -> 50" in fired["drift(rows read) against previous"]


def test_the_volume_rule_compares_only_runs_that_read_the_same_kind_of_window(sources: Sources) -> None:
    """A first run reads every source row, the next ones only the rows from the watermark on: far fewer by design,
    which is not drift. An incremental run's volume is compared with the previous incremental run's only."""
    rng = np.random.default_rng(11)
    for day in range(10):
        sources.add("stable", day, batch(rng), spread=True)

    def run() -> tuple[int, dict[str, str]]:
        (result,) = sources.store.materialize(["stable"])  # no --start: the cursor decides what is read
        assert result.checks is not None and result.online_committed
        return result.rows_read, _fired(result.checks.outcomes)

    def read_from(watermark: datetime) -> int:  # the oracle: rows at or after the watermark (no late_rows)
        return int((pd.DataFrame(sources.rows["stable"])["at"] >= watermark).sum())

    rows_read, fired = run()
    assert rows_read == len(sources.rows["stable"]) and fired == {}  # the first run: every row

    watermark = max(r["at"] for r in sources.rows["stable"])
    sources.add("stable", 10, batch(rng), spread=True)
    rows_read, fired = run()
    assert rows_read == read_from(watermark) < len(sources.rows["stable"]) / 5
    assert fired == {}  # about a tenth of the first run's rows, and no alarm: nothing of its kind to compare

    watermark, before = max(r["at"] for r in sources.rows["stable"]), rows_read
    sources.add("stable", 11, batch(rng, 50), spread=True)  # then the source sends a tenth of its usual rows
    rows_read, fired = run()
    assert rows_read == read_from(watermark)
    assert list(fired) == ["drift(rows read) against previous"]
    assert f"source rows {before:,} -> {rows_read:,}" in fired["drift(rows read) against previous"]
