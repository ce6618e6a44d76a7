"""Generated rows, both point-in-time engines (Spark and Arrow), one plain-Python oracle: equal values.

The oracle is the rule written as a loop: for each entity row, among the feature rows with the same keys and
``event_timestamp <= t``, the one with the latest event time (then the latest created time, a null created
time counting as the earliest), if ``t - event_timestamp <= ttl``; otherwise null. Times sit on a coarse grid
so that ties on event time, on created time and between entity and feature times are frequent.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from features.dtypes import DType
from offline.arrow import join as arrow_join
from offline.spark.point_in_time import ROW_ID, point_in_time_join
from offline.tables import ViewTable

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


@pytest.mark.spark
def test_both_engines_match_the_oracle(spark: Any) -> None:
    feature_schema = "k LONG, m STRING, event_timestamp TIMESTAMP, created_timestamp TIMESTAMP, x DOUBLE"
    entity_schema = f"k LONG, m STRING, ts TIMESTAMP, {ROW_ID} LONG"

    @settings(
        max_examples=30,  # each example is one Spark job
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(feature_rows, entity_rows, ttls)
    @example(  # one event time, three created times (one null): the latest created wins, the null one never
        rows=[(1, "a", BASE, None, 1.0), (1, "a", BASE, BASE + timedelta(hours=1), 2.0), (1, "a", BASE, BASE, 3.0)],
        entities=[(1, "a", BASE), (1, "a", BASE - timedelta(microseconds=1)), (1, "a", None), (None, "a", BASE)],
        ttl=0,
    )
    def run(rows: list[tuple[Any, ...]], entities: list[tuple[Any, ...]], ttl: int | None) -> None:
        expected = oracle(rows, entities, ttl)

        table = spark.createDataFrame([(k, m, e, c, x) for k, m, e, c, x in rows], feature_schema)
        frame = spark.createDataFrame([(*e, i) for i, e in enumerate(entities)], entity_schema)
        joined = point_in_time_join(frame, "ts", [ViewTable("v", KEYS, ("x",), ttl, table)])
        by_row = {r[ROW_ID]: r["v__x"] for r in joined.select(ROW_ID, "v__x").collect()}
        in_spark = [by_row[i] for i in range(len(entities))]

        utc = pa.timestamp("us", tz="UTC")
        arrow_table = pa.table(
            {
                "k": pa.array([r[0] for r in rows], pa.int64()),
                "m": pa.array([r[1] for r in rows], pa.string()),
                "event_timestamp": pa.array([r[2] for r in rows], utc),
                "created_timestamp": pa.array([r[3] for r in rows], utc),
                "x": pa.array([r[4] for r in rows], pa.float64()),
            }
        )
        arrow_entities = pa.table(
            {
                "k": pa.array([e[0] for e in entities], pa.int32()),  # a narrower int, as users hand them
                "m": pa.array([e[1] for e in entities], pa.large_string()),
                "ts": pa.array([e[2] for e in entities], pa.timestamp("ns")),  # naive: UTC
            }
        )
        view = ViewTable("v", KEYS, ("x",), ttl, arrow_table)
        in_arrow = arrow_join.point_in_time_join(arrow_entities, "ts", [view]).column("v__x").to_pylist()

        assert in_spark == expected, "Spark differs from the oracle"
        assert in_arrow == expected, "Arrow differs from the oracle"

    run()
