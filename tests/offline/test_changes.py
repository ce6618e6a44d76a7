"""The change to a table worked out in Arrow (offline/changes.py), on a real Delta table written by delta-rs: the
stored rows a run compares with are exactly those of its entities, against a plain-Python oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from features.dtypes import DType
from offline import changes, delta_rs
from offline.tables import STATS_PROPERTY, row_columns, stats_columns, table_rows
from tests.offline.support import make_view

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def test_the_stored_rows_of_a_run_are_exactly_those_of_its_entities_with_or_without_a_start(tmp_path: Path) -> None:
    """Two join keys (a string and an integer): the key filter of a run without ``start`` takes each column's
    values apart, a superset (("a", 2) passes when ("a", 1) and ("b", 2) are wanted), which the semi-join makes
    exact; with ``start``, only the rows at or after it."""
    view = make_view(
        "two_keys",
        connection="c",
        table="t",
        keys={"shop": DType.STRING, "item": DType.INT64},
        columns={"price": DType.FLOAT64},
        features={"price": "price"},
    )
    stored = [
        (shop, item, float(i), T0 + timedelta(hours=i))
        for i, (shop, item) in enumerate([("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 3), ("a", 1), ("b", 2)])
    ]
    table = pa.table(
        {
            "shop": [r[0] for r in stored],
            "item": [r[1] for r in stored],
            "price": [r[2] for r in stored],
            "event_timestamp": [r[3] for r in stored],
            "created_timestamp": pa.array([None] * len(stored), pa.timestamp("us", tz="UTC")),
        }
    )
    path = tmp_path / "table"
    delta_rs.create(path, table_rows(view, table, T0), configuration={STATS_PROPERTY: stats_columns(view)})
    snapshot = delta_rs.snapshot(path, 0)
    wanted = {("a", 1), ("b", 2)}
    run = table.filter(pa.array([(r[0], r[1]) in wanted for r in stored])).slice(0, 2)
    assert {
        (s, i) for s, i in zip(run.column("shop").to_pylist(), run.column("item").to_pylist(), strict=True)
    } == wanted

    for start in (None, T0 + timedelta(hours=3)):
        got = changes.stored_rows_of(view, snapshot, run, start)
        assert got.column_names == row_columns(view)
        expected = sorted((s, i, p, t) for s, i, p, t in stored if (s, i) in wanted and (start is None or t >= start))
        rows = zip(*(got.column(c).to_pylist() for c in ("shop", "item", "price", "event_timestamp")), strict=True)
        assert sorted(rows) == expected
