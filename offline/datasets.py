"""Point-in-time training sets, their manifests, and reproducing them with Delta time travel.

Every feature table is read pinned at the Delta version current when the set is built. With ``output``, the
set is written as Parquet next to ``<output>.manifest.json`` (plan version and fingerprint, feature
fingerprints, each table path and version read, TTLs and keys, hashes of the entity rows and of the result)
and ``<output>.entities.parquet`` (a copy of the entity rows), which is all :func:`reproduce` needs to
rebuild the identical set later, however much data was materialized since.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.dtypes import DType
from features.errors import EntityKeyError, SkewlessError
from features.functions import FunctionLoader
from features.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, FeatureRefPlan, Plan, ViewPlan
from offline import arrow_join, delta_log
from offline.on_demand import add_on_demand, add_on_demand_spark, load_functions, on_demand_spec
from offline.point_in_time import ROW_ID, ViewInput, point_in_time_join, with_row_id
from offline.tables import read_table, table_path
from offline.windows import read_through

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("pandas", "spark", "arrow")
JOINS = ("auto", "arrow", "spark")
MANIFEST_FORMAT = 1
Spark = Callable[[], "SparkSession"]  # the session, started only when a join needs it


class DatasetError(SkewlessError, ValueError):
    """A training set cannot be built or reproduced as asked."""


def table_sha256(table: pa.Table) -> str:
    """A sha256 of a table's schema and values (Arrow IPC of the combined chunks, without metadata)."""
    import pyarrow as pa

    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def training_dataset(
    spark: Spark,
    config: RepoConfig,
    plan: Plan,
    plan_version: int,
    entities: Any,
    refs: Sequence[FeatureRefPlan | str],
    *,
    timestamp_column: str = EVENT_TIMESTAMP,
    output: str | None = None,
    output_format: str = "pandas",
    join: str = "auto",
) -> Any:
    """Join ``refs`` onto ``entities`` point-in-time; returns pandas, a Spark DataFrame or a pyarrow Table.

    ``entities`` (pandas, pyarrow or Spark) holds the join keys of every referenced view and
    ``timestamp_column``. The columns come back as given, in order, followed by ``<view>__<feature>``.
    ``join`` picks the engine: ``"auto"`` joins in Arrow when :func:`arrow_join_problem` finds none (no Spark
    session is started then), else in Spark; ``"arrow"`` and ``"spark"`` insist. Both give the same set.
    """
    manifest = describe(
        config, plan, plan_version, refs, timestamp_column=timestamp_column, output_format=output_format
    )
    return build(spark, config, manifest, entities, output, join=join)[0]


def describe(
    config: RepoConfig,
    plan: Plan,
    plan_version: int,
    refs: Sequence[FeatureRefPlan | str],
    *,
    timestamp_column: str = EVENT_TIMESTAMP,
    output_format: str = "pandas",
) -> dict[str, Any]:
    """The manifest of a training set before any row is read: what to join, from which table versions (the
    current ones, read from the Delta logs without Spark)."""
    if output_format not in OUTPUT_FORMATS:
        raise DatasetError(f"unknown output_format {output_format!r}; valid choices: {', '.join(OUTPUT_FORMATS)}")
    resolved = plan.resolve_refs(refs)
    on_demand = [r for r in resolved if plan.is_on_demand(r.view)]
    stored = [r for r in resolved if not plan.is_on_demand(r.view)]
    # Stored inputs of on-demand features are joined too, then dropped unless they were asked for.
    hidden = [i for r in on_demand for i in plan.on_demand_view(r.view).inputs if i not in stored]
    hidden = list(dict.fromkeys(hidden))
    views: dict[str, dict[str, Any]] = {}
    for ref in [*stored, *hidden]:
        view = plan.view(ref.view)
        if view.name not in views:
            path = table_path(config, view)
            version = delta_log.latest_version(path)
            if version is None:
                raise DatasetError(
                    f"view '{view.name}' has no offline table yet ({path}); run 'skewless materialize' first"
                )
            views[view.name] = {
                "path": str(path),
                "version": version,
                "ttl_seconds": view.ttl_seconds,
                **_windowed_info(view, path, version),
                "storage_fingerprint": view.storage_fingerprint,
                "join_keys": [k.to_dict() for k in view.join_keys],
                "features": [],
            }
        views[view.name]["features"].append(ref.feature)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "plan_version": plan_version,
        "plan_fingerprint": plan.fingerprint,
        "refs": [str(r) for r in resolved],
        "feature_fingerprints": {str(r): plan.feature_plan(r).fingerprint for r in resolved},
        "timestamp_column": timestamp_column,
        "output_format": output_format,
        "views": views,
    }
    if on_demand:
        requested: dict[str, list[str]] = {}
        for ref in on_demand:
            requested.setdefault(ref.view, []).append(ref.feature)
        odfvs = {name: plan.on_demand_view(name) for name in requested}
        manifest["on_demand"] = on_demand_spec(odfvs, requested, [h.column for h in hidden])
    return manifest


def load_manifest(manifest_path: str) -> dict[str, Any]:
    """A training set's manifest, as written next to it, with its views in the order the set's columns follow.

    The file is written with sorted keys, so its ``views`` come back in name order; the set's columns follow
    the order in which its refs first name each view (then the views only joined as inputs of on-demand
    features, whose columns are dropped). That order is restored here, or a rebuilt set would have its columns
    in another order, and another hash.
    """
    path = Path(manifest_path)
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the manifest {path}: {exc}") from exc
    views = manifest.get("views", {})
    named = dict.fromkeys(ref.partition(":")[0] for ref in manifest.get("refs", []))
    order = [v for v in named if v in views] + [v for v in views if v not in named]
    manifest["views"] = {name: views[name] for name in order}
    return manifest


def reproduce(
    spark: Spark,
    config: RepoConfig,
    plan: Plan,
    manifest_path: str,
    output: str | None = None,
    *,
    join: str = "auto",
) -> Any:
    """Rebuild the training set described by a manifest, reading each table at the recorded version.

    The result equals the original (its sha256 is checked), whichever engine joins it; a :class:`DatasetError`
    says why it cannot be.
    """
    import pyarrow.parquet as pq

    manifest = load_manifest(manifest_path)
    for ref, fingerprint in manifest["feature_fingerprints"].items():
        view_name, _, feature = ref.partition(":")
        try:
            current: str | None = plan.feature_plan(FeatureRefPlan(view_name, feature)).fingerprint
        except SkewlessError:
            current = None
        if current != fingerprint:
            log.warning("feature %s changed since the dataset was built; reproducing the recorded values", ref)
    entities = pq.read_table(manifest["entities"]["path"])
    if table_sha256(entities) != manifest["entities"]["sha256"]:
        raise DatasetError(f"the entity rows in {manifest['entities']['path']} changed since the manifest was written")
    manifest = {**manifest, "created_at": datetime.now(UTC).isoformat()}
    result, table = build(spark, config, manifest, entities, output, join=join)
    if table is None or table_sha256(table) != manifest["result"]["sha256"]:
        raise DatasetError("the reproduced dataset differs from the original (was an old Delta version vacuumed?)")
    return result


def build(
    spark: Spark, config: RepoConfig, manifest: dict[str, Any], entities: Any, output: str | None, *, join: str = "auto"
) -> tuple[Any, pa.Table | None]:
    """Run the join described by ``manifest``; with ``output``, write the set, the entities and the manifest.

    Returns the result in the manifest's output format, and the result as Arrow when it was built in Arrow.
    """
    import pyarrow.parquet as pq

    if join not in JOINS:
        raise DatasetError(f"unknown join {join!r}; valid choices: {', '.join(JOINS)}")
    output_format = manifest["output_format"]
    arrow_entities: pa.Table | None = as_arrow(entities) if not is_spark(entities) else None
    if output is not None:
        if arrow_entities is None:
            arrow_entities = entities.toArrow()
        entities_path = f"{output}.entities.parquet"
        pq.write_table(arrow_entities, entities_path)
        # The copy on disk is the canonical entity table: what reproduce() will read back.
        arrow_entities = pq.read_table(entities_path)
        manifest["entities"] = {
            "path": str(Path(entities_path).resolve()),
            "sha256": table_sha256(arrow_entities),
            "rows": arrow_entities.num_rows,
        }
    _check_entity_columns(manifest, arrow_entities.column_names if arrow_entities is not None else entities.columns)
    snapshots = _arrow_snapshots(config, manifest, arrow_entities) if join != "spark" else "join='spark' was asked"
    if isinstance(snapshots, str) and join == "arrow":
        raise DatasetError(f"this training set cannot be joined in Arrow: {snapshots}")
    functions = load_functions(manifest["on_demand"], function_loader(config)) if "on_demand" in manifest else {}
    if isinstance(snapshots, dict):
        assert arrow_entities is not None  # _arrow_snapshots() only accepts Arrow entity rows
        log.info("joining the training set in Arrow")
        manifest["joined_in"] = "arrow"
        table = _attach(arrow_entities, _join_in_arrow(manifest, arrow_entities, snapshots))
    else:
        log.info("joining the training set in Spark: %s", snapshots)
        manifest["joined_in"] = "spark"
        joined = _join(spark(), manifest, arrow_entities if arrow_entities is not None else entities)
        if arrow_entities is None:  # Spark in, no output: stay in Spark
            frame = joined.orderBy(ROW_ID).drop(ROW_ID)  # the entity rows' order, as with the other inputs
            if "on_demand" in manifest:
                frame = add_on_demand_spark(frame, manifest["on_demand"], functions)
            return {"spark": lambda: frame, "pandas": frame.toPandas, "arrow": frame.toArrow}[output_format](), None
        table = _attach(arrow_entities, _collect(joined, manifest, arrow_entities.num_rows))
    if "on_demand" in manifest:
        table = add_on_demand(table, manifest["on_demand"], functions)
    if output is not None:
        pq.write_table(table, output)
        manifest["result"] = {
            "path": str(Path(output).resolve()),
            "sha256": table_sha256(table),
            "rows": table.num_rows,
        }
        Path(f"{output}.manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if output_format == "arrow":
        return table, table
    if output_format == "pandas":
        return table.to_pandas(), table
    return spark().createDataFrame(table), table


def arrow_join_problem(config: RepoConfig, manifest: dict[str, Any], entities: Any) -> str | None:
    """Why the training set of ``manifest`` cannot be joined in Arrow (for the log), or None when it can.

    Arrow joins when the entity rows are pandas or Arrow with key and time columns of plain types (an integer,
    string, boolean or timestamp column, as the key needs; Spark's casts of anything else are left to Spark),
    no view is keyed by a float, every table is one :mod:`offline.delta_log` reads, and the tables at the
    versions read total at most ``offline.arrow_join_max_mb``.
    """
    if is_spark(entities):
        return "the entity rows are a Spark DataFrame"
    problem = _arrow_snapshots(config, manifest, as_arrow(entities))
    return problem if isinstance(problem, str) else None


def can_reproduce_in_arrow(config: RepoConfig, manifest_path: str) -> bool:
    """Whether the set of a manifest can be rebuilt in Arrow (an unreadable manifest or entity file: no, and the
    Spark path reports why)."""
    import pyarrow.parquet as pq

    try:
        manifest = load_manifest(manifest_path)
        entities = pq.read_schema(manifest["entities"]["path"]).empty_table()
        return isinstance(_arrow_snapshots(config, manifest, entities), dict)
    except (SkewlessError, OSError, KeyError, ValueError):
        return False


def _arrow_snapshots(
    config: RepoConfig, manifest: dict[str, Any], entities: pa.Table | None
) -> dict[str, delta_log.Snapshot] | str:
    """The snapshot of every view's table when the set can be joined in Arrow; otherwise why not. Entity rows
    without a column the join needs raise :class:`EntityKeyError` (whichever engine would join them)."""
    import pyarrow as pa

    if entities is None:
        return "the entity rows are a Spark DataFrame"
    if manifest["output_format"] == "spark":
        return "the result is asked as a Spark DataFrame"
    if config.arrow_join_max_mb == 0:
        return "offline.arrow_join_max_mb is 0"
    _check_entity_columns(manifest, entities.column_names)
    schema = entities.schema
    accepts: dict[DType, Callable[[pa.DataType], bool]] = {
        DType.INT64: lambda t: pa.types.is_integer(t) and t != pa.uint64(),
        DType.STRING: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        DType.BOOL: pa.types.is_boolean,
        DType.TIMESTAMP: pa.types.is_timestamp,
    }
    time_type = schema.field(manifest["timestamp_column"]).type
    if not pa.types.is_timestamp(time_type):
        return f"the time column {manifest['timestamp_column']!r} is {time_type}, not a timestamp"
    snapshots, size = {}, 0
    for name, info in manifest["views"].items():
        for key in info["join_keys"]:
            dtype, column_type = DType(key["dtype"]), schema.field(key["name"]).type
            if dtype not in accepts or not accepts[dtype](column_type):
                return f"view '{name}' has a {dtype.value} key and the entity column {key['name']!r} is {column_type}"
        try:
            snapshots[name] = delta_log.snapshot(info["path"], info["version"])
        except (delta_log.UnsupportedTable, OSError) as exc:
            return f"view '{name}': {exc}"
        size += snapshots[name].size
    if size > config.arrow_join_max_mb * 2**20:
        limit = config.arrow_join_max_mb
        return f"the feature tables hold {size / 2**20:,.0f} MiB, over offline.arrow_join_max_mb ({limit})"
    return snapshots


def _check_entity_columns(manifest: dict[str, Any], columns: Sequence[str]) -> None:
    for name, info in manifest["views"].items():
        needed = [*(k["name"] for k in info["join_keys"]), manifest["timestamp_column"]]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise EntityKeyError(
                f"the entity rows lack column(s) {', '.join(missing)} needed by view '{name}'; "
                f"they have: {', '.join(c for c in columns if c != ROW_ID)}"
            )


def _freshness(info: dict[str, Any]) -> tuple[int | None, datetime | None]:
    """A view's TTL in seconds and, for a windowed view, when its values stop being fresh (its TTL counts from
    the last tick computed instead of from each row's event time)."""
    if "through" not in info:
        return info["ttl_seconds"], None
    if info["ttl_seconds"] is None:
        return None, None
    return None, datetime.fromisoformat(info["through"]) + timedelta(seconds=info["ttl_seconds"])


def _join_in_arrow(manifest: dict[str, Any], entities: pa.Table, snapshots: dict[str, delta_log.Snapshot]) -> pa.Table:
    """The feature columns, joined one view at a time so that only one view's table is in memory at once."""
    import pyarrow as pa

    joined: dict[str, pa.ChunkedArray] = {}
    for name, info in manifest["views"].items():
        keys = tuple((k["name"], DType(k["dtype"])) for k in info["join_keys"])
        columns = [*(k for k, _ in keys), *info["features"], EVENT_TIMESTAMP, CREATED_TIMESTAMP]
        try:
            table = arrow_join.read_snapshot(snapshots[name], columns)
        except Exception as exc:
            raise DatasetError(
                f"cannot read view '{name}' at version {info['version']} from {info['path']}: {exc}"
            ) from exc
        ttl, valid_until = _freshness(info)
        view = arrow_join.ArrowView(name, keys, tuple(info["features"]), ttl, table, valid_until)
        result = arrow_join.point_in_time_join(entities, manifest["timestamp_column"], [view])
        joined.update(zip(result.column_names, result.columns, strict=True))
        del table, view, result  # before the next view's table is read
    return pa.table(joined)


def function_loader(config: RepoConfig) -> FunctionLoader:
    """Imports on-demand functions from the repository's definitions, checked against the plan."""
    return FunctionLoader(config.root / config.definitions)


def _join(spark: SparkSession, manifest: dict[str, Any], entities: Any) -> DataFrame:
    """The Spark point-in-time join of ``entities`` (arrow with row order, or Spark) per the manifest.

    Arrow entity rows go to Spark with only the columns the join needs (keys, time, a row id); their other
    columns (labels, ...) are attached again on the driver by :func:`_attach`.
    """
    import pyarrow as pa

    timestamp_column = manifest["timestamp_column"]
    needed: dict[str, None] = {}
    for info in manifest["views"].values():
        needed.update(dict.fromkeys([*(k["name"] for k in info["join_keys"]), timestamp_column]))
    if isinstance(entities, pa.Table):
        # Row ids from the Arrow row order, so the result aligns with the input without relying on Spark.
        narrow = entities.select(list(needed))
        frame = spark.createDataFrame(narrow.append_column(ROW_ID, pa.array(range(narrow.num_rows), pa.int64())))
    else:
        frame = with_row_id(entities)
    inputs = []
    for name, info in manifest["views"].items():
        keys = tuple((k["name"], DType(k["dtype"])) for k in info["join_keys"])
        try:
            table = read_table(spark, info["path"], info["version"])
            table = table.select(*(k for k, _ in keys), *info["features"], EVENT_TIMESTAMP, CREATED_TIMESTAMP)
        except Exception as exc:
            raise DatasetError(
                f"cannot read view '{name}' at version {info['version']} from {info['path']}: {exc}"
            ) from exc
        ttl, valid_until = _freshness(info)
        inputs.append(ViewInput(name, keys, tuple(info["features"]), ttl, table, valid_until))
    return point_in_time_join(frame, timestamp_column, inputs)


def _windowed_info(view: ViewPlan, path: Path, version: int) -> dict[str, Any]:
    """For a windowed view, the last tick its table covers at ``version`` (values count as fresh from there)."""
    if not view.is_windowed:
        return {}
    through = read_through(path, version)
    if through is None:
        raise DatasetError(f"view '{view.name}' has no computed ticks yet; run 'skewless materialize' first")
    return {"through": through.isoformat(), "cadence_seconds": view.cadence_seconds}


def _collect(joined: DataFrame, manifest: dict[str, Any], rows: int) -> pa.Table:
    """The feature columns of the Spark join, in the entity rows' order."""
    columns = [f"{name}__{f}" for name, info in manifest["views"].items() for f in info["features"]]
    features = joined.select(ROW_ID, *(f"`{c}`" for c in columns)).toArrow().sort_by(ROW_ID)
    if features.num_rows != rows:
        raise DatasetError(f"internal error: {features.num_rows} result rows for {rows} entity rows")
    return features.drop_columns([ROW_ID])


def _attach(entities: pa.Table, features: pa.Table) -> pa.Table:
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
