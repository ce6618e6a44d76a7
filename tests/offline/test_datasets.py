"""Training sets: values against a merge_asof oracle, manifests, output formats, and exact reproduction."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.config import RepoConfig
from features.dtypes import DType
from features.errors import EntityKeyError
from offline import delta_rs
from offline.arrow.engine import ArrowEngine
from offline.datasets import as_arrow, describe
from offline.jobs import TrainingSet
from offline.manifest import DatasetError, Manifest, table_sha256
from offline.router import Router
from offline.spark.materialize import materialize
from offline.spark.tables import table_version
from offline.tables import table_path
from tests.offline.support import make_plan, make_view

BASE = datetime(2024, 6, 1)


def training_dataset(spark: Any, config: RepoConfig, plan: Any, version: int, rows: Any, refs: Any, **kw: Any) -> Any:
    """A set built by the router (``join``: the engine it must run in; "auto": the first that takes it). The
    router's Spark engine uses this process's session: the ``spark`` fixture's."""
    join = kw.pop("join", "auto")
    router = Router(config, in_process=True)
    return router.training_dataset(plan, version, rows, refs, engine=None if join == "auto" else join, **kw)


def reproduce(spark: Any, config: RepoConfig, plan: Any, manifest: str, output: Any = None, join: str = "auto") -> Any:
    router = Router(config, in_process=True)
    return router.reproduce(plan, manifest, output=output, engine=None if join == "auto" else join)


def arrow_join_problem(config: RepoConfig, manifest: Manifest, rows: Any) -> str | None:
    return ArrowEngine(config).refusal(TrainingSet(manifest, as_arrow(rows)))


TTL = 2 * 86400
REFS = ["acct:balance", "acct:low", "spend:amount"]


def balances(extra: bool = False) -> list[tuple[Any, ...]]:
    rows = [(1 + i % 4, round(3.5 * i, 2) if i % 6 else None, BASE + timedelta(hours=9 * i)) for i in range(30)]
    if extra:  # arrives later but is dated before the entity times: a rebuilt set would see it
        rows += [(a, -1.0, BASE + timedelta(hours=9 * i + 1)) for i in range(30) for a in (1, 2, 3, 4)]
    return rows


def spends(extra: bool = False) -> list[tuple[Any, ...]]:
    rows = [(1 + i % 3, ["m1", "m2"][i % 2], i * 10, BASE + timedelta(hours=7 * i)) for i in range(30)]
    if extra:
        rows += [(1 + i % 3, ["m1", "m2"][i % 2], -5, BASE + timedelta(hours=7 * i + 1)) for i in range(30)]
    return rows


def write_db(path: Path, extra: bool = False) -> None:
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE balances (account_id INTEGER, balance REAL, ts TIMESTAMP)")
        conn.execute("CREATE TABLE spend (account_id INTEGER, merchant TEXT, amount INTEGER, ts TIMESTAMP)")
        conn.executemany(
            "INSERT INTO balances VALUES (?, ?, ?)",
            [(a, b, t.strftime("%Y-%m-%d %H:%M:%S")) for a, b, t in balances(extra)],
        )
        conn.executemany(
            "INSERT INTO spend VALUES (?, ?, ?, ?)",
            [(a, m, x, t.strftime("%Y-%m-%d %H:%M:%S")) for a, m, x, t in spends(extra)],
        )


def entities() -> pd.DataFrame:
    times = [BASE + timedelta(hours=5 * i + 3) for i in range(40)]
    return (
        pd.DataFrame(
            {
                "account_id": pd.array([1 + i % 5 for i in range(40)], dtype="int64"),
                "merchant": [["m1", "m2", None][i % 3] for i in range(40)],
                "event_timestamp": pd.to_datetime(times),
                "label": [i % 2 for i in range(40)],
            }
        )
        .iloc[::-1]
        .reset_index(drop=True)
    )  # not in time order


def oracle(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas merge_asof straight from the source rows (no Delta involved)."""
    left = frame.reset_index().rename(columns={"index": "_row"})
    acct = pd.DataFrame(balances(), columns=["account_id", "balance", "ts"]).sort_values("ts")
    acct["low"] = acct["balance"].map(lambda b: None if pd.isna(b) else bool(b < 10))
    spend = pd.DataFrame(spends(), columns=["account_id", "merchant", "amount", "ts"]).sort_values("ts")
    ordered = left.sort_values("event_timestamp")
    a = pd.merge_asof(
        ordered, acct, left_on="event_timestamp", right_on="ts", by="account_id", tolerance=pd.Timedelta(seconds=TTL)
    )
    usable = ordered.dropna(subset=["merchant"])
    s = pd.merge_asof(usable, spend, left_on="event_timestamp", right_on="ts", by=["account_id", "merchant"])
    out = left[["_row"]].merge(a[["_row", "balance", "low"]], on="_row", how="left")
    out = out.merge(s[["_row", "amount"]], on="_row", how="left").sort_values("_row")
    return out.rename(columns={"balance": "acct__balance", "low": "acct__low", "amount": "spend__amount"})


def plain(values: Any) -> list[Any]:
    return [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in values]


@pytest.fixture(scope="module")
def repo(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = Path(tmp_path_factory.mktemp("datasets"))
    write_db(root / "bank.db")
    config = RepoConfig(root=root, connections={"bank": "sqlite:///bank.db"})
    acct = make_view(
        "acct",
        connection="bank",
        table="balances",
        keys={"account_id": DType.INT64},
        columns={"balance": DType.FLOAT64, "ts": DType.TIMESTAMP},
        features={"balance": "balance", "low": "balance < 10"},
        ttl_seconds=TTL,
        online=False,
    )
    spend = make_view(
        "spend",
        connection="bank",
        table="spend",
        keys={"account_id": DType.INT64, "merchant": DType.STRING},
        columns={"amount": DType.INT64, "ts": DType.TIMESTAMP},
        features={"amount": "amount"},
        online=False,
    )
    plan = make_plan(acct, spend)
    for view in plan.views:
        materialize(spark, config, plan, view, start=None, end=None, online=None)
    out, out_arrow = str(root / "train.parquet"), str(root / "train-arrow.parquet")
    first = training_dataset(lambda: spark, config, plan, 7, entities(), REFS, output=out, join="spark")
    first_arrow = training_dataset(lambda: spark, config, plan, 7, entities(), REFS, output=out_arrow, join="arrow")
    versions = {v.name: table_version(spark, table_path(config, v)) for v in plan.views}
    # More data arrives, dated inside the period the training set covers: late rows, which a run reads only
    # from --start on (runs read the rows after their watermark).
    write_db(root / "bank.db", extra=True)
    for view in plan.views:
        materialize(spark, config, plan, view, start=BASE, end=None, online=None)
    return {
        "root": root,
        "config": config,
        "plan": plan,
        "out": {"spark": out, "arrow": out_arrow},
        "first": {"spark": first, "arrow": first_arrow},
        "versions": versions,
    }


@pytest.mark.spark
@pytest.mark.parametrize("join", ["spark", "arrow"])
def test_values_match_merge_asof(repo: dict[str, Any], join: str) -> None:
    first, frame = repo["first"][join], entities()
    assert list(first.columns) == [*frame.columns, "acct__balance", "acct__low", "spend__amount"]
    pd.testing.assert_frame_equal(first[list(frame.columns)], frame)  # entity columns exactly as given
    expected = oracle(frame)
    for column in ("acct__balance", "acct__low", "spend__amount"):
        assert plain(first[column]) == plain(expected[column]), column
    assert first["acct__balance"].notna().sum() > 10 and first["spend__amount"].notna().sum() > 5


@pytest.mark.spark
def test_both_joins_build_the_same_set(repo: dict[str, Any]) -> None:
    manifests = {j: json.loads(Path(f"{repo['out'][j]}.manifest.json").read_text()) for j in ("spark", "arrow")}
    assert manifests["spark"]["joined_in"] == "spark" and manifests["arrow"]["joined_in"] == "arrow"
    assert manifests["arrow"]["result"]["sha256"] == manifests["spark"]["result"]["sha256"]  # values and types
    arrow_set, spark_set = (pq.read_table(repo["out"][j]) for j in ("arrow", "spark"))
    assert arrow_set.schema == spark_set.schema and table_sha256(arrow_set) == table_sha256(spark_set)


@pytest.mark.spark
def test_manifest_records_what_was_read(repo: dict[str, Any]) -> None:
    out, plan = repo["out"]["spark"], repo["plan"]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["plan_version"] == 7 and manifest["plan_fingerprint"] == plan.fingerprint
    assert manifest["refs"] == REFS and manifest["timestamp_column"] == "event_timestamp"
    assert manifest["feature_fingerprints"]["acct:low"] == plan.view("acct").feature("low").fingerprint
    for view in plan.views:
        info = manifest["views"][view.name]
        assert info["path"] == str(table_path(repo["config"], view))
        assert info["version"] == repo["versions"][view.name]
    assert len(manifest["entities"]["sha256"]) == 64 and len(manifest["result"]["sha256"]) == 64
    assert pq.read_table(f"{out}.entities.parquet").num_rows == len(entities())
    pd.testing.assert_frame_equal(pq.read_table(out).to_pandas(), repo["first"]["spark"])


@pytest.mark.spark
@pytest.mark.parametrize(("built", "rebuilt"), [("spark", "arrow"), ("arrow", "spark"), ("arrow", "auto")])
def test_reproduce_is_identical_after_more_data(
    spark: Any, repo: dict[str, Any], tmp_path: Path, built: str, rebuilt: str
) -> None:
    config, plan, out = repo["config"], repo["plan"], repo["out"][built]
    fresh = training_dataset(lambda: spark, config, plan, 8, entities(), REFS, join=rebuilt)
    assert not fresh.equals(repo["first"][built])  # the new rows do change a rebuilt set...
    again_path = str(tmp_path / "again.parquet")
    again = reproduce(lambda: spark, config, plan, f"{out}.manifest.json", output=again_path, join=rebuilt)
    pd.testing.assert_frame_equal(again, repo["first"][built])  # ...but not the reproduced one
    first_manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    again_manifest = json.loads((tmp_path / "again.parquet.manifest.json").read_text())
    assert again_manifest["result"]["sha256"] == first_manifest["result"]["sha256"]


@pytest.mark.spark
@pytest.mark.parametrize("join", ["arrow", "spark"])
def test_reproduce_keeps_the_column_order_of_refs_not_in_name_order(
    spark: Any, repo: dict[str, Any], tmp_path: Path, join: str
) -> None:
    """The manifest is written with sorted keys ("acct" before "spend"); the set's columns follow the refs."""
    config, plan = repo["config"], repo["plan"]
    refs = ["spend:amount", "acct:low", "acct:balance"]
    out = str(tmp_path / "spend-first.parquet")
    first = training_dataset(lambda: spark, config, plan, 8, entities(), refs, output=out, join=join)
    assert list(first.columns)[-3:] == ["spend__amount", "acct__low", "acct__balance"]
    again = reproduce(lambda: spark, config, plan, f"{out}.manifest.json", join=join)
    pd.testing.assert_frame_equal(again, first)


@pytest.mark.spark
def test_output_formats_and_spark_input(spark: Any, repo: dict[str, Any]) -> None:
    config, plan, frame = repo["config"], repo["plan"], entities()
    session = lambda: spark  # noqa: E731
    pandas_result = training_dataset(session, config, plan, 8, frame, REFS)
    arrow_result = training_dataset(session, config, plan, 8, pa.Table.from_pandas(frame), REFS, output_format="arrow")
    assert isinstance(arrow_result, pa.Table)
    pd.testing.assert_frame_equal(arrow_result.to_pandas(), pandas_result)
    spark_in = spark.createDataFrame(frame)
    spark_out = training_dataset(session, config, plan, 8, spark_in, ["acct:*", "spend:amount"], output_format="spark")
    assert spark_out.columns == list(pandas_result.columns)
    got = spark_out.toPandas()
    for column in ("account_id", "label", "acct__balance", "acct__low", "spend__amount"):
        assert plain(got[column]) == plain(pandas_result[column]), column


@pytest.mark.spark
def test_errors_name_the_problem(spark: Any, repo: dict[str, Any], tmp_path: Path) -> None:
    config, plan = repo["config"], repo["plan"]
    session = lambda: spark  # noqa: E731
    with pytest.raises(DatasetError, match="valid choices: pandas, spark, arrow"):
        training_dataset(session, config, plan, 8, entities(), REFS, output_format="csv")
    with pytest.raises(DatasetError, match="unknown engine 'duckdb'; valid choices: arrow, spark"):
        training_dataset(session, config, plan, 8, entities(), REFS, join="duckdb")
    for join in ("arrow", "spark"):
        with pytest.raises(EntityKeyError, match="merchant"):
            training_dataset(session, config, plan, 8, entities().drop(columns=["merchant"]), REFS, join=join)
    empty = RepoConfig(root=tmp_path, connections=config.connections)
    with pytest.raises(DatasetError, match="run 'skewless materialize'"):
        training_dataset(session, empty, plan, 8, entities(), REFS)
    no_arrow = RepoConfig(root=config.root, connections=config.connections, arrow_join_max_mb=0)
    with pytest.raises(DatasetError, match=r"cannot be joined in Arrow: offline\.arrow_join_max_mb is 0"):
        training_dataset(session, no_arrow, plan, 8, entities(), REFS, join="arrow")
    text_times = entities().astype({"event_timestamp": str})
    with pytest.raises(DatasetError, match="'event_timestamp' is string, not a timestamp"):
        training_dataset(session, config, plan, 8, text_times, REFS, join="arrow")


@pytest.mark.spark
def test_auto_joins_in_arrow_unless_it_cannot(spark: Any, repo: dict[str, Any], tmp_path: Path) -> None:
    """Which engine ``auto`` picks: Arrow for small tables and plain inputs, Spark otherwise; same values."""
    config, plan = repo["config"], repo["plan"]
    no_arrow = RepoConfig(root=config.root, connections=config.connections, arrow_join_max_mb=0)
    sets = {}
    for name, cfg, frame in [
        ("arrow", config, entities()),
        ("spark", no_arrow, entities()),
        ("float ids", config, entities().astype({"account_id": "float64"})),  # Spark casts those; Arrow leaves them
        ("paris int32", config, in_paris_with_int32_ids()),  # the same instants and keys, other types
    ]:
        out = str(tmp_path / f"{name}.parquet")
        training_dataset(lambda: spark, cfg, plan, 8, frame, REFS, output=out)
        sets[name] = json.loads(Path(f"{out}.manifest.json").read_text())
    assert [m["joined_in"] for m in sets.values()] == ["arrow", "spark", "spark", "arrow"]
    assert sets["arrow"]["result"]["sha256"] == sets["spark"]["result"]["sha256"]
    features = ["acct__balance", "acct__low", "spend__amount"]
    utc, paris = (pq.read_table(sets[name]["result"]["path"]).select(features) for name in ("arrow", "paris int32"))
    assert paris.equals(utc)


def in_paris_with_int32_ids() -> pd.DataFrame:
    frame = entities()
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")
    return frame.astype({"account_id": "int32"})


@pytest.mark.spark
def test_tables_over_the_limit_are_joined_in_spark_and_the_log_says_why(
    spark: Any, repo: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config, plan = repo["config"], repo["plan"]
    real = delta_rs.snapshot
    monkeypatch.setattr(  # two tables: 1,200 MiB
        delta_rs, "snapshot", lambda path, version: dataclasses.replace(real(path, version), size=600 * 2**20)
    )
    manifest = describe(config, plan, 8, REFS)
    assert arrow_join_problem(config, manifest, entities()) == (
        "the feature tables hold 1,200 MiB, over offline.arrow_join_max_mb (1024)"
    )
    roomy = RepoConfig(root=config.root, connections=config.connections, arrow_join_max_mb=1200)
    assert arrow_join_problem(roomy, manifest, entities()) is None
    out = str(repo["root"] / "over-the-limit.parquet")
    with caplog.at_level(logging.INFO, logger="offline.router"):
        training_dataset(lambda: spark, config, plan, 8, entities(), REFS, output=out)
    why = "the feature tables hold 1,200 MiB, over offline.arrow_join_max_mb (1024)"
    assert any(f"runs in spark (not arrow: {why})" in r.getMessage() for r in caplog.records)
    manifest_json = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest_json["joined_in"] == "spark" and manifest_json["refusals"] == {"arrow": why}
