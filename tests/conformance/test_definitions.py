"""Every row expression of the example repository (definitions/), compiled as `skewless plan` compiles it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from definitions._example_data import create_example_data
from features.config import RepoConfig
from features.expressions import Call, Expr
from features.plan import Plan, ViewPlan
from features.store import FeatureStore
from tests.conformance.engines import Engine
from tests.conformance.runner import budget, check_exprs
from tests.conformance.strategies import tables

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    url = f"sqlite:///{tmp_path_factory.mktemp('payments')}/payments.db"
    create_example_data(url, cards=5, merchants=3, payments=20)
    return FeatureStore(config=RepoConfig.from_dict(ROOT, {"connections": {"payments": url}})).compile()


def stored(view: ViewPlan) -> tuple[list[Expr], list[str]]:
    """Each feature's expression as materialization stores it (converted to the declared type)."""
    exprs: list[Expr] = [f.expr if f.expr.dtype is f.dtype else Call(f.dtype, "cast", (f.expr,)) for f in view.features]
    return exprs, [f"{view.name}:{f.name}" for f in view.features]


def test_the_example_repository_has_row_expressions(plan: Plan) -> None:
    assert sum(isinstance(f.expr, Call) for v in plan.views for f in v.features) >= 3


def test_every_definition_expression(engine: Engine, plan: Plan) -> None:
    views = [v for v in plan.views if any(isinstance(f.expr, Call) for f in v.features)]

    @budget(engine, scale=0.5)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        for view in views:
            table: pa.Table = data.draw(tables(view.source.column_types()), label=view.name)
            exprs, labels = stored(view)
            check_exprs(engine, exprs, labels, table)

    run()
