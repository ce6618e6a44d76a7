"""Every offline engine's materialization (the ``offline_engine`` fixture: Arrow and Spark) on generated source
rows in a real PostgreSQL: many rows sharing keys, event and created time with other values, nulls, NaN and
infinities, empty and non-ASCII text. Each engine's Delta table and published rows are held to one
plain-Python oracle, so they equal each other."""

from __future__ import annotations

import math
import random
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from features.config import RepoConfig
from offline.jobs import Materialization
from offline.tables import table_path
from tests.offline.support import FileOnlineStore, make_plan
from tests.offline.test_arrow_materialize import pg_view, write_pg_source
from tests.offline.test_materialize import delta_rows, expected_latest, live_rows

pytestmark = [pytest.mark.postgres, pytest.mark.spark, pytest.mark.slow]

BASE = datetime(2024, 3, 1)
Row = tuple[Any, ...]  # (user_id, merchant, amount, qty, ts, created)


def generated_rows(seed: int, n: int = 3_000) -> list[Row]:
    """Few distinct keys and times, so most (keys, event, created) groups hold several rows. No -0.0: a group
    whose rows differ only in the sign of a zero may keep either row, in Spark as in Arrow."""
    rng = random.Random(seed)
    users = [None, *range(1, 25)]
    merchants = [None, "", "shop", "Shop", "CAFÉ", "ß", "日本"]
    amounts = [None, math.nan, math.inf, -math.inf, 0.0, 1.5, 2.0, -3.25, 1e300]
    times = [BASE + timedelta(hours=h) for h in range(12)]
    rows = []
    for _ in range(n):
        ts = rng.choice([None, *times]) if rng.random() < 0.02 else rng.choice(times)
        created = rng.choice([None, None, ts, ts + timedelta(minutes=5)] if ts is not None else [None])
        rows.append(
            (
                rng.choice(users),
                rng.choice(merchants),
                rng.choice(amounts),
                rng.choice([None, 0, 1, 2, 3, 7]),
                ts,
                created,
            )
        )
    return rows


def spark_order(value: Any) -> tuple[Any, ...]:
    """Spark's ascending order with nulls first and NaN after every number."""
    if value is None:
        return (0,)
    if isinstance(value, float) and math.isnan(value):
        return (1, 1)
    return (1, 0, value)


def features_of(row: Row) -> tuple[Any, ...]:
    """amount * 2, amount * qty, lower(merchant), qty > 2, in plain Python (SQL nulls)."""
    _, merchant, amount, qty, _, _ = row
    return (
        None if amount is None else amount * 2,
        None if amount is None or qty is None else amount * qty,
        None if merchant is None else merchant.lower(),
        None if qty is None else qty > 2,
    )


def oracle_table(rows: list[Row]) -> set[Row]:
    kept: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        user, ts, created = row[0], row[4], row[5]
        if user is None or ts is None:
            continue
        feats = features_of(row)
        identity = (user, ts, created)
        if identity not in kept or [spark_order(v) for v in feats] < [spark_order(v) for v in kept[identity]]:
            kept[identity] = feats
    return {comparable((k[0], *f, k[1], k[2])) for k, f in kept.items()}


def comparable(row: Row) -> Row:
    """NaN as a marker, so rows compare in sets (NaN != NaN)."""
    return tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row)


@pytest.mark.parametrize("seed", [1, 2])
def test_engine_writes_and_publishes_what_plain_python_says(
    spark: Any, offline_engine: Any, postgres_url: str, tmp_path: Path, seed: int
) -> None:
    rows = generated_rows(seed)
    table = f"gen_{uuid.uuid4().hex[:8]}"
    write_pg_source(postgres_url, table, rows)
    view = pg_view(table, "gen_txn")
    expected = oracle_table(rows)
    assert len(expected) < sum(1 for r in rows if r[0] is not None and r[4] is not None)  # duplicates were made
    config = RepoConfig(root=tmp_path, connections={"shop": postgres_url})
    store = FileOnlineStore(tmp_path / "online")
    engine = offline_engine(config)
    job = Materialization(make_plan(view), view, None, None)
    assert engine.refusal(job) is None
    result = engine.materialize(job, store, None)
    assert result.rows_read == len(rows) and result.rows_written_offline == len(expected)
    assert {comparable(r) for r in delta_rows(spark, table_path(config, view))} == expected
    assert {comparable(r) for r in live_rows(store, "gen_txn")} == expected_latest(expected)
