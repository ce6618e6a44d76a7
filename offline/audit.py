"""The offline layers of the consistency audit (see :mod:`features.audit` for the comparison).

For the logged lookups, the training-set point-in-time join (the real one: :class:`offline.router.Router`
chooses the engine, as for any training set) with entity rows = the logged keys, ``event_timestamp`` = when each
was served, and the logged request fields as columns (so on-demand features are computed by the same code):

- on a manifest pinning, per view, the Delta version live at ``served_at`` (the latest committed at or before
  it): what was published then;
- on the latest versions: the event-time answer a training set built now gives;
- on tables recomputed from the sources now into a scratch offline path (the router's materialization, no
  online store, nothing recorded in the registry).

Log rows are grouped by the plan version that served them, the features they hold and the tuple of pinned
versions, one join per group. The join gives values only; the event time of the row it took (shown in the
report's examples, and used to tell a changed source row from a late one) is read from the same pinned table.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from features.audit import (
    CAUSE_FUNCTION,
    CAUSE_NOT_MATERIALIZED,
    CAUSE_OVERWRITTEN,
    CAUSE_REAPPLIED,
    CAUSE_SNAPSHOT,
    FeatureLayers,
    Rollback,
)
from features.config import RepoConfig
from features.dtypes import DType, arrow_type, from_micros
from features.errors import AuditInputError
from features.plan import EVENT_TIMESTAMP, FeatureRefPlan, Plan, ViewPlan
from features.served_log import decode_value
from offline import delta_rs
from offline.datasets import describe, pinned_read
from offline.manifest import Manifest, ViewRead
from offline.tables import commit_time, read_through, table_path

if TYPE_CHECKING:
    import pyarrow as pa

Join = Callable[[Manifest, "pa.Table"], "pa.Table"]
PROBE = "_skewless_probe"  # the entity rows' column that numbers the logged lookups' entities


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    """One logged entity of one lookup: its keys, request fields, when it was served and by which plan."""

    entity: str
    request_data: str | None
    served_at: datetime
    plan_version: int


@dataclasses.dataclass(slots=True)
class _Value:
    status: str
    value: Any
    event: datetime | None


def audit_layers(
    config: RepoConfig,
    plan: Plan,
    plan_version: int,
    log: pa.Table,
    *,
    join: Join,
    logged_plans: Mapping[int, Plan],
    watermarks: Mapping[str, int | None],
    recompute: Callable[[RepoConfig, Plan, ViewPlan], None] | None,
    rollbacks: Mapping[str, Sequence[Rollback]] | None = None,
) -> list[FeatureLayers]:
    """The layers of every logged feature. ``join`` runs a training-set join of a manifest; ``logged_plans``:
    every plan version the log names; ``watermarks``: the Delta version each view's live online snapshot was
    published from; ``recompute`` materializes a view into another config's offline path (None: no layer 3);
    ``rollbacks``: per view, when a rollback held it and which Delta version it served then (a lookup in that
    time is compared with that version: what was published, not the newest committed)."""
    probes, values = _read_log(log)
    features = sorted({feature for per in values for feature in per})
    refs = _refs(plan, features)
    decode_served(plan, values)
    stored_views = _stored_views(plan, refs)
    history = {view.name: _History(table_path(config, view)) for view in stored_views}
    logged_history: dict[tuple[str, str], _History] = {}

    def logged_table(view: ViewPlan, version: int) -> _History:
        old = logged_plans[version].view(view.name) if view.name in logged_plans[version].view_names() else view
        key = (view.name, old.storage_fingerprint)
        if key not in logged_history:
            logged_history[key] = _History(table_path(config, old))
        return logged_history[key]

    # -- layer 2: at t and at the latest versions ----------------------------------------------------------------
    stored: dict[tuple[int, str], tuple[Any, datetime | None]] = {}
    latest: dict[tuple[int, str], tuple[Any, datetime | None]] = {}
    unavailable: set[tuple[int, str]] = set()  # (probe, feature) the current definition has no table for
    groups: dict[tuple[Any, ...], list[int]] = {}
    rolled: set[tuple[int, str]] = set()  # (probe, view) served while a rollback held the view
    for index, probe in enumerate(probes):
        asked = tuple(sorted(values[index]))
        pins: list[tuple[str, str, int | None]] = []
        for view in stored_views:
            current = history[view.name].live_at(probe.served_at)
            held = _held_at((rollbacks or {}).get(view.name, ()), probe.served_at)
            if held is not None:
                current = held
                rolled.add((index, view.name))
            if current is not None:
                pins.append((view.name, "current", current))
            else:  # the current definition had no table at t: the served plan's table, for its unchanged features
                older = logged_table(view, probe.plan_version)
                pins.append((view.name, "logged", older.live_at(probe.served_at)))
        groups.setdefault((probe.plan_version, asked, tuple(pins)), []).append(index)
    for (served_version, asked, pins), members in groups.items():
        reads = []
        changed: set[str] = set()
        for (name, which, version), view in zip(pins, stored_views, strict=True):
            if which == "current" and version is not None:
                reads.append(pinned_read(view, history[name].path, version, view.feature_names))
                continue
            old_plan = logged_plans[served_version]
            same_features = tuple(
                f.name
                for f in view.features
                if name in old_plan.view_names() and _fingerprint(old_plan, name, f.name) == f.fingerprint
            )
            changed.update(f"{name}__{f.name}" for f in view.features if f.name not in same_features)
            if version is not None and same_features:
                served_view = old_plan.view(name)  # its table is named by the served definition's fingerprint
                reads.append(pinned_read(served_view, logged_table(view, served_version).path, version, same_features))
        for feature in asked:
            if _depends_on(plan, feature, changed):
                unavailable.update((index, feature) for index in members)
        at_t = _join_group(config, plan, plan_version, refs, asked, probes, members, reads, join, unavailable)
        stored.update(at_t)
        newest = [dataclasses.replace(r, version=delta_rs.latest_version(r.path) or r.version) for r in reads]
        newest = [
            dataclasses.replace(r, through=read_through(r.path, r.version)) if r.through is not None else r
            for r in newest
        ]
        latest.update(_join_group(config, plan, plan_version, refs, asked, probes, members, newest, join, unavailable))

    # -- layer 3: recomputed from the sources now ----------------------------------------------------------------
    recomputed: dict[tuple[int, str], tuple[Any, datetime | None]] | None = None
    if recompute is not None:
        recomputed = {}
        with tempfile.TemporaryDirectory(prefix="skewless-audit-") as scratch:
            scratch_config = dataclasses.replace(config, offline_path=scratch)
            for view in stored_views:
                recompute(scratch_config, plan, view)
            scratch_reads = []
            for view in stored_views:
                path = table_path(scratch_config, view)
                version = delta_rs.latest_version(path)
                if version is not None:
                    scratch_reads.append(pinned_read(view, path, version, view.feature_names))
            by_asked: dict[tuple[str, ...], list[int]] = {}
            for index in range(len(probes)):
                by_asked.setdefault(tuple(sorted(values[index])), []).append(index)
            for asked, members in by_asked.items():
                recomputed.update(
                    _join_group(
                        scratch_config, plan, plan_version, refs, asked, probes, members, scratch_reads, join, set()
                    )
                )

    # -- per feature ---------------------------------------------------------------------------------------------
    out = []
    for feature in features:
        rows = [i for i in range(len(probes)) if feature in values[i]]
        dtype = _dtype(plan, feature)
        served = [values[i][feature] for i in rows]
        out.append(
            FeatureLayers(
                feature=feature,
                numeric=dtype.is_numeric,
                entities=[probes[i].entity for i in rows],
                served_at=[probes[i].served_at for i in rows],
                statuses=[s.status for s in served],
                served=[s.value for s in served],
                served_event=[s.event for s in served],
                stored=[stored.get((i, feature), (None, None))[0] for i in rows],
                stored_event=[stored.get((i, feature), (None, None))[1] for i in rows],
                latest=[latest.get((i, feature), (None, None))[0] for i in rows],
                latest_event=[latest.get((i, feature), (None, None))[1] for i in rows],
                recomputed=None
                if recomputed is None
                else [recomputed.get((i, feature), (None, None))[0] for i in rows],
                recomputed_event=None
                if recomputed is None
                else [recomputed.get((i, feature), (None, None))[1] for i in rows],
                skew_cause=_skew_cause(
                    plan,
                    feature,
                    {probes[i].plan_version for i in rows},
                    logged_plans,
                    unavailable,
                    rows,
                    history,
                    watermarks,
                ),
                drift_cause=CAUSE_NOT_MATERIALIZED if any((i, feature) in unavailable for i in rows) else None,
                rolled_back=_rolled(plan, feature, rows, rolled) if rolled else None,
                rollback=_rollback_text(plan, feature, rollbacks or {}) if rolled else None,
            )
        )
    return out


def _held_at(rollbacks: Sequence[Rollback], t: datetime) -> int | None:
    """The Delta version a rollback served at ``t``, if one held the view then."""
    for rollback in rollbacks:
        if rollback.start <= t and (rollback.end is None or t < rollback.end):
            return rollback.version
    return None


def _rolled(plan: Plan, feature: str, rows: Sequence[int], rolled: set[tuple[int, str]]) -> list[bool]:
    view, _, name = feature.partition("__")
    views = _views_of(plan, FeatureRefPlan(view, name))
    return [any((i, v) in rolled for v in views) for i in rows]


def _rollback_text(plan: Plan, feature: str, rollbacks: Mapping[str, Sequence[Rollback]]) -> str | None:
    view, _, name = feature.partition("__")
    texts = [r.text for v in _views_of(plan, FeatureRefPlan(view, name)) for r in rollbacks.get(v, ())]
    return "; ".join(texts) or None


# -- the log --------------------------------------------------------------------------------------------------------


def _read_log(log: pa.Table) -> tuple[list[Probe], list[dict[str, _Value]]]:
    """The logged entities (one per lookup and entity) and, for each, its served values by feature (still JSON
    text: :func:`decode_served` types them). Times are read as integers and made datetimes once each: Arrow's
    timestamp-to-datetime conversion was most of the time of a 100,000-lookup audit."""
    import pyarrow as pa

    def micros(name: str) -> list[int | None]:
        return log.column(name).cast(pa.int64()).to_pylist()

    requests = log.column("request_id").to_pylist()
    positions = log.column("entity_index").to_pylist()
    features = log.column("feature").to_pylist()
    statuses = log.column("status").to_pylist()
    texts = log.column("value").to_pylist()
    events = micros("event_timestamp")
    served: list[int] = log.column("served_at").cast(pa.int64()).to_pylist()  # never null
    entities = log.column("entity").to_pylist()
    request_data = log.column("request_data").to_pylist()
    plan_versions = log.column("plan_version").to_pylist()
    probes: list[Probe] = []
    values: list[dict[str, _Value]] = []
    index: dict[tuple[str, int], int] = {}
    times: dict[int, datetime] = {}  # many values share an event time: one datetime each
    for r, key in enumerate(zip(requests, positions, strict=True)):
        at = index.get(key)
        if at is None:
            at = index[key] = len(probes)
            probes.append(Probe(entities[r], request_data[r], from_micros(served[r]), int(plan_versions[r])))
            values.append({})
        event = events[r]
        if event is not None and event not in times:
            times[event] = from_micros(event)
        values[at][features[r]] = _Value(statuses[r], texts[r], None if event is None else times[event])
    return probes, values


def _refs(plan: Plan, features: Sequence[str]) -> dict[str, FeatureRefPlan]:
    refs = {}
    for feature in features:
        view, _, name = feature.partition("__")
        try:
            refs[feature] = plan.resolve_refs([f"{view}:{name}"])[0]
        except Exception as exc:
            raise AuditInputError(
                f"the log holds feature '{feature}', which the current plan does not define ({exc})"
            ) from exc
    return refs


def _dtype(plan: Plan, feature: str) -> DType:
    view, _, name = feature.partition("__")
    return plan.feature_plan(FeatureRefPlan(view, name)).dtype


def decode_served(plan: Plan, log_values: list[dict[str, _Value]]) -> None:
    """Turn the logged JSON texts into plan-typed values (in place)."""
    dtypes: dict[str, DType] = {}
    for per in log_values:
        for feature, found in per.items():
            dtype = dtypes.get(feature)
            if dtype is None:
                dtype = dtypes[feature] = _dtype(plan, feature)
            found.value = decode_value(dtype, found.value)


def _stored_views(plan: Plan, refs: Mapping[str, FeatureRefPlan]) -> list[ViewPlan]:
    names: list[str] = []
    for ref in refs.values():
        if plan.is_on_demand(ref.view):
            names.extend(i.view for i in plan.on_demand_view(ref.view).inputs)
        else:
            names.append(ref.view)
    return [plan.view(n) for n in dict.fromkeys(names)]


def _fingerprint(plan: Plan, view: str, feature: str) -> str | None:
    try:
        return plan.feature_plan(FeatureRefPlan(view, feature)).fingerprint
    except Exception:
        return None


def _depends_on(plan: Plan, feature: str, changed: set[str]) -> bool:
    if feature in changed:
        return True
    view, _, _ = feature.partition("__")
    if plan.is_on_demand(view):
        return any(i.column in changed for i in plan.on_demand_view(view).inputs)
    return False


# -- table versions -------------------------------------------------------------------------------------------------


class _History:
    """A Delta table's versions and when each was committed (read once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.latest = delta_rs.latest_version(path)
        self.times: list[tuple[datetime, int]] = []
        for version in range(0, (self.latest if self.latest is not None else -1) + 1):
            at = commit_time(path, version)
            if at is not None:
                self.times.append((at, version))

    def live_at(self, t: datetime) -> int | None:
        """The latest version committed at or before ``t`` (None: the table did not exist yet)."""
        found = None
        for at, version in self.times:
            if at <= t:
                found = version
        return found


# -- the join -------------------------------------------------------------------------------------------------------


def _join_group(
    config: RepoConfig,
    plan: Plan,
    plan_version: int,
    refs: Mapping[str, FeatureRefPlan],
    asked: Sequence[str],
    probes: Sequence[Probe],
    members: Sequence[int],
    reads: Sequence[ViewRead],
    join: Join,
    unavailable: set[tuple[int, str]],
) -> dict[tuple[int, str], tuple[Any, datetime | None]]:
    """The values the join gives the ``members`` for the ``asked`` features, on the tables of ``reads`` (a
    feature whose view has no table there is left out: no value), with the event time of the row it took."""
    readable = {r.name: r for r in reads}
    joinable = [
        f
        for f in asked
        if all(v in readable for v in _views_of(plan, refs[f])) and not any((i, f) in unavailable for i in members)
    ]
    if not joinable:
        return {}
    manifest = describe(config, plan, plan_version, [refs[f] for f in joinable], output_format="arrow", pins=readable)
    entities = _entities(plan, [refs[f] for f in joinable], [probes[i] for i in members])
    joined = join(manifest, entities)
    order = joined.column(PROBE).to_pylist()
    out: dict[tuple[int, str], tuple[Any, datetime | None]] = {}
    events = _event_times(plan, [refs[f] for f in joinable], readable, entities)
    for feature in joinable:
        column = joined.column(feature).to_pylist()
        times = events.get(_views_of(plan, refs[feature])[0])  # an on-demand feature: its first input's row
        for row, position in enumerate(order):
            out[(members[position], feature)] = (column[row], None if times is None else times[position])
    return out


def _views_of(plan: Plan, ref: FeatureRefPlan) -> list[str]:
    if plan.is_on_demand(ref.view):
        return [i.view for i in plan.on_demand_view(ref.view).inputs]
    return [ref.view]


def _entities(plan: Plan, refs: Sequence[FeatureRefPlan], probes: Sequence[Probe]) -> pa.Table:
    """The entity rows of a join: the keys, ``event_timestamp`` = when served, the request fields, the probe."""
    import pyarrow as pa

    keys: dict[str, DType] = {}
    fields: dict[str, DType] = {}
    for ref in refs:
        if plan.is_on_demand(ref.view):
            odfv = plan.on_demand_view(ref.view)
            for _, spec in odfv.request_fields():
                fields[spec.name] = spec.dtype
            for i in odfv.inputs:
                keys.update((k.name, k.dtype) for k in plan.view(i.view).join_keys)
        else:
            keys.update((k.name, k.dtype) for k in plan.view(ref.view).join_keys)
    parsed = [orjson.loads(p.entity) for p in probes]
    requests = [orjson.loads(p.request_data) if p.request_data else {} for p in probes]
    columns: dict[str, pa.Array] = {}
    for name, dtype in keys.items():
        columns[name] = _typed([row.get(name) for row in parsed], dtype)
    columns[EVENT_TIMESTAMP] = pa.array([p.served_at for p in probes], pa.timestamp("us", tz="UTC"))
    for name, dtype in fields.items():
        if name not in columns:
            columns[name] = _typed([row.get(name) for row in requests], dtype)
    columns[PROBE] = pa.array(range(len(probes)), pa.int64())
    return pa.table(columns)


def _typed(values: list[Any], dtype: DType) -> pa.Array:
    import pyarrow as pa

    return pa.array(
        [decode_value(dtype, None if v is None else orjson.dumps(v).decode()) for v in values], arrow_type(dtype)
    )


def _event_times(
    plan: Plan, refs: Sequence[FeatureRefPlan], reads: Mapping[str, ViewRead], entities: pa.Table
) -> dict[str, list[datetime | None]]:
    """Per stored view, the event time of the row the join took for each entity row (the latest at or before
    its time, whatever its TTL): for the report's examples and to tell a changed row from a late one."""
    import pandas as pd

    out: dict[str, list[datetime | None]] = {}
    for view in dict.fromkeys(r.view for r in refs if not plan.is_on_demand(r.view)):
        read = reads[view]
        snapshot = delta_rs.snapshot(read.path, read.version)
        table = snapshot.table.to_pyarrow_table(columns=[*read.key_names, EVENT_TIMESTAMP])
        rows = table.to_pandas()[[*read.key_names, EVENT_TIMESTAMP]].rename(columns={EVENT_TIMESTAMP: "_row_time"})
        rows["_row_time"] = pd.to_datetime(rows["_row_time"], utc=True)
        left = entities.select([*read.key_names, EVENT_TIMESTAMP, PROBE]).to_pandas()
        left[EVENT_TIMESTAMP] = pd.to_datetime(left[EVENT_TIMESTAMP], utc=True)
        merged = pd.merge_asof(
            left.sort_values(EVENT_TIMESTAMP),
            rows.sort_values("_row_time"),
            left_on=EVENT_TIMESTAMP,
            right_on="_row_time",
            by=list(read.key_names),
        ).sort_values(PROBE)
        out[view] = [None if pd.isna(t) else t.to_pydatetime() for t in merged["_row_time"]]
    return out


# -- causes ---------------------------------------------------------------------------------------------------------


def _skew_cause(
    plan: Plan,
    feature: str,
    served_versions: set[int],
    logged_plans: Mapping[int, Plan],
    unavailable: set[tuple[int, str]],
    rows: Sequence[int],
    history: Mapping[str, _History],
    watermarks: Mapping[str, int | None],
) -> str:
    """What the registry and stores tell of a served value that differs from the one stored at t."""
    view, _, name = feature.partition("__")
    current = _fingerprint(plan, view, name)
    if any((i, feature) in unavailable for i in rows):
        return CAUSE_REAPPLIED
    if any(_fingerprint(logged_plans[v], view, name) != current for v in served_versions):
        return CAUSE_FUNCTION if plan.is_on_demand(view) else CAUSE_REAPPLIED
    for stored in _views_of(plan, FeatureRefPlan(view, name)):  # an on-demand feature: its inputs' views
        watermark = watermarks.get(stored)
        newest = history[stored].latest if stored in history else None
        if watermark is not None and newest is not None and watermark < newest:
            return CAUSE_SNAPSHOT
    return CAUSE_OVERWRITTEN
