"""The point-in-time join against a pandas ``merge_asof`` oracle, per view, with the TTL and tie rules, in every
engine of the ``offline_engine`` fixture (Spark and Arrow), fed the same Delta tables through the engine protocol.

Views "u" and "w" share their join keys (one stacked window for both), "um" has its own.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.config import RepoConfig
from features.dtypes import DType, arrow_type
from offline import delta_rs
from offline.jobs import TrainingSet
from offline.manifest import Manifest, ViewRead
from offline.spark.point_in_time import ROW_ID

BASE = datetime(2024, 1, 1)
TTL = 3600
BOUNDARY_USER = 9
BOUNDARY_EVENT = BASE + timedelta(hours=2)


def _feature_rows(rng: random.Random) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two feature tables with ties on event time broken by created time, nulls in features and created."""
    user_rows, pair_rows = [], []
    for _ in range(160):
        event = BASE + timedelta(minutes=10 * rng.randint(0, 30))
        created = rng.choice([None, event + timedelta(seconds=rng.randint(0, 5000))])
        user_rows.append(
            {
                "user_id": rng.randint(1, 6),
                "f_num": rng.choice([None, round(rng.uniform(0, 99), 2)]),
                "f_str": rng.choice([None, "a", "b", "c"]),
                "event_timestamp": event,
                "created_timestamp": created,
            }
        )
        pair_rows.append(
            {
                "user_id": rng.randint(1, 4),
                "merchant": rng.choice(["m1", "m2"]),
                "amt": rng.choice([None, rng.randint(-100, 100)]),
                "event_timestamp": event,
                "created_timestamp": created,
            }
        )
    user_rows.append(
        {
            "user_id": BOUNDARY_USER,
            "f_num": 1.5,
            "f_str": "edge",
            "event_timestamp": BOUNDARY_EVENT,
            "created_timestamp": None,
        }
    )
    users = pd.DataFrame(user_rows).drop_duplicates(["user_id", "event_timestamp", "created_timestamp"])
    pairs = pd.DataFrame(pair_rows).drop_duplicates(["user_id", "merchant", "event_timestamp", "created_timestamp"])
    for frame in (users, pairs):
        for column in ("event_timestamp", "created_timestamp"):
            frame[column] = pd.to_datetime(frame[column]).astype("datetime64[us]")
    pairs["amt"] = pairs["amt"].astype("Int64")
    return users.reset_index(drop=True), pairs.reset_index(drop=True)


def _entities(rng: random.Random) -> pd.DataFrame:
    rows = []
    for _ in range(150):
        minutes = rng.choice([10 * rng.randint(-2, 34), rng.randint(-20, 340)])  # on the grid (ties) or off it
        ts = BASE + timedelta(minutes=minutes)
        rows.append(
            {
                "user_id": rng.choice([None, 1, 2, 3, 4, 5, 6, 7]),
                "merchant": rng.choice([None, "m1", "m2"]),
                "label": rng.randint(0, 1),
                "ts": ts,
            }
        )
    rows += rows[:10]  # duplicate entity rows
    ttl = timedelta(seconds=TTL)
    for ts in (
        BOUNDARY_EVENT - timedelta(microseconds=1),
        BOUNDARY_EVENT,
        BOUNDARY_EVENT + ttl,
        BOUNDARY_EVENT + ttl + timedelta(microseconds=1),
    ):
        rows.append({"user_id": BOUNDARY_USER, "merchant": "m1", "label": 1, "ts": ts})
    rows.append({"user_id": 1, "merchant": "m1", "label": 0, "ts": None})  # no timestamp
    frame = pd.DataFrame(rows)
    frame["user_id"] = frame["user_id"].astype("Int64")
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    return frame


def oracle(
    entities: pd.DataFrame, table: pd.DataFrame, keys: list[str], features: list[str], ttl: int | None, prefix: str
) -> pd.DataFrame:
    """pandas merge_asof per view: backward on time, by the keys, TTL as an inclusive tolerance.

    Ties on event time are resolved by sorting the table so the winner (the later created time, null first)
    is the last of its group, which is the row merge_asof picks.
    """
    left = entities.assign(_row=np.arange(len(entities)))
    usable = left.dropna(subset=[*keys, "ts"]).copy()
    for key in keys:
        usable[key] = usable[key].astype(table[key].dtype)
    right = table.assign(_created=table["created_timestamp"].fillna(pd.Timestamp.min))
    right = right.sort_values(["event_timestamp", "_created"], kind="stable")
    merged = pd.merge_asof(
        usable.sort_values("ts", kind="stable"),
        right[[*keys, *features, "event_timestamp"]],
        left_on="ts",
        right_on="event_timestamp",
        by=keys,
        direction="backward",
        tolerance=pd.Timedelta(seconds=ttl) if ttl is not None else None,
    )
    out = left[["_row"]].merge(merged[["_row", *features]], on="_row", how="left").sort_values("_row")
    return out[features].rename(columns={f: f"{prefix}__{f}" for f in features}).reset_index(drop=True)


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if hasattr(value, "item") else value


USER_KEY = (("user_id", DType.INT64),)
PAIR_KEYS = (("user_id", DType.INT64), ("merchant", DType.STRING))


def _as_stored(frame: pd.DataFrame, keys: tuple[tuple[str, DType], ...], features: dict[str, DType]) -> pa.Table:
    """A feature frame as a view's Delta table holds it: plan types, UTC times, published_at."""
    utc = pa.timestamp("us", tz="UTC")
    columns = {name: pa.array(frame[name].astype(object).where(frame[name].notna(), None), arrow_type(dtype))
               for name, dtype in (*keys, *features.items())}  # fmt: skip
    for name in ("event_timestamp", "created_timestamp"):
        columns[name] = pa.array(frame[name], pa.timestamp("us")).cast(utc)
    columns["published_at"] = pa.array([BASE] * len(frame), pa.timestamp("us")).cast(utc)
    return pa.table(columns)


@pytest.fixture(scope="module")
def result_of(
    offline_engine: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows joined by one engine of the ``offline_engine`` fixture, through its protocol: the feature frames
    as Delta tables, the entity rows as users hand them (nullable int keys, naive times that mean UTC)."""
    rng = random.Random(11)
    users, pairs = _feature_rows(rng)
    others, _ = _feature_rows(random.Random(12))
    entities = _entities(rng)
    root = tmp_path_factory.mktemp("point_in_time")
    user_features = {"f_num": DType.FLOAT64, "f_str": DType.STRING}
    reads = []
    for name, frame, keys, features, ttl in (
        ("u", users, USER_KEY, user_features, TTL),
        ("um", pairs, PAIR_KEYS, {"amt": DType.INT64}, None),
        ("w", others, USER_KEY, {"f_num": DType.FLOAT64}, 2 * TTL),
    ):
        stored = _as_stored(frame, keys, {f: user_features.get(f, dtype) for f, dtype in features.items()})
        delta_rs.create(root / name, stored, configuration={})
        reads.append(ViewRead(name, str(root / name), 0, ttl, "fingerprint", keys, tuple(features)))
    manifest = Manifest("", 1, "", (), {}, "ts", "arrow", tuple(reads))
    engine = offline_engine(RepoConfig(root=root))
    job = TrainingSet(manifest, pa.Table.from_pandas(entities, preserve_index=False))
    assert engine.refusal(job) is None
    result = engine.training_set(job).table.to_pandas()
    result.insert(len(entities.columns), ROW_ID, np.arange(len(result)))  # the entity rows' order, as returned
    return entities, users, pairs, others, result


def test_every_entity_row_once_with_its_columns(result_of: Any) -> None:
    entities, _, _, _, result = result_of
    assert list(result[ROW_ID]) == list(range(len(entities)))
    columns = ["user_id", "merchant", "label", "ts", ROW_ID, "u__f_num", "u__f_str", "um__amt", "w__f_num"]
    assert list(result.columns) == columns
    assert [_plain(v) for v in result["label"]] == [_plain(v) for v in entities["label"]]


def test_matches_merge_asof_oracle(result_of: Any) -> None:
    entities, users, pairs, others, result = result_of
    expected = pd.concat(
        [
            oracle(entities, users, ["user_id"], ["f_num", "f_str"], TTL, "u"),
            oracle(entities, pairs, ["user_id", "merchant"], ["amt"], None, "um"),
            oracle(entities, others, ["user_id"], ["f_num"], 2 * TTL, "w"),
        ],
        axis=1,
    )
    assert int(expected.notna().sum().sum()) > 100  # the data exercises matches, not just nulls
    for column in expected.columns:
        got = [_plain(v) for v in result[column]]
        want = [_plain(v) for v in expected[column]]
        diffs = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
        assert not diffs, f"{column}: first differences (row, join, oracle): {diffs[:5]}"


def test_ttl_boundary_is_inclusive_and_rows_before_any_feature_are_null(result_of: Any) -> None:
    *_, result = result_of
    edge = result[result["user_id"] == BOUNDARY_USER]
    by_time = {pd.Timestamp(t).to_pydatetime(): _plain(v) for t, v in zip(edge["ts"], edge["u__f_str"], strict=True)}
    ttl = timedelta(seconds=TTL)
    assert by_time[BOUNDARY_EVENT - timedelta(microseconds=1)] is None
    assert by_time[BOUNDARY_EVENT] == "edge"
    assert by_time[BOUNDARY_EVENT + ttl] == "edge"
    assert by_time[BOUNDARY_EVENT + ttl + timedelta(microseconds=1)] is None
    no_time = result[result["ts"].isna()]
    assert len(no_time) == 1 and no_time["u__f_num"].isna().all()
    null_keys = result[result["user_id"].isna()]
    assert len(null_keys) > 0 and null_keys[["u__f_num", "u__f_str", "um__amt"]].isna().all().all()
