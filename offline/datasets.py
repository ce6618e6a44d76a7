"""Point-in-time training sets: what every engine's join shares.

:func:`describe` writes a set's :class:`~offline.manifest.Manifest` before any row is read: what to join and
from which table versions (the current ones, read from the Delta logs without Spark). An engine then joins it
(:meth:`offline.jobs.Engine.training_set`); :func:`add_on_demand_columns` and :func:`attach` are the steps
after the join that are the same whichever engine joined. :class:`offline.router.Router` picks the engine,
writes the set's files and checks a reproduced set's hash.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.functions import FunctionLoader
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, FeatureRefPlan, Plan, ViewPlan
from offline import delta_rs
from offline.manifest import OUTPUT_FORMATS, DatasetError, Manifest, ViewRead
from offline.on_demand import add_on_demand, load_functions, on_demand_spec
from offline.tables import ViewTable, read_through, table_path

if TYPE_CHECKING:
    import pyarrow as pa


def describe(
    config: RepoConfig,
    plan: Plan,
    plan_version: int,
    refs: Sequence[FeatureRefPlan | str],
    *,
    timestamp_column: str = EVENT_TIMESTAMP,
    output_format: str = "pandas",
    pins: Mapping[str, ViewRead] | None = None,
) -> Manifest:
    """The manifest of a training set before any row is read. ``pins``: the table (path and version) to read
    per view instead of the current one (the consistency audit joins the versions live when a value was
    served); a view's features are those of its pin."""
    if output_format not in OUTPUT_FORMATS:
        raise DatasetError(f"unknown output_format {output_format!r}; valid choices: {', '.join(OUTPUT_FORMATS)}")
    resolved = plan.resolve_refs(refs)
    on_demand = [r for r in resolved if plan.is_on_demand(r.view)]
    stored = [r for r in resolved if not plan.is_on_demand(r.view)]
    # Stored inputs of on-demand features are joined too, then dropped unless they were asked for.
    hidden = list(dict.fromkeys(i for r in on_demand for i in plan.on_demand_view(r.view).inputs if i not in stored))
    features: dict[str, list[str]] = {}
    for ref in [*stored, *hidden]:
        features.setdefault(ref.view, []).append(ref.feature)
    views = tuple(
        _view_read(config, plan.view(name), tuple(names))
        if pins is None
        else dataclasses.replace(pins[name], features=tuple(n for n in names if n in pins[name].features))
        for name, names in features.items()
    )
    spec = None
    if on_demand:
        requested: dict[str, list[str]] = {}
        for ref in on_demand:
            requested.setdefault(ref.view, []).append(ref.feature)
        odfvs = {name: plan.on_demand_view(name) for name in requested}
        spec = on_demand_spec(odfvs, requested, [h.column for h in hidden])
    return Manifest(
        created_at=datetime.now(UTC).isoformat(),
        plan_version=plan_version,
        plan_fingerprint=plan.fingerprint,
        refs=tuple(str(r) for r in resolved),
        feature_fingerprints={str(r): plan.feature_plan(r).fingerprint for r in resolved},
        timestamp_column=timestamp_column,
        output_format=output_format,
        views=views,
        on_demand=spec,
    )


def _view_read(config: RepoConfig, view: ViewPlan, features: tuple[str, ...]) -> ViewRead:
    path = table_path(config, view)
    version = delta_rs.latest_version(path)
    if version is None:
        raise DatasetError(f"view '{view.name}' has no offline table yet ({path}); run 'skewless materialize' first")
    read = pinned_read(view, path, version, features)
    if view.is_windowed and read.through is None:
        raise DatasetError(f"view '{view.name}' has no computed ticks yet; run 'skewless materialize' first")
    return read


def pinned_read(view: ViewPlan, path: Path | str, version: int, features: Sequence[str]) -> ViewRead:
    """How a join reads ``features`` of ``view`` from the table at ``path``, pinned at ``version``."""
    return ViewRead(
        name=view.name,
        path=str(path),
        version=version,
        ttl_seconds=view.ttl_seconds,
        storage_fingerprint=view.storage_fingerprint,
        join_keys=tuple((k.name, k.dtype) for k in view.join_keys),
        features=tuple(features),
        through=read_through(path, version) if view.is_windowed else None,
        cadence_seconds=view.cadence_seconds if view.is_windowed else None,
    )


def view_table(read: ViewRead, table: Any) -> ViewTable:
    """What a point-in-time join takes of one view: ``table`` (its rows at the pinned version) and the rule."""
    ttl, valid_until = read.freshness()
    return ViewTable(read.name, read.join_keys, read.features, ttl, table, valid_until)


def table_columns_read(read: ViewRead) -> list[str]:
    """The columns a join reads of a view's table."""
    return [*read.key_names, *read.features, EVENT_TIMESTAMP, CREATED_TIMESTAMP]


def function_loader(config: RepoConfig) -> FunctionLoader:
    """Imports on-demand functions from the repository's definitions, checked against the plan."""
    return FunctionLoader(config.root / config.definitions)


def add_on_demand_columns(config: RepoConfig, manifest: Manifest, table: pa.Table) -> pa.Table:
    """The set with its on-demand features computed (and their hidden inputs dropped), on this process."""
    if manifest.on_demand is None:
        return table
    functions = load_functions(manifest.on_demand, function_loader(config))
    return add_on_demand(table, manifest.on_demand, functions)


def attach(entities: pa.Table, features: pa.Table) -> pa.Table:
    """The entity table as given, with the feature columns appended in row order."""
    table = entities
    for name in features.column_names:
        table = table.append_column(name, features.column(name))
    return table


def as_arrow(entities: Any) -> pa.Table:
    import pandas as pd
    import pyarrow as pa

    if isinstance(entities, pa.Table):
        return entities
    if isinstance(entities, pd.DataFrame):
        return pa.Table.from_pandas(entities, preserve_index=False)
    raise DatasetError(
        f"entities must be a pandas DataFrame, a pyarrow Table or a Spark DataFrame, not {type(entities).__name__}"
    )


def is_spark(frame: Any) -> bool:
    """Whether ``frame`` is a Spark DataFrame (told without importing pyspark)."""
    return type(frame).__module__.startswith("pyspark.")
