"""Landing the served-feature log (``skewless log land|status``): batches land once, also after a crash between the
commit and the removal of the batches, retention deletes old days, and Spark reads the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from features.cli import main
from features.config import RepoConfig
from features.dtypes import DType, to_micros
from features.lookup import FeatureValues, LookupResult
from features.served_log import LoggedLookup, landing_dir, log_dir, to_rows, write_batch
from offline import served_log

NOW = datetime(2026, 3, 31, 12, tzinfo=UTC)


def config(root: Path, retention_days: int = 30) -> RepoConfig:
    (root / "skewless.yaml").write_text(f"project: p\nserving:\n  log:\n    retention_days: {retention_days}\n")
    return RepoConfig.load(root)


def batch(cfg: RepoConfig, served: datetime, lookups: int, prefix: str) -> str:
    """A landing batch of ``lookups`` lookups of 2 entities x 2 features (4 rows each) served at ``served``."""
    values = FeatureValues(DType.FLOAT64, [1.5, None], ["present", "missing"], [to_micros(served), None])
    result = LookupResult(3, {"card_id": [1, 2]}, {"card__a": values, "card__b": values}, {"card": "v7"})
    logged = [LoggedLookup(f"{prefix}{i}", to_micros(served), "fraud", result) for i in range(lookups)]
    return write_batch(cfg, to_rows(logged))


def batch_rows(cfg: RepoConfig) -> dict[str, int]:
    """The oracle: rows per request id prefix of the pending batches, read with plain pyarrow."""
    counts: dict[str, int] = {}
    for path in landing_dir(cfg).glob("*.parquet"):
        for rid in pq.read_table(path, columns=["request_id"]).column("request_id").to_pylist():
            counts[rid] = counts.get(rid, 0) + 1
    return counts


def ids(cfg: RepoConfig) -> list[str]:
    return sorted(served_log.read(cfg).column("request_id").to_pylist())


def test_batches_land_once_also_after_a_crash_between_the_commit_and_their_removal(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    names = [batch(cfg, NOW, 3, "a"), batch(cfg, NOW, 2, "b")]
    saved = {name: (landing_dir(cfg) / name).read_bytes() for name in names}
    expected = sorted(rid for rid, n in batch_rows(cfg).items() for _ in range(n))
    assert served_log.land(cfg, now=NOW) == 20
    assert served_log.pending(cfg) == []
    assert served_log.land(cfg, now=NOW) == 0  # landing twice lands once
    assert ids(cfg) == expected
    # A landing that crashed after its commit, before removing its batches: they are back in the folder.
    for name, data in saved.items():
        (landing_dir(cfg) / name).write_bytes(data)
    batch(cfg, NOW, 1, "c")
    assert served_log.land(cfg, now=NOW) == 4  # only the new batch
    assert ids(cfg) == sorted([*expected, "c0", "c0", "c0", "c0"])
    assert served_log.pending(cfg) == []


def test_retention_deletes_the_days_before_it_and_status_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path, retention_days=30)
    batch(cfg, NOW, 2, "today")
    batch(cfg, NOW - timedelta(days=29), 1, "kept")  # the 30th day, counting today
    batch(cfg, NOW - timedelta(days=30), 1, "old")
    state = served_log.status(cfg, now=NOW)
    assert sorted(state.pending.values()) == [4, 4, 8] and state.version is None
    assert state.cutoff == "2026-03-02"
    # Land without retention first (a far earlier 'now'), so the old day is in the table, then with it.
    assert served_log.land(cfg, now=NOW - timedelta(days=400)) == 16
    assert served_log.status(cfg, now=NOW).landed == {"2026-03-01": 4, "2026-03-02": 4, "2026-03-31": 8}
    assert main(["log", "status", "--repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2026-03-01" in out and "deleted at next landing" in out
    assert served_log.land(cfg, now=NOW) == 0  # nothing pending; retention deletes the old day
    assert served_log.status(cfg, now=NOW).landed == {"2026-03-02": 4, "2026-03-31": 8}
    assert {rid[:-1] for rid in ids(cfg)} == {"today", "kept"}
    assert served_log.expire(cfg, now=NOW) == []  # nothing more to delete: no commit


def test_the_log_command_lands_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    batch(cfg, datetime.now(UTC), 2, "x")
    assert main(["log", "status", "--repo", str(tmp_path)]) == 0
    assert "1 (8 rows)" in capsys.readouterr().out
    assert main(["log", "land", "--repo", str(tmp_path)]) == 0
    assert "landed 8 row(s) from 1 batch(es)" in capsys.readouterr().out
    assert served_log.pending(cfg) == [] and len(ids(cfg)) == 8


@pytest.mark.spark
def test_spark_reads_the_landed_log(tmp_path: Path, spark: Any) -> None:
    cfg = config(tmp_path)
    batch(cfg, NOW, 3, "a")
    batch(cfg, NOW - timedelta(days=1), 2, "b")
    expected = batch_rows(cfg)
    served_log.land(cfg, now=NOW)
    frame = spark.read.format("delta").load(str(log_dir(cfg)))
    got = {row["request_id"]: row["count"] for row in frame.groupBy("request_id").count().collect()}
    assert got == expected
    assert sorted(r["day"] for r in frame.select("day").distinct().collect()) == ["2026-03-30", "2026-03-31"]
