"""On-demand features in training sets: the same compiled expressions, through the same evaluator, as serving.

After the point-in-time join, each row holds the stored inputs (``<view>__<feature>``) and the request fields
(entity-row columns named like the fields). :func:`add_on_demand` hands them to
:func:`features.on_demand.compute` as Arrow arrays: on the driver for pandas and Arrow results, inside the
executors (``mapInArrow``) for Spark results.

Plain-Python functions are imported on the driver by :class:`features.functions.FunctionLoader` (which
checks their source against the plan) and shipped to the executors pickled *by value* with Spark's
cloudpickle, so an executor never needs the definitions folder on its import path: the code that runs there
is the code the driver checked, on local mode and on a cluster alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from features.dtypes import arrow_type
from features.errors import OnDemandInputError
from features.functions import FunctionLoader
from features.on_demand import compute
from features.plan import OnDemandViewPlan

if TYPE_CHECKING:
    import pyarrow as pa


Functions = Mapping[str, Callable[..., Any]]


def load_functions(spec: dict[str, Any], loader: FunctionLoader) -> dict[str, Callable[..., Any]]:
    """The functions of the spec's function views, imported and checked against their plans."""
    out = {}
    for name, info in spec["views"].items():
        view = OnDemandViewPlan.from_dict(info["view"])
        if view.function is not None:
            out[name] = loader.load(name, view.function)
    return out


def add_on_demand(table: pa.Table, spec: dict[str, Any], functions: Functions | None = None) -> pa.Table:
    """Append the on-demand columns described by ``spec`` (see :func:`on_demand_spec`) and drop the inputs
    that were joined only to compute them. ``functions`` maps function views to their loaded functions."""
    functions = functions or {}
    for name, info in spec["views"].items():
        view = OnDemandViewPlan.from_dict(info["view"])
        inputs: dict[str, Any] = {}
        for source, field in view.request_fields():
            if field.name not in table.column_names:
                raise OnDemandInputError(
                    f"the entity rows lack the column '{field.name}' ({field.dtype.value}) that on-demand view "
                    f"'{name}' reads as {source}.{field.name}; they have: {', '.join(table.column_names)}"
                )
            inputs[f"{source}.{field.name}"] = table.column(field.name).cast(arrow_type(field.dtype))
        for ref in view.inputs:
            inputs[f"{ref.view}.{ref.feature}"] = table.column(ref.column)
        computed = compute(view, info["features"], inputs, table.num_rows, functions.get(name))
        for feature, values in computed.items():
            table = table.append_column(f"{name}__{feature}", values)
    return table.drop_columns([c for c in spec["hidden"] if c in table.column_names])


def on_demand_spec(views: dict[str, OnDemandViewPlan], features: dict[str, list[str]], hidden: list[str]) -> dict:
    """The JSON-able description of the on-demand work of one training set (it goes into the manifest)."""
    return {
        "views": {name: {"view": views[name].to_dict(), "features": features[name]} for name in features},
        "hidden": hidden,
    }
