"""Computing on-demand features: the one function serving and training sets both call.

Inputs are Arrow arrays named ``<source>.<field>`` (request fields) and ``<view>.<feature>`` (stored features);
every engine builds those from its own data (a request online, a point-in-time joined table offline) and
hands them here, so the same compiled expressions run through the same evaluator everywhere, and the same
plain-Python function runs on the same Arrow-typed inputs, its outputs cast to the same declared types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from features.dtypes import arrow_type
from features.errors import FeatureEvaluationError, OnDemandFunctionError, SkewlessError
from features.expressions import Call
from features.plan import OnDemandViewPlan

if TYPE_CHECKING:
    import pyarrow as pa


def compute(
    view: OnDemandViewPlan,
    features: Sequence[str],
    inputs: Mapping[str, pa.Array],
    length: int,
    function: Callable[..., Any] | None = None,
) -> dict[str, pa.Array]:
    """The requested ``features`` of ``view`` for ``length`` rows of ``inputs``.

    A function view runs ``function`` (loaded and checked by :mod:`features.functions`; by default imported by
    name from the plan).
    """
    if view.function is not None:
        if function is None:
            from features.functions import default_loader

            function = default_loader().load(view.name, view.function)
        outputs = run_function(view, function, inputs, length)
        return {name: outputs[name] for name in features}
    from features.evaluator import evaluate

    out = {}
    for name in features:
        feature = view.feature(name)
        expr = feature.expression
        if expr.dtype is not feature.dtype:  # an int64 expression stored as float64: the documented cast rule
            expr = Call(feature.dtype, "cast", (expr,))
        try:
            out[name] = evaluate(expr, inputs, length)
        except SkewlessError:
            raise
        except Exception as exc:
            raise FeatureEvaluationError(
                f"on-demand feature '{view.name}:{name}' could not be computed: {exc}"
            ) from exc
    return out


def input_table(view: OnDemandViewPlan, inputs: Mapping[str, pa.Array], length: int) -> pa.Table:
    """The table a function view's function reads: its inputs, in declared order, as their plan types."""
    import pyarrow as pa

    if view.function is None:
        raise FeatureEvaluationError(f"on-demand view '{view.name}' has no function")
    columns = {}
    for spec in view.function.inputs:
        values = inputs[spec.name]
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        target = arrow_type(spec.dtype)
        columns[spec.name] = values if values.type == target else values.cast(target)
    table = pa.table(columns)
    if table.num_rows != length:
        raise FeatureEvaluationError(f"on-demand view '{view.name}': {table.num_rows} input rows for {length}")
    return table


def run_function(
    view: OnDemandViewPlan, function: Callable[..., Any], inputs: Mapping[str, pa.Array], length: int
) -> dict[str, pa.Array]:
    """Every output of a function view, cast to its declared Arrow type.

    The function gets a pandas DataFrame (mode ``pandas``, converted with pyarrow's ``to_pandas()``
    defaults: a null int64 or float64 becomes NaN, a null string or bool None) or the ``pyarrow.Table``
    itself (mode ``arrow``), and returns a DataFrame, a Table or a dict of columns. In mode ``pandas`` NaN
    in a float output is read as null (pandas' missing value); in mode ``arrow`` values are taken as given.
    """
    import pyarrow as pa

    table = input_table(view, inputs, length)
    plan = view.function
    assert plan is not None  # input_table checked it
    name = str(plan)

    def fail(message: str, exception: str, output: str | None = None) -> OnDemandFunctionError:
        return OnDemandFunctionError(
            f"on-demand function '{name}' of view '{view.name}' {message}",
            view=view.name,
            function=name,
            exception=exception,
            output=output,
        )

    argument: Any = table if plan.mode == "arrow" else table.to_pandas()
    try:
        result = function(argument)
    except Exception as exc:
        raise fail(f"raised {type(exc).__name__}: {exc}", type(exc).__name__) from exc
    columns = _columns_of(result)
    if columns is None:
        raise fail(
            f"returned a {type(result).__name__}; it must return a pandas DataFrame, a pyarrow Table or a dict "
            f"of columns",
            "TypeError",
        )
    declared = [f.name for f in view.features]
    if sorted(columns) != sorted(declared):
        raise fail(
            f"returned the columns {sorted(columns)}; its outputs are {declared}",
            "KeyError",
        )
    out: dict[str, pa.Array] = {}
    for feature in view.features:
        values = columns[feature.name]
        target = arrow_type(feature.dtype)
        try:
            array = _to_arrow(values, plan.mode)
            if array.type != target:
                array = array.cast(target, safe=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise fail(
                f"returned output '{feature.name}' that cannot be {feature.dtype.value}: {exc}",
                type(exc).__name__,
                feature.name,
            ) from exc
        if len(array) != length:
            raise fail(
                f"returned {len(array)} values for output '{feature.name}', one per input row ({length}) expected",
                "ValueError",
                feature.name,
            )
        out[feature.name] = array
    return out


def _columns_of(result: Any) -> dict[str, Any] | None:
    import pandas as pd
    import pyarrow as pa

    if isinstance(result, pd.DataFrame):
        return {str(c): result[c] for c in result.columns}
    if isinstance(result, pa.Table | pa.RecordBatch):
        return {n: result.column(n) for n in result.column_names}
    if isinstance(result, Mapping):
        return {str(k): v for k, v in result.items()}
    return None


def _to_arrow(values: Any, mode: str) -> pa.Array:
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    # A pandas Series, a numpy array or a list. In mode pandas, NaN is pandas' missing value: null.
    return pa.array(values, from_pandas=mode == "pandas")
