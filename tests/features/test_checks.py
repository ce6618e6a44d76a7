"""Declared checks: wrong ones fail at plan time with file and line and the valid choices; checks change the
plan's fingerprint and no stored fingerprint; each row-level check's count is held to pandas over the same rows;
statistics and checks of an empty run, all-null columns, NaN and infinities are defined (never a crash); the
default drift rules take the sample sizes into account."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features import DefinitionError, Drift, Feature, Float64, Range
from features.checks import ArrowRows, Baseline, CheckPlan, evaluate
from features.cli import main
from features.config import RepoConfig
from features.drift import feature_findings, volume_finding
from features.dtypes import DType
from features.run_stats import arrow_stats
from features.store import FeatureStore
from tests.features.conftest import ENTITIES, VIEWS

Repo = Callable[..., RepoConfig]

# card_txn's features with checks on the line each marker names (the last lines of the file).
CHECKED = VIEWS.replace(
    'Feature("amount", Float64),', 'Feature("amount", Float64, checks=[Range(0, 1e6), MaxNulls(0.01)]),'
).replace("from features import", "from features import AllowedValues, Drift, MaxNulls, Range, RowCount, UniqueKeys,")


def _view_with(checks: str) -> str:
    """A second view whose checks=[...] is on a line of its own (its line number: ``_line``)."""
    return (
        CHECKED
        + "\nlabels = FeatureView(\n    entities=[card],\n    source=txns,\n    features=[\n"
        + '        Feature("label", String),\n        Feature("n", Int64),\n    ],\n'
        + f"    checks=[{checks}],\n)\n"
    )


def _line(text: str) -> int:
    return text.count("\n") - 1  # the checks=[...] line: second to last


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        ('Range(0, 10, feature="label")', "a Range on feature 'label' of type string"),
        ('AllowedValues([1, 2], feature="label")', "has values of another type: [1, 2]; give str values"),
        ('AllowedValues(["a"], feature="n")', "has values of another type: ['a']; give int values"),
        ('MaxNulls(0.1, feature="nope")', "unknown feature 'nope' of view 'labels'; known: label, n"),
        ('Drift(against="model_v9")', "Drift against unknown training set 'model_v9'"),
        ("Range(0, 1)", "Range in a view's checks needs feature=...; features of view 'labels': label, n"),
        ("MaxNulls(1.5)", "MaxNulls share must be from 0 to 1, got 1.5"),
        ('RowCount(min=5, level="fatal")', "unknown check level 'fatal'; valid choices: blocking, warning"),
        ("42", "42 is not a check; valid choices here: Range, AllowedValues, MaxNulls, RowCount"),
    ],
)
def test_a_wrong_check_fails_at_plan_with_file_and_line(
    make_repo: Repo, capsys: pytest.CaptureFixture[str], checks: str, message: str
) -> None:
    views = _view_with(checks)
    config = make_repo({"entities.py": ENTITIES, "views.py": views})
    assert main(["plan", "--repo", str(config.root)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    where = f"views.py:{_line(views)}: " if checks != "42" else "views.py:"
    assert where in out and message in out, out


def test_a_check_on_a_feature_that_no_longer_exists_is_a_plan_error(make_repo: Repo) -> None:
    views = _view_with('MaxNulls(0.1, feature="n")')
    config = make_repo({"entities.py": ENTITIES, "views.py": views})
    FeatureStore(config=config).compile()  # fine while the feature exists
    gone = views.replace('        Feature("n", Int64),\n', "")
    config = make_repo({"entities.py": ENTITIES, "views.py": gone})
    with pytest.raises(DefinitionError, match=r"views.py:\d+: max_nulls check on unknown feature 'n'"):
        FeatureStore(config=config).compile()


def test_checks_change_the_plan_fingerprint_and_no_stored_fingerprint(make_repo: Repo) -> None:
    plain = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": VIEWS})).compile()
    checked = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": CHECKED})).compile()
    before, after = plain.view("card_txn"), checked.view("card_txn")
    assert [c.label for c in after.checks] == ["range(amount) [0, 1000000.0]", "max_nulls(amount) <= 1.00%"]
    line = next(i for i, text in enumerate(CHECKED.split("\n"), 1) if "Range(0, 1e6)" in text)
    assert after.checks[0].location.endswith(f"views.py:{line}")
    assert plain.fingerprint != checked.fingerprint  # a new plan version carries the checks
    assert before.storage_fingerprint == after.storage_fingerprint  # same table: no value changed
    assert [f.fingerprint for f in before.features] == [f.fingerprint for f in after.features]
    assert type(checked).from_json(checked.to_json()).view("card_txn").checks == after.checks


def test_checks_on_a_feature_name_no_other_feature() -> None:
    with pytest.raises(DefinitionError, match="must be a list of checks"):
        Feature("amount", Float64, checks=Range(0, 1))  # type: ignore[arg-type]
    assert Drift(against="previous", tolerance=2).tolerance == 2
    with pytest.raises(DefinitionError, match="Drift tolerance must be a positive number"):
        Drift(tolerance=0)
    with pytest.raises(DefinitionError, match="Range min 2 is above max 1"):
        Range(2, 1)


# -- the row-level checks against pandas ----------------------------------------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)
FEATURES = {"rate": DType.FLOAT64, "kind": DType.STRING, "n": DType.INT64}


def _rows(frame: pd.DataFrame) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(frame["id"], pa.int64()),
            "rate": pa.array(frame["rate"], pa.float64(), from_pandas=False),
            "kind": pa.array(frame["kind"], pa.string()),
            "n": pa.array(frame["n"], pa.int64()),
            "event_timestamp": pa.array([T0] * len(frame), pa.timestamp("us", "UTC")),
        }
    )


def _evaluate(table: pa.Table, checks: list[CheckPlan], rows_read: int | None = None) -> dict[str, object]:
    stats = arrow_stats(table, list(FEATURES.items()))
    report = evaluate(
        "v",
        checks,
        FEATURES,
        rows_read=table.num_rows if rows_read is None else rows_read,
        written=stats,
        rows=ArrowRows(table, ["id"], "event_timestamp"),
        baseline=Baseline(),
    )
    return {o.check.split(" ")[0]: o for o in report.outcomes}


CHECKS = [
    CheckPlan("range", "rate", {"min": 0.0, "max": 1.0}, "blocking"),
    CheckPlan("range", "n", {"min": None, "max": 10}, "warning"),
    CheckPlan("allowed_values", "kind", {"values": ["a", "b"]}, "blocking"),
    CheckPlan("allowed_values", "n", {"values": [1, 2, 3]}, "warning"),
    CheckPlan("max_nulls", "rate", {"share": 0.1}, "blocking"),
    CheckPlan("row_count", None, {"min": 5, "max": 1000}, "blocking"),
    CheckPlan("unique_keys", None, {}, "blocking"),
]


def test_row_level_checks_count_what_pandas_counts() -> None:
    rng = np.random.default_rng(7)
    n = 400
    rate = rng.normal(0.5, 0.4, n)
    rate[rng.choice(n, 30, replace=False)] = np.nan
    rate[:3] = [np.inf, -np.inf, 2.0]
    frame = pd.DataFrame(
        {
            "id": rng.integers(0, 300, n),  # repeats
            "rate": rate,
            "kind": rng.choice(["a", "b", "c", None], n, p=[0.5, 0.3, 0.1, 0.1]),
            "n": rng.integers(0, 15, n),
        }
    )
    got = _evaluate(_rows(frame), CHECKS)
    values = frame["rate"].dropna()
    assert got["range(rate)"].failing_rows == int(((values < 0) | (values > 1)).sum())
    assert got["range(n)"].failing_rows == int((frame["n"] > 10).sum())
    assert got["allowed_values(kind)"].failing_rows == int(frame["kind"].eq("c").sum())
    assert got["allowed_values(n)"].failing_rows == int((~frame["n"].isin([1, 2, 3])).sum())
    assert got["max_nulls(rate)"].failing_rows == int(frame["rate"].isna().sum())  # NaN counts as missing
    assert got["max_nulls(rate)"].passed == (frame["rate"].isna().mean() <= 0.1)
    assert got["row_count"].passed
    repeats = frame.groupby("id").size()
    assert got["unique_keys"].failing_rows == int((repeats - 1).sum())
    examples = {e["id"]: e["rows"] for e in got["unique_keys"].examples}
    assert all(repeats[key] == count for key, count in examples.items()) and len(examples) == 5
    example = got["range(rate)"].examples
    assert [e["rate"] for e in example] == ["inf", "-inf", 2.0] + [e["rate"] for e in example[3:]]
    assert all(not o.passed for k, o in got.items() if k not in ("row_count", "max_nulls(rate)"))


def test_an_empty_run_and_all_null_columns_are_defined() -> None:
    empty = _evaluate(_rows(pd.DataFrame({"id": [], "rate": [], "kind": [], "n": []})), CHECKS)
    assert not empty["row_count"].passed and empty["row_count"].observed == "0 source rows read"
    assert all(o.passed for k, o in empty.items() if k != "row_count")

    nulls = pd.DataFrame({"id": range(6), "rate": [None] * 6, "kind": [None] * 6, "n": [None] * 6})
    got = _evaluate(_rows(nulls), CHECKS)
    assert not got["max_nulls(rate)"].passed and got["max_nulls(rate)"].failing_rows == 6
    assert got["range(rate)"].passed and got["allowed_values(kind)"].passed  # nulls are no values
    assert got["unique_keys"].passed

    nan = pd.DataFrame({"id": range(4), "rate": [np.nan, np.nan, np.inf, 0.5], "kind": ["a"] * 4, "n": [1] * 4})
    got = _evaluate(_rows(nan), CHECKS)
    assert got["range(rate)"].failing_rows == 1 and got["max_nulls(rate)"].failing_rows == 2


# -- default drift: sample sizes --------------------------------------------------------------------------------------


def _stats(values: np.ndarray) -> object:
    return arrow_stats(pa.table({"x": pa.array(values, pa.float64())}), [("x", DType.FLOAT64)])["x"]


def test_a_tiny_batch_does_not_fire_and_a_huge_one_does_not_hide_a_real_change() -> None:
    rng = np.random.default_rng(3)
    usual = _stats(rng.normal(100, 10, 5_000))
    tiny = _stats(rng.normal(100, 10, 12) * 100)  # even a unit change: 12 rows tell nothing
    assert feature_findings(tiny, usual) == []  # type: ignore[arg-type]
    small_wobble = _stats(rng.normal(100.5, 10, 2_000_000))  # a twentieth of a deviation: significant, trivial
    assert not any(f.fires for f in feature_findings(small_wobble, usual))  # type: ignore[arg-type]
    real = _stats(rng.normal(110, 10, 2_000_000))  # one deviation: fires however large n is
    assert {f.rule for f in feature_findings(real, usual) if f.fires} == {"mean"}  # type: ignore[arg-type]
    assert volume_finding(4, 10) is None or not volume_finding(4, 10).fires  # type: ignore[union-attr]
    fired = volume_finding(100, 1_000)
    assert fired is not None and fired.fires and math.isclose(fired.effect, math.log(10))
