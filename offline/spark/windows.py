"""Windowed aggregations: source rows → tiles → the value of every window at every tick.

The contract (docs/ARCHITECTURE.md, "Windowed aggregations"): ticks are the multiples of the view's cadence
since the Unix epoch (UTC). The value at tick ``T`` of a window ``w`` aggregates the rows with
``T - w < event time <= T`` that pass the filter, skipping null inputs; an empty window gives 0 for count and
count_distinct and null for the others; an unbounded window takes every row up to ``T``.

How it is computed, so that a run over one new day reads one day of source rows:

1. **Tiles.** Source rows are grouped per entity into tiles of ``g`` seconds (``g`` = the gcd of the cadence
   and every finite window, so every window is a whole number of tiles and every tick ends a tile). A tile
   holds partial aggregates (count, sum, sum of squares, min, max, first, last, distinct values). Tiles live
   in their own Delta table beside the feature table and are rewritten per range (``replaceWhere``).
2. **Values at ticks.** The value of a window at tick ``T`` combines the tiles in ``(T - w, T]``. Rows are
   written only at the ticks where a value can change: where a tile enters a window (the first tick at or
   after it) or leaves one (the first tick at or after ``tile + w``). Between two written ticks every value is
   unchanged, so "the latest row at or before ``t``" is the value at the latest tick ``<= t``, exactly what
   the point-in-time join and the online publication already read.
3. **Coverage.** Each feature-table commit records in its Delta ``userMetadata`` the last tick it covers
   (``through``). Tiles are committed first, values second, so after a crash the recorded ``through`` is never
   ahead of the tiles; a rerun recomputes from there and, writes being per range, ends in the same state.

Float sums are float64 additions in Spark's order (not fixed: within the usual bound of (n-1)·2^-53·Σ|x| of
the exact sum); mean is sum / count; stddev is the sample standard deviation (null below two values) merged
from per-tile central moments. Integer sums are exact (decimal) and null when they leave int64. Training and
serving cannot disagree on these values: the online store publishes the rows stored here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from features.dtypes import DType, from_micros, to_micros
from features.expressions import Expr
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, PUBLISHED_AT, FeaturePlan, ViewPlan
from offline import delta_rs
from offline.spark.jdbc import quote_spark, spark_type
from offline.spark.tables import table_schema
from offline.spark.translate import SparkTranslator
from offline.tables import THROUGH_KEY

log = logging.getLogger(__name__)

TILE = "__tile"  # tile index: the tile covers ((TILE - 1) * g, TILE * g] seconds since the epoch
_MICROSECOND = timedelta(microseconds=1)


def tile_seconds(view: ViewPlan) -> int:
    """The tile size: the gcd of the cadence and every finite window."""
    assert view.cadence_seconds is not None
    size = view.cadence_seconds
    for feature in view.features:
        if feature.aggregation is not None and feature.aggregation.window_seconds is not None:
            size = math.gcd(size, feature.aggregation.window_seconds)
    return size


def floor_tick(view: ViewPlan, moment: datetime) -> datetime:
    """The latest tick at or before ``moment``."""
    assert view.cadence_seconds is not None
    micros = to_micros(moment)
    step = view.cadence_seconds * 1_000_000
    return from_micros(micros - micros % step)


def tiles_path(feature_table: Path | str) -> str:
    """The tiles table of a feature table: a sibling folder, so the feature table's folder is Delta only."""
    return f"{feature_table}.tiles"


@dataclass(frozen=True, slots=True)
class TickRange:
    """The ticks a run computes, ``(start, end]`` (``start`` None: from the first row), and the source rows it
    reads, those with ``start < event time <= end``."""

    start: datetime | None
    end: datetime

    @property
    def empty(self) -> bool:
        return self.start is not None and self.start >= self.end


def plan_ticks(
    view: ViewPlan, through: datetime | None, start: datetime | None, end: datetime | None, now: datetime
) -> TickRange:
    """Which ticks a run recomputes.

    The first run computes everything up to ``end`` (windows need the history before ``start``). Later runs
    continue from the recorded ``through``, or from an earlier ``start`` to take late rows in (then up to at
    least ``through``, so no stored tick is left computed from replaced tiles).
    """
    last = floor_tick(view, end if end is not None else now)
    if through is None:
        return TickRange(None, last)
    first = through if start is None else min(floor_tick(view, start), through)
    return TickRange(first, max(last, through))


@dataclass(frozen=True, slots=True)
class _Input:
    """One distinct (input expression, filter) pair and the partial aggregates its features need."""

    index: int
    expr: Expr
    filter: Expr | None
    functions: frozenset[str]

    def column(self, state: str) -> str:
        return f"__i{self.index}_{state}"


def _inputs(view: ViewPlan) -> tuple[list[_Input], dict[str, _Input]]:
    groups: dict[tuple[str, str], list[FeaturePlan]] = {}
    for feature in view.features:
        assert feature.aggregation is not None
        key = (json.dumps(feature.expression.to_dict()), json.dumps(_filter_dict(feature)))
        groups.setdefault(key, []).append(feature)
    inputs: list[_Input] = []
    by_feature: dict[str, _Input] = {}
    for index, members in enumerate(groups.values()):
        first = members[0]
        assert first.aggregation is not None
        functions = frozenset(f.aggregation.function for f in members if f.aggregation is not None)
        item = _Input(index, first.expression, first.aggregation.filter, functions)
        inputs.append(item)
        by_feature.update({f.name: item for f in members})
    return inputs, by_feature


def _filter_dict(feature: FeaturePlan) -> object:
    assert feature.aggregation is not None
    return None if feature.aggregation.filter is None else feature.aggregation.filter.to_dict()


def build_tiles(view: ViewPlan, source: DataFrame) -> DataFrame:
    """Partial aggregates per entity and tile of the source rows (rows without keys or event time dropped)."""

    translator = SparkTranslator()
    src = view.source
    keys = [F.col(quote_spark(k)).alias(k) for k in view.key_names]
    event = F.col(quote_spark(src.timestamp_column)).cast("timestamp")
    created = (F.col(quote_spark(src.created_column)) if src.created_column else F.lit(None)).cast("timestamp")
    inputs, _ = _inputs(view)
    values = []
    for item in inputs:
        value = translator.translate(item.expr)
        if item.filter is not None:
            value = F.when(translator.translate(item.filter), value)  # null (skipped) unless the filter is true
        values.append(value.alias(item.column("v")))
    step = tile_seconds(view) * 1_000_000
    micros = F.unix_micros(F.col("__e"))
    # The tile of an event at e is ceil(e / g): an event exactly on a tick belongs to the window ending there.
    tile = (micros - F.pmod(micros, F.lit(step))) / F.lit(step) + F.when(F.pmod(micros, F.lit(step)) != 0, 1).otherwise(
        0
    )
    rows = source.select(*keys, event.alias("__e"), created.alias("__c"), *values).withColumn(TILE, tile.cast("long"))
    valid = F.col("__e").isNotNull()
    for k in view.key_names:
        valid = valid & F.col(quote_spark(k)).isNotNull()
    rows = rows.where(valid)
    states: list[Column] = []
    for item in inputs:
        v = F.col(item.column("v"))
        needs = item.functions
        states.append(F.count(v).alias(item.column("n")))
        if needs & {"sum", "mean", "stddev"}:
            integral = item.expr.dtype is DType.INT64
            total = F.sum(v.cast("decimal(38,0)")) if integral else F.sum(v.cast("double"))
            states.append(total.alias(item.column("s")))
        if "stddev" in needs:  # per tile: mean and sum of squared deviations (Spark's central moments, stable)
            states.append(F.avg(v.cast("double")).alias(item.column("mean")))
            states.append((F.var_pop(v.cast("double")) * F.count(v)).alias(item.column("m2")))
        if "min" in needs:
            states.append(F.min(v).alias(item.column("min")))
        if "max" in needs:
            states.append(F.max(v).alias(item.column("max")))
        ordered = F.when(v.isNotNull(), F.struct(F.col("__e").alias("e"), F.col("__c").alias("c"), v.alias("v")))
        if "last" in needs:
            states.append(F.max(ordered).alias(item.column("last")))
        if "first" in needs:
            states.append(F.min(ordered).alias(item.column("first")))
        if "count_distinct" in needs:
            states.append(F.collect_set(v).alias(item.column("set")))
    return rows.groupBy(*(F.col(quote_spark(k)) for k in view.key_names), F.col(TILE)).agg(*states)


def write_tiles(spark: SparkSession, path: str, tiles: DataFrame, ticks: TickRange, view: ViewPlan) -> None:
    """Replace the tiles of ``ticks`` in one Delta commit."""
    step = tile_seconds(view)
    upper = to_micros(ticks.end) // (step * 1_000_000)
    condition = f"{TILE} <= {upper}"
    if ticks.start is not None:
        condition = f"{TILE} > {to_micros(ticks.start) // (step * 1_000_000)} AND {condition}"
    (tiles.write.format("delta").mode("overwrite").option("replaceWhere", condition).save(path))


def values_at_ticks(spark: SparkSession, view: ViewPlan, tiles: DataFrame, ticks: TickRange) -> DataFrame:
    """Feature rows at every tick of ``ticks`` where a value can change, from the tiles table's rows."""

    assert view.cadence_seconds is not None
    step = tile_seconds(view)
    per_tick = view.cadence_seconds // step  # tiles per cadence
    windows = {f.aggregation.window_seconds for f in view.features if f.aggregation is not None}
    finite = sorted(w // step for w in windows if w is not None)
    lo = None if ticks.start is None else to_micros(ticks.start) // (step * 1_000_000)
    hi = to_micros(ticks.end) // (step * 1_000_000)
    keys = [F.col(quote_spark(k)) for k in view.key_names]

    relevant = tiles.where(F.col(TILE) <= hi)
    if lo is not None and None not in windows:  # unbounded windows need every tile; finite ones a bounded past
        relevant = relevant.where(F.col(TILE) > lo - (max(finite) if finite else 0))

    def next_tick(tile: Column) -> Column:
        return (F.ceil(tile / F.lit(per_tick)) * F.lit(per_tick)).cast("long")

    # Ticks where a tile enters a window, and where it leaves each finite window.
    shifts = [0, *finite]
    candidates = relevant.select(*keys, F.explode(F.array(*(next_tick(F.col(TILE) + s) for s in shifts))).alias(TILE))
    in_range = F.col(TILE) <= hi
    if lo is not None:
        in_range = in_range & (F.col(TILE) > lo)
    candidates = candidates.where(in_range).distinct()
    state_columns = [c for c in relevant.columns if c not in (*view.key_names, TILE)]
    extra = candidates.join(relevant.select(*keys, TILE), on=[*view.key_names, TILE], how="left_anti")
    extra = extra.select(
        *keys, F.col(TILE), *(F.lit(None).cast(relevant.schema[c].dataType).alias(c) for c in state_columns)
    )
    stacked = relevant.unionByName(extra)

    _, by_feature = _inputs(view)
    ordered = Window.partitionBy(*keys).orderBy(F.col(TILE))
    outputs = []
    for feature in view.features:
        assert feature.aggregation is not None
        window_seconds = feature.aggregation.window_seconds
        frame = (
            ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
            if window_seconds is None
            else ordered.rangeBetween(-(window_seconds // step - 1), 0)
        )
        column = _aggregate(feature, by_feature[feature.name], frame)
        outputs.append(column.cast(spark_type(feature.dtype)).alias(feature.name))
    tick_time = F.timestamp_micros(F.col(TILE) * F.lit(step * 1_000_000))
    result = stacked.select(*keys, F.col(TILE), *outputs).where(in_range & (F.col(TILE) % per_tick == 0))
    return result.select(
        *keys,
        *(F.col(quote_spark(f.name)) for f in view.features),
        tick_time.alias(EVENT_TIMESTAMP),
        F.lit(None).cast("timestamp").alias(CREATED_TIMESTAMP),
    )


def _aggregate(feature: FeaturePlan, item: _Input, frame: object) -> Column:
    """One feature's value over ``frame`` of tiles, from the tiles' partial aggregates."""

    assert feature.aggregation is not None
    function = feature.aggregation.function

    def over(column: Column) -> Column:
        return column.over(frame)  # type: ignore[arg-type]

    n = over(F.sum(F.col(item.column("n"))))
    if function == "count":
        return F.coalesce(n, F.lit(0).cast("long"))
    if function == "sum":
        total = over(F.sum(F.col(item.column("s"))))
        return total.try_cast("bigint") if feature.dtype is DType.INT64 else total
    if function == "mean":
        return F.when(n > 0, over(F.sum(F.col(item.column("s")))).cast("double") / n)
    if function == "stddev":
        return _stddev(item, over)
    if function == "min":
        return over(F.min(F.col(item.column("min"))))
    if function == "max":
        return over(F.max(F.col(item.column("max"))))
    if function == "last":
        return over(F.max(F.col(item.column("last"))))["v"]
    if function == "first":
        return over(F.min(F.col(item.column("first"))))["v"]
    if function == "count_distinct":
        return F.size(F.array_distinct(F.flatten(over(F.collect_list(F.col(item.column("set")))))))
    raise ValueError(f"unknown aggregation {function!r}")


def _stddev(item: _Input, over: Callable[[Column], Column]) -> Column:
    """Sample standard deviation: the tiles' (count, mean, M2) merged pairwise (Chan et al.), in tile order.

    Merging central moments instead of subtracting sums of squares keeps the precision when the mean is large
    compared with the spread. NaN when the window holds a NaN or an infinity, or when the squared deviations
    overflow float64 (a spread beyond ~1e154); null below two values.
    """

    n_i = F.col(item.column("n")).cast("double")
    tile = F.when(
        n_i > 0, F.struct(n_i.alias("n"), F.col(item.column("mean")).alias("m"), F.col(item.column("m2")).alias("q"))
    )
    zero = F.struct(F.lit(0.0).alias("n"), F.lit(0.0).alias("m"), F.lit(0.0).alias("q"))

    def merge(acc: Column, x: Column) -> Column:
        n = acc["n"] + x["n"]
        delta = x["m"] - acc["m"]
        merged = F.struct(
            n.alias("n"),
            (acc["m"] + delta * x["n"] / n).alias("m"),
            (acc["q"] + x["q"] + delta * delta * acc["n"] * x["n"] / n).alias("q"),
        )
        return F.when(acc["n"] == 0, x).otherwise(merged)

    total = F.aggregate(over(F.collect_list(tile)), zero, merge)
    finite = ~F.isnan(total["q"]) & ~F.isnan(total["m"]) & (F.abs(total["q"]) != float("inf"))
    finite = finite & (F.abs(total["m"]) != float("inf"))
    value = F.when(finite, F.sqrt(total["q"] / (total["n"] - 1))).otherwise(F.lit(float("nan")))
    return F.when(total["n"] >= 2, value)


def write_values(
    spark: SparkSession, path: Path | str, view: ViewPlan, rows: DataFrame, ticks: TickRange, published_at: datetime
) -> None:
    """Replace the feature rows of ``ticks`` in one Delta commit that records ``through`` = ``ticks.end``.

    Spark commits nothing for a replacement that adds and removes no file (no value changed at any of the
    ticks): then a commit of the metadata alone records ``through``, so the ticks count as computed (readers serve
    the unchanged values as of ``ticks.end``, TTLs count from it; training sets cover it)."""

    schema = table_schema(view)
    DeltaTable.createIfNotExists(spark).location(str(path)).addColumns(schema).execute()
    before = delta_rs.latest_version(path)
    frame = rows.select(
        *(F.col(quote_spark(f.name)) for f in schema.fields if f.name != PUBLISHED_AT),
        F.lit(published_at).cast("timestamp").alias(PUBLISHED_AT),
    )
    condition = f"{EVENT_TIMESTAMP} <= '{_sql(ticks.end)}'"
    if ticks.start is not None:
        condition = f"{EVENT_TIMESTAMP} > '{_sql(ticks.start)}' AND {condition}"
    metadata = json.dumps({THROUGH_KEY: ticks.end.isoformat()})
    (
        frame.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", condition)
        .option("userMetadata", metadata)
        .save(str(path))
    )
    if before is not None and delta_rs.latest_version(path) == before:
        # Only after ``before``, with no retry: when another writer commits meanwhile, this commit fails (a
        # conflict, as a concurrent write of values would) rather than record ticks over its commit.
        delta_rs.record(delta_rs.snapshot(path, before), metadata)


def source_bounds(ticks: TickRange) -> tuple[datetime | None, datetime]:
    """``read_source`` reads ``start <= t < end``; tiles need ``start < t <= end``: shift both by 1 µs."""
    return (None if ticks.start is None else ticks.start + _MICROSECOND), ticks.end + _MICROSECOND


def _sql(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
