"""The statistics of a run's rows, per feature: what every engine computes over the rows a materialization wrote
and over the latest rows it handed the online publication, and what a training set's manifest records of the set.

One structure for every engine (Spark computes it in :mod:`offline.spark.stats`, this module computes it from an
Arrow table), stored as JSON with the run in the registry and in a manifest.

Definitions (docs/ARCHITECTURE.md, "Run statistics"):

- ``count`` is the number of rows, ``nulls`` those without a value; for float features ``nan``, ``pos_inf`` and
  ``neg_inf`` count those values. ``min``, ``max``, ``mean``, ``stddev`` (sample, n - 1) and the quantiles are
  over the finite values only; None when there are none (an empty run, an all-null column), ``stddev`` None
  with fewer than two finite values.
- A quantile ``p`` is a value of the data: the smallest ``x`` with at least ``p * n`` finite values ``<= x``
  (rank ``ceil(p * n)``, NumPy's ``inverted_cdf``). Arrow computes it exactly; Spark's ``percentile_approx``
  returns a value whose rank is within ``ceil(n * quantile_rank_error)`` of it.
- Strings and booleans: the :data:`TOP_VALUES` most frequent values with their counts (ties by value, ascending)
  and the number of distinct values (exact in both engines; ``distinct_rsd`` is kept in the stored statistics for
  runs recorded when Spark estimated it with HyperLogLog++). Timestamps: count and nulls only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from features.dtypes import DType

if TYPE_CHECKING:
    import pyarrow as pa

#: The quantiles of every numeric feature, with their names.
QUANTILES: tuple[tuple[str, float], ...] = (
    ("p1", 0.01),
    ("p5", 0.05),
    ("p25", 0.25),
    ("p50", 0.5),
    ("p75", 0.75),
    ("p95", 0.95),
    ("p99", 0.99),
)
#: How many of the most frequent values of a string or boolean feature are kept.
TOP_VALUES = 10
#: Spark's ``percentile_approx`` accuracy A: a quantile's rank is within ``ceil(n / A)`` of the exact one.
SPARK_ACCURACY = 10_000

Value = float | int | str | bool


@dataclass(frozen=True, slots=True)
class FeatureStats:
    """One feature over one set of rows (see the module's definitions)."""

    dtype: str
    count: int
    nulls: int
    nan: int = 0
    pos_inf: int = 0
    neg_inf: int = 0
    min: float | int | None = None
    max: float | int | None = None
    mean: float | None = None
    stddev: float | None = None
    quantiles: dict[str, float | int] = field(default_factory=dict)  # "p50" -> value; empty without values
    top: tuple[tuple[Value, int], ...] = ()  # strings and booleans: (value, rows), most frequent first
    distinct: int | None = None  # strings and booleans

    @property
    def is_numeric(self) -> bool:
        return DType(self.dtype).is_numeric

    @property
    def values(self) -> int:
        """Rows with a finite value (numeric) or a value (others)."""
        return self.count - self.nulls - self.nan - self.pos_inf - self.neg_inf

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype, "count": self.count, "nulls": self.nulls}
        if self.is_numeric:
            out |= {
                "nan": self.nan,
                "pos_inf": self.pos_inf,
                "neg_inf": self.neg_inf,
                "min": self.min,
                "max": self.max,
                "mean": _finite_or_text(self.mean),
                "stddev": _finite_or_text(self.stddev),
                "quantiles": dict(self.quantiles),
            }
        elif self.distinct is not None:
            out |= {"top": [[v, n] for v, n in self.top], "distinct": self.distinct}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureStats:
        return cls(
            dtype=data["dtype"],
            count=data["count"],
            nulls=data["nulls"],
            nan=data.get("nan", 0),
            pos_inf=data.get("pos_inf", 0),
            neg_inf=data.get("neg_inf", 0),
            min=data.get("min"),
            max=data.get("max"),
            mean=_float(data.get("mean")),
            stddev=_float(data.get("stddev")),
            quantiles=dict(data.get("quantiles", {})),
            top=tuple((v, n) for v, n in data.get("top", [])),
            distinct=data.get("distinct"),
        )


@dataclass(frozen=True, slots=True)
class RunStats:
    """The statistics of one run (or one training set: ``written`` is then the set's rows, ``published`` None).

    ``published`` is None when the run published nothing (an offline-only view, an online store that already
    served the version). ``quantile_rank_error`` and ``distinct_rsd`` are the engine's bounds: 0 when exact.
    """

    engine: str
    written: dict[str, FeatureStats]
    published: dict[str, FeatureStats] | None = None
    quantile_rank_error: float = 0.0
    distinct_rsd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "quantile_rank_error": self.quantile_rank_error,
            "distinct_rsd": self.distinct_rsd,
            "written": _features_json(self.written),
            "published": None if self.published is None else _features_json(self.published),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RunStats:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        published = data.get("published")
        return cls(
            engine=data["engine"],
            written=_features_from_json(data["written"]),
            published=None if published is None else _features_from_json(published),
            quantile_rank_error=data.get("quantile_rank_error", 0.0),
            distinct_rsd=data.get("distinct_rsd", 0.0),
        )


def _features_json(features: dict[str, FeatureStats]) -> dict[str, Any]:
    return {name: stats.to_json() for name, stats in features.items()}


def _features_from_json(data: dict[str, Any]) -> dict[str, FeatureStats]:
    return {name: FeatureStats.from_json(stats) for name, stats in data.items()}


def _finite_or_text(value: float | None) -> float | str | None:
    """JSON has no infinity: a mean or stddev that overflowed float64 (values near 1e308) is kept as text."""
    if value is None or math.isfinite(value):
        return value
    return str(value)  # "inf", "-inf", "nan"


def _float(value: float | str | None) -> float | None:
    return None if value is None else float(value)


def empty_stats(dtype: DType) -> FeatureStats:
    """A feature over no rows (an empty run)."""
    categorical = dtype in (DType.STRING, DType.BOOL)
    return FeatureStats(dtype.value, 0, 0, distinct=0 if categorical else None)


def arrow_stats(table: pa.Table, features: list[tuple[str, DType]]) -> dict[str, FeatureStats]:
    """The statistics of ``features`` (name, type) over the rows of ``table``, exactly (quantiles, distinct)."""
    return {name: _column_stats(table.column(name), dtype) for name, dtype in features}


def table_stats(table: pa.Table, columns: list[str]) -> RunStats:
    """The statistics of ``columns`` of an Arrow table (a training set), typed by their Arrow types."""
    import pyarrow as pa

    def dtype(kind: pa.DataType) -> DType:
        if pa.types.is_integer(kind):
            return DType.INT64
        if pa.types.is_floating(kind):
            return DType.FLOAT64
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return DType.STRING
        return DType.BOOL if pa.types.is_boolean(kind) else DType.TIMESTAMP

    return RunStats("arrow", arrow_stats(table, [(c, dtype(table.schema.field(c).type)) for c in columns]))


def _column_stats(column: pa.ChunkedArray, dtype: DType) -> FeatureStats:
    import numpy as np
    import pyarrow.compute as pc

    count, nulls = len(column), column.null_count
    present = pc.drop_null(column)
    if dtype in (DType.STRING, DType.BOOL):
        counted = pc.value_counts(present) if len(present) else None
        pairs = (
            []
            if counted is None
            else list(zip(counted.field(0).to_pylist(), counted.field(1).to_pylist(), strict=True))
        )
        top = tuple(sorted(pairs, key=lambda p: (-p[1], p[0]))[:TOP_VALUES])
        return FeatureStats(dtype.value, count, nulls, top=top, distinct=len(pairs))
    if not dtype.is_numeric:
        return FeatureStats(dtype.value, count, nulls)
    values = present.to_numpy()
    nan = int(np.isnan(values).sum()) if dtype is DType.FLOAT64 else 0
    pos_inf = int(np.isposinf(values).sum()) if dtype is DType.FLOAT64 else 0
    neg_inf = int(np.isneginf(values).sum()) if dtype is DType.FLOAT64 else 0
    finite = values[np.isfinite(values)] if dtype is DType.FLOAT64 else values
    if not len(finite):
        return FeatureStats(dtype.value, count, nulls, nan, pos_inf, neg_inf)
    as_float = finite.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # values near 1e308 overflow the moments: inf, as in Spark
        mean = float(np.mean(as_float))
        stddev = float(np.std(as_float, ddof=1)) if len(finite) > 1 else None
    picked = np.quantile(finite, [p for _, p in QUANTILES], method="inverted_cdf")
    return FeatureStats(
        dtype.value,
        count,
        nulls,
        nan,
        pos_inf,
        neg_inf,
        min=finite.min().item(),
        max=finite.max().item(),
        mean=mean,
        stddev=stddev,
        quantiles={name: value.item() for (name, _), value in zip(QUANTILES, picked, strict=True)},
    )


def served(stats: RunStats) -> dict[str, FeatureStats]:
    """The distribution a run left served: its published latest rows, or the rows it wrote when it published
    nothing (an offline-only view, a version already served)."""
    return stats.published if stats.published is not None else stats.written


def report_rows(columns: list[FeatureStats | None]) -> list[tuple[str, ...]]:
    """One feature's statistics as table rows (statistic, then one cell per column of ``columns``; None: the
    column lacks the feature), the rows that apply to the feature's type."""
    known = [c for c in columns if c is not None]
    numeric = any(c.is_numeric for c in known)
    names = ["rows", "nulls"]
    if numeric:
        names += ["NaN", "+inf", "-inf", "min", *(name for name, _ in QUANTILES), "max", "mean", "stddev"]
    elif any(c.distinct is not None for c in known):
        names += ["distinct", "top values"]
    return [(name, *(_cell(c, name) for c in columns)) for name in names]


def _cell(stats: FeatureStats | None, name: str) -> str:
    if stats is None:
        return ""
    value: Any = {
        "rows": stats.count,
        "nulls": stats.nulls,
        "NaN": stats.nan,
        "+inf": stats.pos_inf,
        "-inf": stats.neg_inf,
        "min": stats.min,
        "max": stats.max,
        "mean": stats.mean,
        "stddev": stats.stddev,
        "distinct": stats.distinct,
        "top values": ", ".join(f"{v!r} {n:,}" for v, n in stats.top[:5]),
    }.get(name, stats.quantiles.get(name))
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
