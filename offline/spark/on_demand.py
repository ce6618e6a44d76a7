"""On-demand features of training sets joined in Spark: :func:`offline.on_demand.add_on_demand` batch by batch in
the executors (``mapInArrow``), the functions shipped pickled by value (see :mod:`offline.on_demand`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from pyspark import cloudpickle
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from features.plan import OnDemandViewPlan
from offline.on_demand import Functions, add_on_demand
from offline.spark.jdbc import spark_type


def add_on_demand_spark(frame: DataFrame, spec: dict[str, Any], functions: Functions | None = None) -> DataFrame:
    """:func:`add_on_demand` over a Spark DataFrame, batch by batch in the executors."""
    fields = [f for f in frame.schema.fields if f.name not in spec["hidden"]]
    for name, info in spec["views"].items():
        view = OnDemandViewPlan.from_dict(info["view"])
        fields += [T.StructField(f"{name}__{f}", spark_type(view.feature(f).dtype)) for f in info["features"]]

    shipped = _pickle_by_value(dict(functions or {}))

    def run(batches: Any) -> Any:
        loaded = cloudpickle.loads(shipped)
        for batch in batches:
            yield from add_on_demand(pa.Table.from_batches([batch]), spec, loaded).to_batches()

    return frame.mapInArrow(run, T.StructType(fields))


def _pickle_by_value(functions: dict[str, Callable[..., Any]]) -> bytes:
    """The functions pickled with the code of their package (by value: helpers of the same package come
    along), not as references to import; libraries they use (numpy, pandas) are still imported by name."""
    packages = {f.__module__.split(".")[0] for f in functions.values()} - {"__main__"}
    packages -= set(cloudpickle.list_registry_pickle_by_value())  # registered by someone else: leave it so
    registered = []
    try:
        for package in sorted(packages):
            module = sys.modules.get(package)
            if module is not None:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
        return bytes(cloudpickle.dumps(functions))
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)
