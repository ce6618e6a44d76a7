"""Incremental runs of views without aggregations, in Arrow and in Spark, from a real PostgreSQL into real Delta
tables and a real Redis: a rerun reads only the rows it has not seen (the watermark minus the lookback, or the
change column), and publishes only the entities whose latest row changed. The oracle is pandas over the source
rows, applying the documented read rule (docs/ARCHITECTURE.md, "Incremental runs")."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.config import RepoConfig
from features.dtypes import DType
from features.errors import MaterializationError
from features.plan import ColumnSpec, ViewPlan
from offline import delta_rs
from offline.arrow import materialize as arrow_materialize
from offline.spark import tables as spark_tables
from offline.spark.materialize import materialize as spark_materialize
from offline.spark.tables import read_table
from offline.tables import table_path
from online.redis_store import RedisOnlineStore
from tests.offline.support import make_plan, make_view

pytestmark = [pytest.mark.postgres, pytest.mark.spark]

BASE = datetime(2024, 5, 1)
USERS = 20
LOOKBACK = timedelta(hours=2)
COLUMNS = ["user_id", "amount", "ts", "updated"]


def first_rows() -> list[tuple[Any, ...]]:
    """Three rows per user, the last of user u at BASE + 10h + u minutes (the watermark: user 20's), each
    written (``updated``) at its event time."""
    rows = []
    for u in range(1, USERS + 1):
        for i in range(3):
            ts = BASE + timedelta(hours=8 + i, minutes=u)
            rows.append((u, float(u * 10 + i), ts, ts))
    return rows


def watermark(rows: list[tuple[Any, ...]]) -> datetime:
    return max(r[2] for r in rows)


def second_rows(w: datetime) -> list[tuple[Any, ...]]:
    """New rows for users 1-3; user 4 a late row within the lookback (later than its latest, so it changes the
    served value); user 5 a late row older than the lookback (never read: the table must not hold it)."""
    later = BASE + timedelta(days=2)
    return [
        (1, 1001.0, w + timedelta(minutes=5), later),
        (2, 1002.0, w + timedelta(minutes=6), later),
        (3, 1003.0, w + timedelta(minutes=7), later),
        (3, 1004.0, w + timedelta(minutes=8), later),
        (4, 1005.0, w - timedelta(minutes=10), later),
        (5, 1006.0, w - LOOKBACK - timedelta(minutes=1), later),
    ]


def write_pg(url: str, table: str, rows: list[tuple[Any, ...]], *, create: bool) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if create:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(
                f"CREATE TABLE {table} (user_id BIGINT, amount DOUBLE PRECISION, ts TIMESTAMP, updated TIMESTAMP)"
            )
        with conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s)", rows)


def update_pg(url: str, table: str, user: int, amount: float, updated: datetime) -> None:
    """Restate every row of ``user`` (same keys and times, another amount): what a change column catches."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET amount = %s, updated = %s WHERE user_id = %s", (amount, updated, user))


def a_view(table: str, *, expression: str = "amount", changed: bool = False) -> ViewPlan:
    view = make_view(
        f"inc_{table}",
        connection="shop",
        table=table,
        keys={"user_id": DType.INT64},
        columns={"amount": DType.FLOAT64, "ts": DType.TIMESTAMP, "updated": DType.TIMESTAMP},
        features={"value": expression},
    )
    source = dataclasses.replace(view.source, late_rows_seconds=int(LOOKBACK.total_seconds()))
    if changed:
        columns = (*source.columns, ColumnSpec("updated", DType.TIMESTAMP))
        source = dataclasses.replace(source, changed_column="updated", late_rows_seconds=0, columns=columns)
    return dataclasses.replace(view, source=source)


def oracle_table(seen: pd.DataFrame) -> set[tuple[Any, ...]]:
    """The rows the table must hold: one per (user, event time), the last restated value."""
    rows = seen.sort_values("updated").drop_duplicates(["user_id", "ts"], keep="last")
    return {(int(r.user_id), float(r.amount), r.ts.to_pydatetime()) for r in rows.itertuples()}


def oracle_latest(table: set[tuple[Any, ...]]) -> dict[int, tuple[float, datetime]]:
    latest: dict[int, tuple[float, datetime]] = {}
    for user, amount, ts in sorted(table, key=lambda r: r[2]):
        latest[user] = (amount, ts)
    return latest


class Runner:
    """Runs one engine over the same repository, and reads its table and the values served."""

    def __init__(self, engine: str, spark: Any, config: RepoConfig, store: RedisOnlineStore) -> None:
        self.engine, self.spark, self.config, self.store = engine, spark, config, store

    def run(self, view: ViewPlan, **kw: Any) -> Any:
        if self.engine == "arrow":
            return arrow_materialize.materialize(self.config, view, start=None, end=None, online=self.store, **kw)
        return spark_materialize(
            self.spark, self.config, make_plan(view), view, start=None, end=None, online=self.store, **kw
        )

    def table(self, view: ViewPlan) -> set[tuple[Any, ...]]:
        rows = read_table(self.spark, table_path(self.config, view)).select("user_id", "value", "event_timestamp")
        return {(r[0], r[1], r[2]) for r in rows.collect()}

    def served(self, view: ViewPlan) -> dict[int, tuple[float, datetime]]:
        users = list(range(1, USERS + 1))
        (values,) = self.store.read([(view, ["value"])], {"user_id": users})
        return {
            u: (v[0], t.astimezone(UTC).replace(tzinfo=None))
            for u, v, t in zip(users, values.values, values.event_timestamps, strict=True)
            if v is not None and t is not None
        }


# "spark": new rows few enough are committed (delta-rs) and published from the driver; "spark-merge": MERGEd by
# Spark and published from its executors, as a larger change is.
@pytest.fixture(params=["arrow", "spark", "spark-merge"])
def runner(
    request: pytest.FixtureRequest,
    spark: Any,
    postgres_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    if request.param == "spark-merge":
        monkeypatch.setattr(spark_tables, "DRIVER_MAX_VALUES", 0)
    config = RepoConfig(root=tmp_path, connections={"shop": postgres_url})
    with RedisOnlineStore(redis_url, project=f"inc{uuid.uuid4().hex[:8]}", update_in_place=True) as store:
        yield Runner(request.param, spark, config, store)


def test_a_rerun_reads_the_unseen_rows_and_publishes_the_changed_entities(runner: Runner, postgres_url: str) -> None:
    table = f"inc_{uuid.uuid4().hex[:8]}"
    first = first_rows()
    write_pg(postgres_url, table, first, create=True)
    view = a_view(table)

    full = runner.run(view)
    assert (full.rows_read, full.rows_published, full.published_changed_only) == (len(first), USERS, False)
    assert full.read_reason.startswith("first run")

    w = watermark(first)
    second = second_rows(w)
    write_pg(postgres_url, table, second, create=False)
    again = runner.run(view)

    source = pd.DataFrame(first + second, columns=COLUMNS)
    expected_read = source[source.ts >= w - LOOKBACK]
    seen = pd.concat([pd.DataFrame(first, columns=COLUMNS), expected_read])
    expected = oracle_table(seen)
    latest = oracle_latest(expected)
    assert again.rows_read == len(expected_read)
    assert "watermark" in again.read_reason and "late_rows 2h" in again.read_reason
    assert runner.table(view) == expected
    assert runner.served(view) == latest
    commit = delta_rs.commit_info(table_path(runner.config, view), again.offline_version)
    assert commit is not None and commit["operation"] == ("MERGE" if runner.engine == "spark-merge" else "WRITE")
    before = oracle_latest(oracle_table(pd.DataFrame(first, columns=COLUMNS)))
    changed = {u for u in latest if latest[u] != before.get(u)}
    assert changed == {1, 2, 3, 4}
    assert (again.rows_published, again.online_committed, again.published_changed_only) == (len(changed), True, True)

    nothing = runner.run(view)
    assert nothing.rows_published == 0 and nothing.rows_written_offline == 0
    assert nothing.rows_read == len(source[source.ts >= max(source.ts) - LOOKBACK])  # the lookback, read again
    assert runner.served(view) == latest

    republished = runner.run(view, republish=True)
    assert (republished.rows_published, republished.published_changed_only) == (USERS, False)

    # A new definition is a new table (version 0): its first run stages a whole snapshot, never an update.
    redefined = a_view(table, expression="amount * 2")
    whole = runner.run(redefined)
    assert (whole.rows_read, whole.rows_published, whole.published_changed_only) == (len(source), USERS, False)
    # ... which goes live over the old definition's snapshot, whose watermark (its table's version) is higher.
    assert whole.online_committed
    doubled = {u: (value * 2, at) for u, (value, at) in oracle_latest(oracle_table(source)).items()}
    assert runner.served(redefined) == doubled


def third_rows(w: datetime) -> list[tuple[Any, ...]]:
    """After ``second_rows``: user 1 again, user 6 for the first time since the first run."""
    later = BASE + timedelta(days=3)
    return [(1, 2001.0, w + timedelta(minutes=30), later), (6, 2006.0, w + timedelta(minutes=31), later)]


def test_each_run_updated_in_place_by_default_stays_a_rollback_point(
    runner: Runner, postgres_url: str, redis_url: str
) -> None:
    """By default (``online.update_in_place``) a run writes only the changed entities into the live snapshot, and
    is still a rollback point: rolling back one run at a time serves exactly what each earlier run served."""
    table = f"inc_{uuid.uuid4().hex[:8]}"
    first = first_rows()
    write_pg(postgres_url, table, first, create=True)
    view = a_view(table)
    with RedisOnlineStore(redis_url, project=f"inc{uuid.uuid4().hex[:8]}", keep_snapshots=3) as store:
        assert store.update_in_place  # the default
        run = Runner(runner.engine, runner.spark, runner.config, store)
        seen = list(first)
        served: list[dict[int, tuple[float, datetime]]] = []
        for rows in ([], second_rows(watermark(first)), third_rows(watermark(first))):
            write_pg(postgres_url, table, rows, create=False)
            result = run.run(view)
            seen += [r for r in rows if r[2] >= watermark(first) - LOOKBACK]  # user 5's row is never read
            assert run.served(view) == oracle_latest(oracle_table(pd.DataFrame(seen, columns=COLUMNS)))
            assert result.published_changed_only == bool(rows)
            served.append(run.served(view))
        assert [s.version for s in store.kept_snapshots(view.online_name)] == ["1.2", "1.1", "1"]
        for back in (1, 0):
            store.rollback(view.online_name, to=None, held="test")
            assert run.served(view) == served[back]


def test_a_run_cut_short_while_updating_in_place_is_repaired_by_the_next(
    postgres_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception halfway through the in-place write: the run fails, the entities written serve their new row
    and the others their previous one; the next run (nothing new in the source) publishes every entity changed
    since the version served, and its rollback point goes back to the values before the failed run."""
    from online.redis_publication import RedisUpdate

    table = f"inc_{uuid.uuid4().hex[:8]}"
    first = first_rows()
    write_pg(postgres_url, table, first, create=True)
    view = a_view(table)
    config = RepoConfig(root=tmp_path, connections={"shop": postgres_url})
    with RedisOnlineStore(redis_url, project=f"inc{uuid.uuid4().hex[:8]}") as store:
        runner = Runner("arrow", None, config, store)
        runner.run(view)
        before = runner.served(view)
        second = second_rows(watermark(first))
        write_pg(postgres_url, table, second, create=False)
        expected = oracle_latest(oracle_table(pd.DataFrame(first + second[:5], columns=COLUMNS)))
        changed = sorted(u for u in expected if expected[u] != before[u])
        written = RedisUpdate.write

        def half_then_crash(update: RedisUpdate, batches: Any) -> int:
            table = pa.Table.from_batches(list(batches))
            written(update, table.filter(pc.is_in(table["user_id"], pa.array(changed[:2]))).to_batches())
            raise RuntimeError("killed halfway")

        monkeypatch.setattr(RedisUpdate, "write", half_then_crash)
        with pytest.raises(MaterializationError, match="killed halfway"):
            runner.run(view)
        half = {u: expected[u] if u in changed[:2] else before[u] for u in before}
        assert runner.served(view) == half
        monkeypatch.setattr(RedisUpdate, "write", written)

        repaired = runner.run(view)
        assert runner.served(view) == expected
        assert repaired.published_changed_only and repaired.rows_published == len(changed) - 2
        store.rollback(view.online_name, to=None, held="test")
        assert runner.served(view) == before


def test_a_change_column_reads_restated_rows_whatever_their_event_time(runner: Runner, postgres_url: str) -> None:
    table = f"inc_{uuid.uuid4().hex[:8]}"
    first = first_rows()
    write_pg(postgres_url, table, first, create=True)
    view = a_view(table, changed=True)
    runner.run(view)

    update_pg(postgres_url, table, 7, 777.0, BASE + timedelta(days=3))
    again = runner.run(view)

    restated = [(u, 777.0 if u == 7 else a, ts, BASE + timedelta(days=3) if u == 7 else up) for u, a, ts, up in first]
    source = pd.DataFrame(restated, columns=COLUMNS)
    latest = oracle_latest(oracle_table(source))
    # The rows changed at or after the latest change read by the first run: user 20's last row and user 7's 3.
    assert again.rows_read == int((source.updated >= watermark(first)).sum()) == 4
    assert "change column 'updated'" in again.read_reason
    assert runner.table(view) == oracle_table(source)
    assert runner.served(view) == latest
    assert (again.rows_published, again.published_changed_only) == (1, True)

    nothing = runner.run(view)
    assert nothing.rows_read == 3 and nothing.rows_published == 0  # only the rows changed last, read again
