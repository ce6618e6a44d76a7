"""`skewless list` and `describe`: each feature's definition written back as text parses again to the same plan
node (the parser is the oracle), and the commands show the applied example repository, as tables and as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from definitions._example_data import create_example_data
from features.catalog import expression_text, feature_definition
from features.cli import main
from features.config import RepoConfig
from features.dtypes import DType
from features.expressions import Expr, parse_expression
from features.plan import Plan

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "definitions_plan.json"


def expressions(plan: Plan) -> list[tuple[Expr, dict[str, DType]]]:
    """Every expression of the plan, with the columns it was parsed against."""
    found = []
    for view in plan.views:
        columns = {c.name: c.dtype for c in view.source.columns}
        for feature in view.features:
            if feature.expr is not None:
                found.append((feature.expr, columns))
            if feature.aggregation is not None and feature.aggregation.filter is not None:
                found.append((feature.aggregation.filter, columns))
    for odfv in plan.on_demand_views:
        columns = {f"{s.name}.{c.name}": c.dtype for s in odfv.request_sources for c in s.fields}
        columns |= {f"{r.view}.{r.feature}": plan.feature_plan(r).dtype for r in odfv.inputs}
        found += [(f.expr, columns) for f in odfv.features if f.expr is not None]
    return found


def test_every_definition_of_the_example_parses_back_to_itself() -> None:
    plan = Plan.from_dict(json.loads(GOLDEN.read_text()))
    found = expressions(plan)
    assert len(found) > 15
    for expr, columns in found:
        assert parse_expression(expression_text(expr), columns) == expr, expression_text(expr)


@pytest.mark.parametrize(
    "text",
    [
        "-(a - b) * 2.5 % 3",
        "not (a > b or a == 1) and is_null(s)",
        'if_else(s + "x" != lower(s), cast(a, "float64"), coalesce(b, 0.5))',
        'length(upper(s)) >= abs(a) and cast(s, "bool")',
    ],
)
def test_operators_parse_back_to_themselves(text: str) -> None:
    columns = {"a": DType.INT64, "b": DType.FLOAT64, "s": DType.STRING}
    expr = parse_expression(text, columns)
    assert parse_expression(expression_text(expr), columns) == expr


def test_an_aggregation_reads_as_one_line() -> None:
    plan = Plan.from_dict(json.loads(GOLDEN.read_text()))
    windowed = next(f for v in plan.views for f in v.features if f.aggregation is not None)
    text = feature_definition(windowed)
    assert text.startswith(f"{windowed.aggregation.function}(") and " over " in text  # type: ignore[union-attr]


@pytest.fixture
def applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("PAYMENTS_DB_URL", raising=False)
    repo = tmp_path / "fraud"
    assert main(["init", "--example", str(repo)]) == 0
    create_example_data(RepoConfig.load(repo).connection_url("payments"), cards=5, merchants=3, payments=20)
    assert main(["apply", "--repo", str(repo)]) == 0
    yield repo
    main(["stop", "--repo", str(repo)])  # describe reads the online snapshot: the embedded server started


def test_list_and_describe_show_the_applied_plan(applied: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    plan = Plan.from_dict(json.loads(GOLDEN.read_text()))
    assert main(["list", "features", "--repo", str(applied), "--json"]) == 0
    features: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    expected = {f"{v.name}:{f.name}" for v in (*plan.views, *plan.on_demand_views) for f in v.features}
    assert {f["name"] for f in features} == expected
    assert main(["list", "--repo", str(applied)]) == 0
    out = capsys.readouterr().out
    assert all(v.name in out for v in plan.views) and "windowed view" in out
    view = plan.views[0]
    assert main(["describe", view.name, "--repo", str(applied), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["name"] == view.name and described["storage_fingerprint"] == view.storage_fingerprint
    assert [f["name"] for f in described["features"]] == list(view.feature_names)
    assert described["last_runs"] == [] and described["plan_version"] == 1
    assert main(["describe", "fraud_model", "--repo", str(applied)]) == 0
    assert "service fraud_model" in capsys.readouterr().out
    assert main(["describe", "nope", "--repo", str(applied)]) == 1
    out = capsys.readouterr().out
    assert "unknown name 'nope'" in out and view.name in out and "Traceback" not in out
