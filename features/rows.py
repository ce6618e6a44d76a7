"""A view's stored rows computed from its source rows: the one function every path outside Spark uses.

The Arrow engine's materialization (:mod:`offline.arrow.materialize`) and a push (:mod:`features.push`) both
compute a view's rows here, with the one evaluator of row expressions (:mod:`features.evaluator`, held to
Spark's translation by the conformance suite: contract 2), so a pushed value and a materialized one of the same
source row are the same value.
"""

from __future__ import annotations

import pyarrow as pa

from features.dtypes import DType, arrow_type
from features.errors import UnsupportedExpressionError
from features.evaluator import evaluate
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, ViewPlan


def compute_features(view: ViewPlan, source: pa.Table) -> pa.Table:
    """Join keys, features (plan order and types), event_timestamp and created_timestamp of each source row:
    :func:`offline.spark.materialize.compute_features`, with the evaluator instead of Spark's translation."""

    columns = {name: source.column(name) for name in source.column_names}
    n = source.num_rows
    time_type = arrow_type(DType.TIMESTAMP)
    created = view.source.created_column
    out: dict[str, pa.Array | pa.ChunkedArray] = {
        k.name: source.column(k.name).cast(arrow_type(k.dtype)) for k in view.join_keys
    }
    for feature in view.features:
        # Unsafe: an int64 expression stored as float64 rounds to nearest, as Spark's cast does.
        out[feature.name] = evaluate(feature.expression, columns, n).cast(arrow_type(feature.dtype), safe=False)
    out[EVENT_TIMESTAMP] = source.column(view.source.timestamp_column).cast(time_type)
    out[CREATED_TIMESTAMP] = source.column(created).cast(time_type) if created else pa.nulls(n, time_type)
    return pa.table(out)


def refusal(view: ViewPlan) -> str | None:
    """Why :func:`compute_features` does not compute ``view``'s rows as Spark does, or None: keys Spark's
    grouping normalizes (floats: ``-0.0``, NaN), time columns the plan does not type as timestamps (Spark's
    casts define those), an expression the evaluator has no rule for."""
    if any(k.dtype is DType.FLOAT64 for k in view.join_keys):
        return "it is keyed by a float (Spark's grouping normalizes -0.0 and NaN keys)"
    times = [view.source.timestamp_column, *([view.source.created_column] if view.source.created_column else [])]
    dtypes = {c.name: c.dtype for c in view.source.columns}
    if any(dtypes.get(name) is not DType.TIMESTAMP for name in times):
        return "its source's time columns are not timestamps in the plan"
    empty = {c.name: pa.array([], arrow_type(c.dtype)) for c in view.source.columns}
    for feature in view.features:
        try:
            evaluate(feature.expression, empty, 0)
        except UnsupportedExpressionError as exc:
            return f"feature '{feature.name}': {exc}"
    return None
