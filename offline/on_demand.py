"""On-demand features in training sets: the same compiled expressions, through the same evaluator, as serving.

After the point-in-time join, each row holds the stored inputs (``<view>__<feature>``) and the request fields
(entity-row columns named like the fields). :func:`add_on_demand` hands them to
:func:`features.on_demand.compute` as Arrow arrays: on the driver for pandas and Arrow results, inside the
executors (``mapInArrow``) for Spark results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from features.errors import SkewlessError
from features.on_demand import arrow_type, compute
from features.plan import OnDemandViewPlan

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame


class OnDemandInputError(SkewlessError, ValueError):
    """The entity rows lack a request field an on-demand feature needs."""


def add_on_demand(table: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """Append the on-demand columns described by ``spec`` (see :func:`on_demand_spec`) and drop the inputs
    that were joined only to compute them."""
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
        for feature, values in compute(view, info["features"], inputs, table.num_rows).items():
            table = table.append_column(f"{name}__{feature}", values)
    return table.drop_columns([c for c in spec["hidden"] if c in table.column_names])


def add_on_demand_spark(frame: DataFrame, spec: dict[str, Any]) -> DataFrame:
    """:func:`add_on_demand` over a Spark DataFrame, batch by batch in the executors."""
    import pyarrow as pa
    from pyspark.sql import types as T

    from offline.jdbc import spark_type

    fields = [f for f in frame.schema.fields if f.name not in spec["hidden"]]
    for name, info in spec["views"].items():
        view = OnDemandViewPlan.from_dict(info["view"])
        fields += [T.StructField(f"{name}__{f}", spark_type(view.feature(f).dtype)) for f in info["features"]]

    def run(batches: Any) -> Any:
        for batch in batches:
            yield from add_on_demand(pa.Table.from_batches([batch]), spec).to_batches()

    return frame.mapInArrow(run, T.StructType(fields))


def on_demand_spec(views: dict[str, OnDemandViewPlan], features: dict[str, list[str]], hidden: list[str]) -> dict:
    """The JSON-able description of the on-demand work of one training set (it goes into the manifest)."""
    return {
        "views": {name: {"view": views[name].to_dict(), "features": features[name]} for name in features},
        "hidden": hidden,
    }
