"""Every row expression and every request-time view of the example repository (definitions/), compiled as
`skewless plan` compiles it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from definitions._example_data import create_example_data
from features.config import RepoConfig
from features.dtypes import DType
from features.expressions import Call, Expr
from features.functions import FunctionLoader
from features.on_demand import compute
from features.plan import OnDemandViewPlan, Plan, ViewPlan
from features.store import FeatureStore
from offline.on_demand import on_demand_spec
from offline.spark.on_demand import add_on_demand_spark
from tests.conformance.compare import assert_all_same
from tests.conformance.engines import ROW, Engine, _normalise
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
    exprs: list[Expr] = [
        f.expression if f.expression.dtype is f.dtype else Call(f.dtype, "cast", (f.expression,)) for f in view.features
    ]
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


def on_demand_inputs(plan: Plan, view: OnDemandViewPlan) -> dict[str, DType]:
    """The ``<source>.<field>`` columns a view reads, with their types."""
    types = {f"{source}.{spec.name}": spec.dtype for source, spec in view.request_fields()}
    return types | {f"{r.view}.{r.feature}": plan.feature_plan(r).dtype for r in view.inputs}


def test_the_example_repository_has_an_on_demand_function(plan: Plan) -> None:
    assert any(v.function is not None for v in plan.on_demand_views)
    assert any(v.function is None for v in plan.on_demand_views)


@pytest.mark.spark
def test_every_on_demand_view_agrees_between_spark_and_serving(spark: Any, plan: Plan) -> None:
    """Each request-time view of definitions/ (expressions and plain-Python functions), computed on generated
    inputs as serving computes it (on the request batch) and as a Spark training set does (mapInArrow in the
    executors, the function shipped there): the same values, nulls and Arrow types."""
    functions = FunctionLoader(ROOT / "definitions").functions_for(plan)

    @settings(
        max_examples=6,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        for view in plan.on_demand_views:
            types = on_demand_inputs(plan, view)
            table: pa.Table = data.draw(tables(types), label=view.name)
            names = list(view.feature_names)
            inputs = {name: table.column(name) for name in types}
            served = compute(view, names, inputs, table.num_rows, functions.get(view.name))
            # The columns a point-in-time join leaves: request fields by name, stored inputs as view__feature.
            joined = {ROW: pa.array(range(table.num_rows), pa.int64())}
            joined |= {spec.name: table.column(f"{s}.{spec.name}") for s, spec in view.request_fields()}
            joined |= {r.column: table.column(f"{r.view}.{r.feature}") for r in view.inputs}
            spec = on_demand_spec({view.name: view}, {view.name: names}, [r.column for r in view.inputs])
            frame = add_on_demand_spark(spark.createDataFrame(pa.table(joined)), spec, functions)
            result = frame.toArrow().sort_by(ROW)
            assert [c for c in result.column_names if c.startswith(f"{view.name}__")] == [
                f"{view.name}__{n}" for n in names
            ]
            offline = [_normalise(result.column(f"{view.name}__{n}").combine_chunks()) for n in names]
            assert_all_same("spark", [f"{view.name}:{n}" for n in names], offline, [served[n] for n in names], table)

    run()
