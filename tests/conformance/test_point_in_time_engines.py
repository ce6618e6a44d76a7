"""Generated rows, every offline engine (the ``offline_engine`` fixture), one plain-Python oracle: equal values.

The oracle is the rule written as a loop: for each entity row, among the feature rows with the same keys and
``event_timestamp <= t``, the one with the latest event time (then the latest created time, a null created
time counting as the earliest), if ``t - event_timestamp <= ttl``; otherwise null. Times sit on a coarse grid
so that ties on event time, on created time and between entity and feature times are frequent.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from features.config import RepoConfig
from features.dtypes import DType
from offline import delta_rs
from offline.jobs import TrainingSet
from offline.manifest import Manifest, ViewRead

BASE = datetime(2024, 1, 1)
KEYS = (("k", DType.INT64), ("m", DType.STRING))

grid = st.integers(0, 8).map(lambda i: BASE + timedelta(minutes=5 * i))
feature_rows = st.lists(
    st.tuples(
        st.integers(1, 2),  # k
        st.sampled_from(["a", "b"]),  # m
        grid,  # event time
        st.none() | grid,  # created time
        st.none() | st.floats(allow_nan=False, allow_infinity=False, width=32),  # the value
    ),
    max_size=30,
    unique_by=lambda r: (r[0], r[1], r[2], r[3]),  # stored tables hold one row per keys, event and created
)
entity_rows = st.lists(
    st.tuples(st.none() | st.integers(0, 3), st.none() | st.sampled_from(["a", "b"]), st.none() | grid),
    min_size=1,
    max_size=25,
)
ttls = st.none() | st.sampled_from([0, 300, 900, 3600])


def oracle(rows: list[tuple[Any, ...]], entities: list[tuple[Any, ...]], ttl: int | None) -> list[Any]:
    out = []
    for k, m, t in entities:
        best = None
        for rk, rm, event, created, value in rows:
            if (rk, rm) != (k, m) or t is None or event > t:
                continue
            rank = (event, created is not None, created or BASE)
            if best is None or rank > best[0]:
                best = (rank, event, value)
        fresh = best is not None and (ttl is None or (t - best[1]).total_seconds() <= ttl)
        out.append(best[2] if fresh and best is not None else None)
    return out


def delta_table(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """The feature rows as a view's Delta table (created as offline/arrow/materialize.py creates it)."""
    utc = pa.timestamp("us", tz="UTC")
    table = pa.table(
        {
            "k": pa.array([r[0] for r in rows], pa.int64()),
            "m": pa.array([r[1] for r in rows], pa.string()),
            "x": pa.array([r[4] for r in rows], pa.float64()),
            "event_timestamp": pa.array([r[2] for r in rows], utc),
            "created_timestamp": pa.array([r[3] for r in rows], utc),
            "published_at": pa.array([BASE] * len(rows), utc),
        }
    )
    delta_rs.create(path, table, configuration={})


def training_set(path: Path, ttl: int | None, entities: pa.Table) -> TrainingSet:
    view = ViewRead("v", str(path), 0, ttl, "fingerprint", KEYS, ("x",))
    manifest = Manifest("", 1, "", ("v:x",), {}, "ts", "arrow", (view,))
    return TrainingSet(manifest, entities)


def test_engine_matches_the_oracle(offline_engine: Any, tmp_path: Path) -> None:
    """Through the engine protocol: the rows in a Delta table, the entity rows as users hand them (a narrower
    int, large strings, naive nanosecond times that mean UTC)."""
    engine = offline_engine(RepoConfig(root=tmp_path))

    @settings(
        max_examples=30,  # each example is one Spark job in the Spark engine
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(feature_rows, entity_rows, ttls)
    @example(  # one event time, three created times (one null): the latest created wins, the null one never
        rows=[(1, "a", BASE, None, 1.0), (1, "a", BASE, BASE + timedelta(hours=1), 2.0), (1, "a", BASE, BASE, 3.0)],
        entities=[(1, "a", BASE), (1, "a", BASE - timedelta(microseconds=1)), (1, "a", None), (None, "a", BASE)],
        ttl=0,
    )
    def run(rows: list[tuple[Any, ...]], entities: list[tuple[Any, ...]], ttl: int | None) -> None:
        expected = oracle(rows, entities, ttl)
        path = tmp_path / uuid.uuid4().hex
        delta_table(path, rows)
        arrow_entities = pa.table(
            {
                "k": pa.array([e[0] for e in entities], pa.int32()),
                "m": pa.array([e[1] for e in entities], pa.large_string()),
                "ts": pa.array([e[2] for e in entities], pa.timestamp("ns")),
            }
        )
        job = training_set(path, ttl, arrow_entities)
        assert engine.refusal(job) is None
        joined = engine.training_set(job).table
        assert joined.select(["k", "m", "ts"]).equals(arrow_entities)  # the entity rows as given, in order
        assert joined.column("v__x").to_pylist() == expected

    run()
