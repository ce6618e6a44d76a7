"""Computing on-demand features: the one function serving and training sets both call.

Inputs are Arrow arrays named ``<source>.<field>`` (request fields) and ``<view>.<feature>`` (stored features);
every engine builds those from its own data (a request online, a point-in-time joined table offline) and
hands them here, so the same compiled expressions run through the same evaluator everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from features.dtypes import DType
from features.errors import SkewlessError
from features.expressions import Call
from features.plan import OnDemandViewPlan

if TYPE_CHECKING:
    import pyarrow as pa


class FeatureEvaluationError(SkewlessError, ValueError):
    """An on-demand feature could not be computed for the given values."""


def arrow_type(dtype: DType) -> Any:
    """The Arrow type every engine uses for a plan type (the evaluator's table, imported lazily)."""
    from features.evaluator import ARROW_TYPES

    return ARROW_TYPES[dtype]


def compute(
    view: OnDemandViewPlan, features: Sequence[str], inputs: Mapping[str, pa.Array], length: int
) -> dict[str, pa.Array]:
    """The requested ``features`` of ``view`` for ``length`` rows of ``inputs``."""
    from features.evaluator import evaluate

    out = {}
    for name in features:
        feature = view.feature(name)
        expr = feature.expr
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
