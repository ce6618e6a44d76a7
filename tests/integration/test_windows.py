"""Windowed aggregations on real components: SQL source -> Spark tiles -> Delta -> Redis, against plain Python.

The definition is written once (the ``definitions`` text below); the oracle in ``window_oracle.py`` reads it
as plain Python loops. The key test replays materialization day by day, reads Redis after every day, and
requires the training set to hold exactly what Redis held at each of those times.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from features.store import FeatureStore
from offline.spark.tables import read_table
from offline.tables import table_path
from tests.integration.window_oracle import Row, Spec, same, value_at

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.slow]

START = datetime(2024, 3, 1)
# Four days of rows, replayed as five daily runs: day 1 a full run, days 2-4 incremental with rows, day 5 past the
# data. Card 1 goes quiet after day 2, so its 1d windows empty by day 3 and its 2d windows by day 4; every run
# is another Spark job (~20 s on CI), so more days would repeat these cases, not add any.
DAYS = 4
CADENCE = timedelta(hours=6)
CARDS = 12

DEFINITIONS = """
from datetime import timedelta

from features import Aggregation, Entity, FeatureView, Int64, SqlSource

card = Entity(join_keys={"card_id": Int64})
txns = SqlSource(connection="shop", table="txns", timestamp="ts", created="created")

card_txn = FeatureView(
    entities=[card],
    source=txns,
    cadence="6h",
    ttl=None,
    aggregations=[
        Aggregation("count", windows=["1h", "6h", "1d", "unbounded"]),
        Aggregation("count", windows=["1d"], filter="amount > 50", name="big_count"),
        Aggregation("sum", "amount", windows=["6h", "2d", "unbounded"]),
        Aggregation("sum", "qty", windows=["1d"]),
        Aggregation("mean", "amount", windows=["1d"]),
        Aggregation("stddev", "amount", windows=["2d"]),
        Aggregation("min", "amount", windows=["1d"]),
        Aggregation("max", "qty", windows=["2d"]),
        Aggregation("last", "category", windows=["1d", "unbounded"]),
        Aggregation("first", "amount", windows=["1d"]),
        Aggregation("count_distinct", "category", windows=["2d"]),
    ],
)
"""

H, D = timedelta(hours=1), timedelta(days=1)
SPECS = [
    *(Spec(f"count_{n}", "count", w, lambda r: 1) for n, w in (("1h", H), ("6h", 6 * H), ("1d", D), ("all", None))),
    Spec("big_count_1d", "count", D, lambda r: 1, lambda r: r["amount"] is not None and r["amount"] > 50),
    *(
        Spec(f"amount_sum_{n}", "sum", w, lambda r: r["amount"])
        for n, w in (("6h", 6 * H), ("2d", 2 * D), ("all", None))
    ),
    Spec("qty_sum_1d", "sum", D, lambda r: r["qty"]),
    Spec("amount_mean_1d", "mean", D, lambda r: r["amount"]),
    Spec("amount_stddev_2d", "stddev", 2 * D, lambda r: r["amount"]),
    Spec("amount_min_1d", "min", D, lambda r: r["amount"]),
    Spec("qty_max_2d", "max", 2 * D, lambda r: r["qty"]),
    Spec("category_last_1d", "last", D, lambda r: r["category"]),
    Spec("category_last_all", "last", None, lambda r: r["category"]),
    Spec("amount_first_1d", "first", D, lambda r: r["amount"]),
    Spec("category_count_distinct_2d", "count_distinct", 2 * D, lambda r: r["category"]),
]
FEATURES = [s.name for s in SPECS]


def generate_rows(seed: int = 11) -> list[Row]:
    """Transactions over DAYS days: nulls, rows exactly on ticks, ties on event time, a quiet card, late days."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(700):
        card = rng.randint(1, CARDS - 1)  # card CARDS never pays: it must read as missing
        if i % 9 == 0:
            ts = START + CADENCE * rng.randint(1, DAYS * 4 - 1)  # exactly on a tick: inside the window ending there
        else:
            ts = START + timedelta(seconds=rng.randrange(0, DAYS * 86_400))
        if card == 1 and ts > START + 2 * D:
            continue  # card 1 goes quiet: its windows must empty, tick by tick
        rows.append(
            {
                "card_id": card,
                "ts": ts,
                "created": None if i % 5 == 0 else ts + timedelta(minutes=rng.randint(0, 50)),
                "amount": None if i % 11 == 0 else round(rng.uniform(-5, 120), 2),
                "qty": None if i % 13 == 0 else rng.randint(0, 9),
                "category": None if i % 7 == 0 else rng.choice(["food", "fuel", "travel", "games"]),
            }
        )
    tie = rows[3] | {"created": rows[3]["ts"] + timedelta(minutes=55), "category": "tie", "amount": 7.5}
    rows.append(tie)  # same card and event time as rows[3], created later: last() takes it
    return rows


def write_source(url: str, rows: list[Row]) -> None:
    engine = sa.create_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    real = "REAL" if sqlite else "DOUBLE PRECISION"

    def cell(value: Any) -> Any:
        return value.strftime("%Y-%m-%d %H:%M:%S") if sqlite and isinstance(value, datetime) else value

    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS txns")
        conn.exec_driver_sql(
            f"CREATE TABLE txns (card_id BIGINT, ts TIMESTAMP, created TIMESTAMP, amount {real}, qty BIGINT, "
            "category TEXT)"
        )
        marks = ", ".join(["?" if sqlite else "%s"] * 6)
        values = [tuple(cell(r[c]) for c in ("card_id", "ts", "created", "amount", "qty", "category")) for r in rows]
        conn.exec_driver_sql(f"INSERT INTO txns VALUES ({marks})", values)
    engine.dispose()


def make_repo(path: Path, source_url: str, redis_url: str) -> FeatureStore:
    (path / "definitions").mkdir(parents=True)
    (path / "definitions" / "cards.py").write_text(DEFINITIONS)
    (path / "skewless.yaml").write_text(
        f"project: windows_{uuid.uuid4().hex[:8]}\n"
        f"registry: sqlite:///{path / 'registry.db'}\n"
        "offline:\n  path: offline\n"
        f"online:\n  url: {redis_url}\n"
        f"connections:\n  shop: {source_url}\n"
    )
    store = FeatureStore(path)
    store.apply()
    return store


def oracle(rows: list[Row], card: int, tick: datetime) -> dict[str, Any]:
    mine = [r for r in rows if r["card_id"] == card]
    return {s.name: value_at(s, mine, tick, "ts", "created") for s in SPECS}


@pytest.fixture(scope="module")
def replayed(
    tmp_path_factory: pytest.TempPathFactory, spark: Any, redis_url: str
) -> Iterator[tuple[FeatureStore, list[Row], dict[datetime, pd.DataFrame], list[Any]]]:
    """Materialize one day at a time (incrementally) and read Redis after each day."""
    tmp = tmp_path_factory.mktemp("windows")
    rows = generate_rows()
    source_url = f"sqlite:///{tmp / 'shop.db'}"
    write_source(source_url, rows)
    store = make_repo(tmp / "repo", source_url, redis_url)
    seen: dict[datetime, pd.DataFrame] = {}
    results = []
    cards = list(range(1, CARDS + 1))
    for day in range(1, DAYS + 2):
        end = START + day * D
        [result] = store.materialize(end=end)
        results.append(result)
        online = store.get_online_features({"card_id": cards}, features=["card_txn:*"])
        seen[end] = online.to_pandas(statuses=True)
    yield store, rows, seen, results
    store.close()


def test_online_values_after_each_day_match_the_oracle(replayed: Any) -> None:
    _, rows, seen, _ = replayed
    for end, frame in seen.items():
        for record in frame.to_dict("records"):
            card = record["card_id"]
            if not any(r["card_id"] == card and r["ts"] <= end for r in rows):
                assert record["card_txn__count_all__status"] == "missing", (end, card)
                continue
            expected = oracle(rows, card, end)
            for name in FEATURES:
                got = record[f"card_txn__{name}"]
                got = None if pd.isna(got) else got
                assert same(expected[name], got), (end, card, name, expected[name], got)


def test_each_run_describes_the_values_it_published(replayed: Any) -> None:
    """A windowed run's statistics: the latest values per card it published, held to the oracle's values at the
    tick (nulls, min and max of each number, the top values of each string), and its written tick values. The
    first run publishes every card; each later one only the cards whose value changed at one of its ticks."""
    store, rows, _, results = replayed

    def changed_at(card: int, tick: datetime) -> bool:
        before, after = oracle(rows, card, tick - CADENCE), oracle(rows, card, tick)
        return any(not same(before[name], after[name]) for name in FEATURES)

    for day, result in enumerate(results, start=1):
        end = START + day * D
        stats = result.stats
        cards = sorted({r["card_id"] for r in rows if r["ts"] <= end})
        if day > 1:
            ticks = [end - D + n * CADENCE for n in range(1, int(D / CADENCE) + 1)]
            cards = [card for card in cards if any(changed_at(card, tick) for tick in ticks)]
        expected = {card: oracle(rows, card, end) for card in cards}
        assert {s.count for s in stats.published.values()} == {len(cards)} == {result.rows_published}
        assert {s.count for s in stats.written.values()} == {result.rows_written_offline}
        for name in FEATURES:
            got = stats.published[name]
            values = [expected[card][name] for card in cards]
            present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            assert got.nulls == values.count(None), (day, name)
            if got.distinct is not None:
                counted = sorted(Counter(present).items(), key=lambda p: (-p[1], p[0]))
                assert list(got.top) == counted[:10], (day, name)
            elif present:
                assert same(min(present), got.min) and same(max(present), got.max), (day, name, got)
    assert [r.stats for r in store.registry.runs("card_txn")] == [r.stats for r in results]


@pytest.fixture(params=["arrow", "spark"])
def trainer(request: pytest.FixtureRequest, replayed: Any) -> Iterator[FeatureStore]:
    """The replayed repository, its training sets joined in Arrow (the default here) or in Spark."""
    store = replayed[0]
    if request.param == "arrow":
        yield store
        return
    spark_only = FeatureStore(config=dataclasses.replace(store.config, arrow_join_max_mb=0))
    yield spark_only
    spark_only.close()


def test_training_set_equals_what_redis_served(replayed: Any, trainer: FeatureStore) -> None:
    """The serving-equivalent contract: at each replayed time, the training row is exactly Redis's value."""
    _, _, seen, _ = replayed
    store = trainer
    entities = pd.concat(
        [pd.DataFrame({"card_id": frame["card_id"], "ts": end}) for end, frame in seen.items()], ignore_index=True
    )
    training = store.get_training_dataset(entities, features=["card_txn:*"], timestamp_column="ts")
    online = pd.concat(list(seen.values()), ignore_index=True)
    for name in FEATURES:
        column = f"card_txn__{name}"
        left = training[column].astype(object).where(training[column].notna(), None).tolist()
        right = online[column].astype(object).where(online[column].notna(), None).tolist()
        assert left == right, name  # bit for bit: serving publishes the stored rows


def test_training_set_between_ticks_matches_the_oracle(replayed: Any, trainer: FeatureStore) -> None:
    _, rows, _, _ = replayed
    store = trainer
    rng = random.Random(5)
    times = [START + timedelta(seconds=rng.randrange(0, (DAYS + 1) * 86_400)) for _ in range(120)]
    times += [START + CADENCE * k for k in range(1, 6)]  # exactly on ticks
    cards = [rng.randint(1, CARDS) for _ in times]
    entities = pd.DataFrame({"card_id": cards, "ts": times})
    training = store.get_training_dataset(entities, features=["card_txn:*"], timestamp_column="ts")
    for record in training.to_dict("records"):
        tick = START + CADENCE * ((record["ts"].to_pydatetime() - START) // CADENCE)
        card_rows = [r for r in rows if r["card_id"] == record["card_id"] and r["ts"] <= tick]
        expected = oracle(rows, record["card_id"], tick) if card_rows else dict.fromkeys(FEATURES)
        for name in FEATURES:
            got = record[f"card_txn__{name}"]
            got = None if pd.isna(got) else got
            assert same(expected[name], got), (record, name, expected[name], got)


def test_incremental_runs_read_only_their_day(replayed: Any) -> None:
    _, rows, _, results = replayed
    assert results[0].rows_read == sum(1 for r in rows if r["ts"] <= START + D)
    for day, result in enumerate(results[1:], start=2):
        lo, hi = START + (day - 1) * D, START + day * D
        assert result.rows_read == sum(1 for r in rows if lo < r["ts"] <= hi), day


def test_one_backfill_equals_the_day_by_day_replay(
    replayed: Any, tmp_path: Path, spark: Any, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, rows, _, _ = replayed
    source_url = f"sqlite:///{tmp_path / 'shop.db'}"
    write_source(source_url, rows)
    backfill = make_repo(tmp_path / "repo", source_url, redis_url)
    with caplog.at_level(logging.INFO, logger="offline.spark.materialize"):
        [result] = backfill.materialize(end=START + (DAYS + 1) * D)
    assert result.rows_read == len(rows)
    assert f"read {len(rows)} source row(s)" in caplog.text

    def table(s: FeatureStore) -> pd.DataFrame:
        view = s.plan_version().plan.view("card_txn")
        frame = read_table(spark, table_path(s.config, view)).drop("published_at").toPandas()
        return frame.sort_values(["card_id", "event_timestamp"]).reset_index(drop=True)

    incremental, full = table(store), table(backfill)
    assert len(incremental) == len(full)
    for column in incremental.columns:
        for a, b in zip(incremental[column], full[column], strict=True):
            a, b = (None if pd.isna(a) else a), (None if pd.isna(b) else b)
            assert same(a, b), (column, a, b)
    backfill.close()


def test_rerunning_a_past_range_takes_late_rows_in(tmp_path: Path, spark: Any, redis_url: str) -> None:
    rows = generate_rows(seed=3)
    source_url = f"sqlite:///{tmp_path / 'shop.db'}"
    write_source(source_url, rows)
    store = make_repo(tmp_path / "repo", source_url, redis_url)
    end = START + 3 * D
    store.materialize(end=end)
    late = {"card_id": 2, "ts": START + D + H, "created": None, "amount": 99.0, "qty": 4, "category": "late"}
    rows.append(late)
    write_source(source_url, rows)
    store.materialize(end=end)  # incremental: nothing new to read, the late row is not seen
    before = store.get_online_features({"card_id": [2]}, features=["card_txn:count_all"]).to_pandas()
    assert before["card_txn__count_all"][0] == oracle(rows[:-1], 2, end)["count_all"]
    [result] = store.materialize(start=START + D, end=end)  # recompute from day 1: the late row counts
    assert result.rows_read == sum(1 for r in rows if START + D < r["ts"] <= end)
    after = store.get_online_features({"card_id": [2]}, features=["card_txn:*"]).to_pandas()
    expected = oracle(rows, 2, end)
    for name in FEATURES:
        got = after[f"card_txn__{name}"][0]
        assert same(expected[name], None if pd.isna(got) else got), name
    store.close()


# -- a new tick publishes only the entities whose value changed at it ------------------------------------------------
SMALL = (
    DEFINITIONS.split("card_txn = FeatureView(")[0]
    + """
card_daily = FeatureView(
    entities=[card],
    source=txns,
    cadence="6h",
    ttl=None,
    aggregations=[Aggregation("count", windows=["1d"]), Aggregation("sum", "amount", windows=["1d"])],
)
"""
)


def recorded_through(store: FeatureStore, name: str) -> datetime:
    """The last tick the view's table records as computed (naive UTC, as this module's times): ``skewless.through``
    in the ``userMetadata`` of its newest commit, read from the Delta log's JSON."""
    [view] = [v for v in store.plan_version().plan.views if v.name == name]
    log = table_path(store.config, view) / "_delta_log"
    newest = max(log.glob("*.json"), key=lambda f: int(f.stem))
    [info] = [json.loads(line)["commitInfo"] for line in newest.read_text().splitlines() if "commitInfo" in line]
    through = datetime.fromisoformat(json.loads(info["userMetadata"])["skewless.through"])
    return through.astimezone(UTC).replace(tzinfo=None)


def test_a_tick_publishes_only_the_entities_whose_value_changed(tmp_path: Path, spark: Any, redis_url: str) -> None:
    """After a full run, a tick where card 1 got a new row and card 4's only row left the 1d window (its window
    emptied: a changed value) writes exactly those two keys (counted from Redis's keyspace events), and a tick
    where nothing changed writes none but is recorded as computed. After every run each card serves the
    oracle's value, with the last tick computed as its event time (TTLs count from it)."""
    import redis

    def row(card: int, ts: datetime, amount: float) -> Row:
        return {"card_id": card, "ts": ts, "created": ts, "amount": amount, "qty": 1, "category": "food"}

    rows = [row(4, START + 2 * H, 10.0)]  # leaves the 1d window at START + 1d + 6h
    rows += [row(c, START + 13 * H + c * timedelta(minutes=7), 1.5 * c) for c in (1, 2, 3) for _ in range(2)]
    source_url = f"sqlite:///{tmp_path / 'shop.db'}"
    write_source(source_url, rows)
    repo = tmp_path / "repo"
    (repo / "definitions").mkdir(parents=True)
    (repo / "definitions" / "cards.py").write_text(SMALL)
    project = f"ticks_{uuid.uuid4().hex[:8]}"
    (repo / "skewless.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///{repo / 'registry.db'}\noffline:\n  path: offline\n"
        f"online:\n  url: {redis_url}\nconnections:\n  shop: {source_url}\n"
    )
    store = FeatureStore(repo)
    store.apply()
    cards = [1, 2, 3, 4, 5]  # card 5 never pays: missing

    def value(card: int, tick: datetime) -> tuple[Any, Any]:
        if not any(r["card_id"] == card and r["ts"] <= tick for r in rows):
            return (None, None)
        window = [r["amount"] for r in rows if r["card_id"] == card and tick - D < r["ts"] <= tick]
        return (len(window), sum(window) if window else None)

    def oracle_served(end: datetime, at: datetime) -> dict[int, tuple[Any, Any, Any]]:
        """Per card: (count_1d, amount_sum_1d) at ``end`` in plain Python, and the event time served: ``at``, the
        last tick computed (TTLs count from it), for every card with a value."""
        return {c: (*value(c, end), None if value(c, end)[0] is None else pd.Timestamp(at, tz="UTC")) for c in cards}

    def looked_up() -> dict[int, tuple[Any, Any, Any]]:
        frame = store.get_online_features({"card_id": cards}, features=["card_daily:*"]).to_pandas(statuses=True)
        return {
            int(r["card_id"]): (
                None if pd.isna(r["card_daily__count_1d"]) else int(r["card_daily__count_1d"]),
                None if pd.isna(r["card_daily__amount_sum_1d"]) else float(r["card_daily__amount_sum_1d"]),
                None
                if pd.isna(r["card_daily__count_1d__event_timestamp"])
                else r["card_daily__count_1d__event_timestamp"],
            )
            for r in frame.to_dict("records")
        }

    client = redis.Redis.from_url(redis_url)
    notify = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    client.config_set("notify-keyspace-events", "K$g")  # keyspace events of string commands (SET) and DEL
    events = client.pubsub()
    events.psubscribe(f"__keyspace@*__:{project}:card_daily:v*")
    events.get_message(timeout=1.0)  # the subscription's confirmation

    def keys_written() -> set[str]:
        written = set()
        while (message := events.get_message(timeout=0.5)) is not None:
            if message["type"] == "pmessage" and message["data"] in (b"set", b"del"):
                written.add(message["channel"].decode().rpartition(":")[2])
        return written

    try:
        first = START + D
        [full] = store.materialize(end=first)
        assert keys_written() == {"1", "2", "3", "4"} and full.rows_published == 4
        assert recorded_through(store, "card_daily") == first
        assert looked_up() == oracle_served(first, first)

        rows.append(row(1, first + 3 * H, 100.0))
        write_source(source_url, rows)
        tick = first + 6 * H
        [changed] = store.materialize(end=tick)
        assert keys_written() == {"1", "4"}  # card 1's new row, card 4's emptied window; cards 2, 3 unchanged
        assert (changed.rows_published, changed.published_changed_only) == (2, True)
        assert recorded_through(store, "card_daily") == tick
        assert looked_up() == oracle_served(tick, tick)

        quiet = tick + 6 * H  # no row enters or leaves a window
        assert all(value(c, t) == value(c, tick) for c in cards for t in (quiet - 5 * H, quiet))
        [nothing] = store.materialize(end=quiet)
        assert keys_written() == set() and nothing.rows_published == 0
        # The tick is computed all the same: recorded in the table (a commit of its metadata alone) and served as
        # the event time of every unchanged value, so TTLs count from it.
        assert nothing.ticks_through == quiet.replace(tzinfo=UTC) and recorded_through(store, "card_daily") == quiet
        assert looked_up() == oracle_served(quiet, quiet)
    finally:
        events.close()
        client.config_set("notify-keyspace-events", notify)
        client.close()
        store.close()
