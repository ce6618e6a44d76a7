"""The statistics of what a Delta commit added, from Parquet footers, against pandas over the same rows: several
files and row groups, a column null in one file and not in another, NaN, a percent-encoded file path."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.table_stats import commit_stats

PARTS = {
    "a.parquet": pa.table(
        {"x": pa.array([1.0, math.nan, None, 3.5]), "s": pa.array([None, None, None, None], pa.string())}
    ),
    "dir x/b.parquet": pa.table({"x": pa.array([5.0, -2.0]), "s": pa.array(["b", "a"])}),
}


def make_commit(table: Path) -> None:
    (table / "_delta_log").mkdir(parents=True)
    (table / "dir x").mkdir()
    for name, rows in PARTS.items():
        pq.write_table(rows, table / name, row_group_size=2)  # several row groups per file
    actions = [
        {"commitInfo": {"timestamp": 1_700_000_000_000, "operation": "WRITE"}},
        {"add": {"path": "a.parquet", "size": 1, "dataChange": True}},
        {"add": {"path": "dir%20x/b.parquet", "size": 1, "dataChange": True}},
    ]
    (table / "_delta_log" / f"{0:020d}.json").write_text("\n".join(json.dumps(a) for a in actions) + "\n")


def oracle(column: str) -> tuple[int, int, Any, Any]:
    frame = pd.concat([t.to_pandas(types_mapper=pd.ArrowDtype) for t in PARTS.values()], ignore_index=True)
    values = [v for v in frame[column].dropna().tolist() if not (isinstance(v, float) and math.isnan(v))]
    return len(frame), int(frame[column].isna().sum()), min(values), max(values)


def test_a_commits_statistics_are_those_of_its_rows(tmp_path: Path) -> None:
    make_commit(tmp_path)
    stats = commit_stats(tmp_path, 0)
    assert stats is not None and stats.files == 2 and stats.committed_at is not None
    assert stats.committed_at.timestamp() == 1_700_000_000
    for column in ("x", "s"):
        found = stats.columns[column]
        assert (found.rows, found.nulls, found.min, found.max) == oracle(column), column
    assert stats.columns["x"].null_share == 1 / 6


def test_a_cleaned_up_commit_or_a_vacuumed_file_has_no_statistics(tmp_path: Path) -> None:
    make_commit(tmp_path)
    assert commit_stats(tmp_path, 1) is None
    (tmp_path / "dir x" / "b.parquet").unlink()
    assert commit_stats(tmp_path, 0) is None
