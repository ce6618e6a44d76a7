"""The consistency audit's comparison and report: served values against the offline side, value by value.

Three layers per logged (entity, feature, served_at ``t``), each compared with the next (built by
:mod:`offline.audit`, reached through ``FeatureStore.audit``):

1. **served**: the value the online store answered, its status and event time (the served-feature log);
2. **stored**: the training-set point-in-time join at ``t`` on the Delta versions live at ``t`` (what was
   published then), and the same join on the latest versions (what a training set built now gives for ``t``);
3. **recomputed**: the same join on tables recomputed from the sources now, into a scratch path.

Served against stored-at-``t`` is **skew**; stored-at-``t`` against stored-latest, where the served value is the
one published at ``t``, is **freshness lag** (reported apart, never a mismatch); stored-latest against recomputed
is **drift** (the stored table no longer matches its sources). This module is pure: it compares the layers it
is given (:class:`FeatureLayers`) and renders the result; it reads no store.

Equality rules: two nulls are equal; floats are equal when bit-equal or both NaN (both sides come from one
computation, so no tolerance); timestamps compare as instants; every other type with ``==``. An expired or
missing served value is null, as the join's value beyond the TTL is: statuses are compared through that rule.
"""

from __future__ import annotations

import math
import statistics
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from features.plan import Plan
    from features.store import FeatureStore

EXAMPLES = 3  # example entities kept per feature and kind of disagreement

# The kinds of disagreement, as the report names them.
ONLINE_ONLY = "online_only"  # served a value, the offline side has none
OFFLINE_ONLY = "offline_only"  # the offline side has a value, none was served
MISMATCHED = "mismatched"  # both have a value, they differ
DRIFTED = "drifted"  # the stored table and the recomputation differ
LAGGED = "freshness_lag"  # served what was published at t; a newer row was published later

# The likely causes the registry and stores can tell.
ROLLED_BACK = "rolled back"  # a kind of cause: values served from a rolled-back snapshot, compared with it
CAUSE_REAPPLIED = "view re-applied without a run since"
CAUSE_FUNCTION = "function fingerprint differs (served by another plan version's definition)"
CAUSE_SNAPSHOT = "published snapshot older than the Delta version"
CAUSE_OVERWRITTEN = "online store overwritten (the served value is not the one published)"
CAUSE_SOURCE_CHANGED = "source row changed after publication"
CAUSE_LATE_ROW = "late row the stored table lacks"
CAUSE_NOT_MATERIALIZED = "definition applied without a run (the stored table is an older definition's)"
CAUSE_STORED_NEWER = "the stored row is newer than any source row (a pushed row, or a source row deleted)"


@dataclass(frozen=True, slots=True)
class FeatureLayers:
    """One feature's logged values and the offline layers for them, row by row (one row per logged value)."""

    feature: str  # <view>__<feature>
    numeric: bool
    entities: list[str]  # the join keys as JSON text
    served_at: list[datetime]
    statuses: list[str]
    served: list[Any]
    served_event: list[datetime | None]
    stored: list[Any]  # joined at t on the versions live at t
    stored_event: list[datetime | None]
    latest: list[Any]  # joined at t on the latest versions
    latest_event: list[datetime | None]
    recomputed: list[Any] | None = None  # joined at t on tables recomputed now (None: not built)
    recomputed_event: list[datetime | None] | None = None
    skew_cause: str = CAUSE_OVERWRITTEN  # what the registry tells of a served/stored difference
    drift_cause: str | None = None  # a cause the registry tells of a stored/recomputed difference (else by row)
    #: Per row: served while a rollback held the view, so "stored" is the rolled-back Delta version (what was
    #: published then), not the newest committed; None: no rollback in the log's time.
    rolled_back: list[bool] | None = None
    rollback: str | None = None  # the rollbacks, as the registry recorded them (who, when, which version)


@dataclass(frozen=True, slots=True)
class Rollback:
    """A time a rollback held a view: from ``start`` until ``end`` (None: still held), serving the snapshot
    published from Delta version ``version``; ``text`` says who rolled it back and when."""

    start: datetime
    end: datetime | None
    version: int
    text: str


@dataclass(frozen=True, slots=True)
class Example:
    """One disagreement: the entity, when it was served, both values and both event times. ``online`` and
    ``offline`` are the two sides compared, named by ``sides``: served and stored for skew, stored and recomputed
    for drift, served and the newer row for freshness lag."""

    entity: str
    served_at: datetime
    status: str
    online: Any
    offline: Any
    online_event_time: datetime | None
    offline_event_time: datetime | None
    sides: tuple[str, str] = ("online", "offline")

    def to_json(self) -> dict[str, Any]:
        first, second = self.sides
        return {
            "entity": self.entity,
            "served_at": iso_text(self.served_at),
            "status": self.status,
            first: _jsonable(self.online),
            second: _jsonable(self.offline),
            f"{first}_event_time": iso_text(self.online_event_time),
            f"{second}_event_time": iso_text(self.offline_event_time),
        }


@dataclass(frozen=True, slots=True)
class StatusCounts:
    total: int = 0
    equal: int = 0
    mismatched: int = 0  # any disagreement (online-only, offline-only, mismatched)


@dataclass(frozen=True, slots=True)
class FeatureAudit:
    """The audit of one feature (served against stored-at-t; drift and freshness apart)."""

    feature: str
    total: int
    equal: int
    both_null: int
    online_only: int
    offline_only: int
    mismatched: int
    smape: float | None  # numbers: symmetric mean absolute percentage error (0..2) over pairs of values
    max_abs_diff: float | None
    by_status: dict[str, StatusCounts]
    drifted: int  # stored (latest) against recomputed
    drift_compared: int
    lagged: int
    lag_max_seconds: float | None
    lag_median_seconds: float | None
    examples: dict[str, list[Example]] = field(default_factory=dict)
    causes: dict[str, str] = field(default_factory=dict)  # kind -> likely cause
    rolled_back: int = 0  # values served from a rolled-back snapshot (compared with that version: not skew)

    @property
    def disagreements(self) -> int:
        return self.online_only + self.offline_only + self.mismatched

    @property
    def mismatch_rate(self) -> float:
        """Served values that disagree with the value stored at t, over those compared."""
        return self.disagreements / self.total if self.total else 0.0

    @property
    def drift_rate(self) -> float:
        return self.drifted / self.drift_compared if self.drift_compared else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "total": self.total,
            "equal": self.equal,
            "both_null": self.both_null,
            "online_only": self.online_only,
            "offline_only": self.offline_only,
            "mismatched": self.mismatched,
            "mismatch_rate": self.mismatch_rate,
            "smape": self.smape,
            "max_abs_diff": self.max_abs_diff,
            "by_status": {
                s: {"total": c.total, "equal": c.equal, "mismatched": c.mismatched}
                for s, c in sorted(self.by_status.items())
            },
            "drifted": self.drifted,
            "drift_rate": self.drift_rate,
            "freshness_lag": {
                "values": self.lagged,
                "max_seconds": self.lag_max_seconds,
                "median_seconds": self.lag_median_seconds,
            },
            "rolled_back": self.rolled_back,
            "causes": dict(self.causes),
            "examples": {kind: [e.to_json() for e in found] for kind, found in self.examples.items()},
        }


@dataclass(frozen=True, slots=True)
class AuditResult:
    """What ``skewless audit`` and ``FeatureStore.audit`` return."""

    plan_version: int
    origin: str  # "log" (logged lookups) or "sample" (keys sampled from the online store now)
    lookups: int
    entities: int  # logged entities (one lookup may ask for several)
    values: int
    features: tuple[FeatureAudit, ...]
    recomputed: bool  # whether layer 3 was built
    #: The served/stored pairs behind each feature's plot: (online, offline) numbers, at most a few thousand.
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def worst_rate(self) -> float:
        """The highest mismatch or drift rate of any feature: what ``--max-mismatch`` is checked against."""
        return max((max(f.mismatch_rate, f.drift_rate) for f in self.features), default=0.0)

    def feature(self, name: str) -> FeatureAudit:
        for found in self.features:
            if found.feature == name:
                return found
        raise KeyError(f"no audited feature {name!r}; audited: {', '.join(f.feature for f in self.features)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "plan_version": self.plan_version,
            "origin": self.origin,
            "lookups": self.lookups,
            "entities": self.entities,
            "values": self.values,
            "recomputed": self.recomputed,
            "worst_rate": self.worst_rate,
            "features": [f.to_json() for f in self.features],
        }


# -- comparing ------------------------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """The audit's equality (see the module docstring)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if (
            not isinstance(a, int | float)
            or not isinstance(b, int | float)
            or isinstance(a, bool) != isinstance(b, bool)
        ):
            return False
        fa, fb = float(a), float(b)
        if math.isnan(fa) and math.isnan(fb):
            return True
        return struct.pack("<d", fa) == struct.pack("<d", fb)
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def compare(layers: FeatureLayers) -> FeatureAudit:
    """The audit of one feature's layers."""
    counts = {"equal": 0, "both_null": 0, ONLINE_ONLY: 0, OFFLINE_ONLY: 0, MISMATCHED: 0}
    by_status: dict[str, list[int]] = {}
    examples: dict[str, list[Example]] = {}
    diffs: list[float] = []
    smapes: list[float] = []
    lags: list[float] = []
    drifted = drift_compared = lagged = 0
    drift_causes: set[str] = set()
    rows = len(layers.served)
    for i in range(rows):
        served, stored = layers.served[i], layers.stored[i]
        status = by_status.setdefault(layers.statuses[i], [0, 0, 0])
        status[0] += 1
        if same(served, stored):
            status[1] += 1
            counts["equal"] += 1
            if served is None:
                counts["both_null"] += 1
            rolled = layers.rolled_back is not None and layers.rolled_back[i]
            if not rolled and not same(stored, layers.latest[i]):  # served what was published at t; newer came later
                lagged += 1
                lag = _lag(layers.served_event[i] or layers.stored_event[i], layers.latest_event[i])
                if lag is not None:
                    lags.append(lag)
                stored_side = (layers.stored, layers.stored_event)
                _keep(
                    examples,
                    LAGGED,
                    layers,
                    i,
                    (stored_side, (layers.latest, layers.latest_event)),
                    ("served", "newer"),
                )
        else:
            status[2] += 1
            kind = ONLINE_ONLY if stored is None else OFFLINE_ONLY if served is None else MISMATCHED
            counts[kind] += 1
            _keep(
                examples, kind, layers, i, ((layers.served, layers.served_event), (layers.stored, layers.stored_event))
            )
        if layers.numeric and _number(served) and _number(stored):
            a, b = float(served), float(stored)
            if math.isfinite(a) and math.isfinite(b):
                diffs.append(abs(a - b))
                denominator = (abs(a) + abs(b)) / 2
                smapes.append(0.0 if denominator == 0 else abs(a - b) / denominator)
        if layers.recomputed is not None and layers.recomputed_event is not None:
            drift_compared += 1
            if not same(layers.latest[i], layers.recomputed[i]):
                drifted += 1
                drift_causes.add(
                    layers.drift_cause
                    or _drift_cause(layers.latest[i], layers.latest_event[i], layers.recomputed_event[i])
                )
                recomputed_side = (layers.recomputed, layers.recomputed_event)
                _keep(
                    examples,
                    DRIFTED,
                    layers,
                    i,
                    ((layers.latest, layers.latest_event), recomputed_side),
                    ("stored", "recomputed"),
                )
    causes = {DRIFTED: "; ".join(sorted(drift_causes))} if drift_causes else {}
    for kind in (ONLINE_ONLY, OFFLINE_ONLY, MISMATCHED):
        if counts[kind]:
            causes[kind] = layers.skew_cause
    if lags:
        causes[LAGGED] = "a newer row was published after the lookup"
    rolled_back = sum(layers.rolled_back) if layers.rolled_back is not None else 0
    if rolled_back:
        causes[ROLLED_BACK] = layers.rollback or "served from a rolled-back snapshot"
    return FeatureAudit(
        feature=layers.feature,
        total=rows,
        equal=counts["equal"],
        both_null=counts["both_null"],
        online_only=counts[ONLINE_ONLY],
        offline_only=counts[OFFLINE_ONLY],
        mismatched=counts[MISMATCHED],
        smape=statistics.fmean(smapes) if smapes else None,
        max_abs_diff=max(diffs) if diffs else None,
        by_status={s: StatusCounts(*c) for s, c in by_status.items()},
        drifted=drifted,
        drift_compared=drift_compared,
        lagged=lagged,
        lag_max_seconds=max(lags) if lags else None,
        lag_median_seconds=statistics.median(lags) if lags else None,
        examples=examples,
        causes=causes,
        rolled_back=rolled_back,
    )


def _drift_cause(stored: Any, stored_event: datetime | None, recomputed_event: datetime | None) -> str:
    """Same row (event time) with another value: the source row changed; a newer row: one the table lacks."""
    if stored is not None and stored_event is not None and stored_event == recomputed_event:
        return CAUSE_SOURCE_CHANGED
    if recomputed_event is not None and (stored_event is None or recomputed_event > stored_event):
        return CAUSE_LATE_ROW
    if stored_event is not None and (recomputed_event is None or stored_event > recomputed_event):
        return CAUSE_STORED_NEWER
    return CAUSE_SOURCE_CHANGED


def _lag(served_event: datetime | None, newer_event: datetime | None) -> float | None:
    if served_event is None or newer_event is None:
        return None
    return (newer_event - served_event).total_seconds()


def _keep(
    examples: dict[str, list[Example]],
    kind: str,
    layers: FeatureLayers,
    i: int,
    sides: tuple[tuple[list[Any], list[datetime | None]], tuple[list[Any], list[datetime | None]]],
    names: tuple[str, str] = ("online", "offline"),
) -> None:
    """Keep row ``i`` as an example of ``kind`` (the first few only): the two ``sides`` compared, each as
    (values, event times), named ``names`` in the report."""
    found = examples.setdefault(kind, [])
    if len(found) < EXAMPLES:
        (first, first_event), (second, second_event) = sides
        found.append(
            Example(
                layers.entities[i],
                layers.served_at[i],
                layers.statuses[i],
                first[i],
                second[i],
                first_event[i],
                second_event[i],
                names,
            )
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def plot_points(layers: FeatureLayers, limit: int = 5000) -> list[tuple[float, float]]:
    """The (served, stored) pairs of numbers for a feature's plot (finite ones, at most ``limit``)."""
    if not layers.numeric:
        return []
    points = []
    for a, b in zip(layers.served, layers.stored, strict=True):
        if _number(a) and _number(b) and math.isfinite(float(a)) and math.isfinite(float(b)):
            points.append((float(a), float(b)))
            if len(points) >= limit:
                break
    return points


def iso_text(value: datetime | None) -> str | None:
    """A time as ISO-8601 text (None stays None)."""
    return None if value is None else value.isoformat()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


# -- what to audit (FeatureStore.audit) ---------------------------------------------------------------------------


def check_since(since: datetime | None) -> None:
    """A ``since`` in the future selects nothing, surely a mistake: say so."""
    from datetime import UTC

    from features.errors import AuditInputError

    if since is not None:
        if since.tzinfo is None:
            raise AuditInputError(f"--since {since.isoformat()} has no time zone; give one (e.g. ...Z or +00:00)")
        now = datetime.now(UTC)
        if since > now:
            raise AuditInputError(f"--since {since.isoformat()} is in the future (now is {now.isoformat()})")


def select_features(plan: Plan, names: Sequence[str]) -> frozenset[str] | None:
    """The ``<view>__<feature>`` columns of the services and views ``names`` (None: every logged feature)."""
    from features.errors import AuditInputError

    if not names:
        return None
    services = {s.name for s in plan.services}
    views = set(plan.view_names())
    selected: set[str] = set()
    for name in names:
        if name in services:
            selected.update(ref.column for ref in plan.select(feature_service=name))
        elif name in views:
            selected.update(f"{name}__{f}" for f in plan.any_view(name).feature_names)
        else:
            raise AuditInputError(
                f"unknown feature service or view '{name}'; services: {', '.join(sorted(services)) or 'none'}; "
                f"views: {', '.join(sorted(views))}"
            )
    return frozenset(selected)


def only_features(log: pa.Table, selected: frozenset[str] | None) -> pa.Table:
    """The log rows of the ``selected`` features (all when None)."""
    if selected is None:
        return log
    import pyarrow as pa
    import pyarrow.compute as pc

    return log.filter(pc.is_in(log.column("feature"), pa.array(sorted(selected), pa.string())))


def check_log(log: pa.Table, offline_path: Path, since: datetime | None, names: Sequence[str]) -> None:
    """A log with no row to audit is bad input: say what was looked for and where."""
    from features.errors import AuditInputError

    if log.num_rows:
        return
    what = f" of {', '.join(names)}" if names else ""
    when = f" since {since.isoformat()}" if since is not None else ""
    raise AuditInputError(
        f"no logged lookups{what}{when} in the served-feature log at {offline_path}/_served_log; turn logging on "
        "(serving.log in skewless.yaml) and serve some lookups, or audit keys read online now with --sample N"
    )


def plan_versions(log: pa.Table, known: set[int]) -> list[int]:
    """The plan versions the log names; bad input when one is unknown to the registry."""
    from features.errors import AuditInputError

    logged = sorted({int(v) for v in log.column("plan_version").to_pylist() if v is not None})
    unknown = [v for v in logged if v not in known]
    if unknown:
        raise AuditInputError(
            f"the log was written under plan version(s) {', '.join(map(str, unknown))}, which the registry does not "
            f"hold; it holds: {', '.join(map(str, sorted(known))) or 'none'}"
        )
    return logged


def sample_log(store: FeatureStore, plan: Plan, version: int, selected: frozenset[str] | None, count: int) -> pa.Table:
    """Log rows for ``count`` entities per stored online view, sampled from the online store and looked up now,
    as if those lookups had been served and logged (on-demand features need request data: not sampled)."""
    import uuid

    import pyarrow as pa

    from features.dtypes import DType, from_micros
    from features.errors import AuditInputError
    from features.protocols import SampleableStore
    from features.served_log import LoggedLookup, schema, to_rows

    if count <= 0:
        raise AuditInputError(f"--sample must be a positive number of entities, not {count}")
    online = store.online_store()
    if not isinstance(online, SampleableStore):
        raise AuditInputError(f"the online store {type(online).__name__} cannot list its entities for --sample")
    tables = []
    for view in plan.views:
        columns = [f"{view.name}__{f}" for f in view.feature_names]
        wanted = [c for c in columns if selected is None or c in selected]
        if not view.online or not wanted:
            continue
        entities = online.sample_entities(view, count)
        for key in view.join_keys:
            if key.dtype is DType.TIMESTAMP:
                entities[key.name] = [from_micros(int(v)) for v in entities[key.name]]
        if not entities[view.key_names[0]]:
            continue
        result = store.get_online_features(entities, features=[c.replace("__", ":", 1) for c in wanted])
        tables.append(to_rows([LoggedLookup(f"sample-{uuid.uuid4().hex}", result.at_micros, None, result)]))
    if not tables:
        raise AuditInputError("the online store serves no entity of the selected views: nothing to sample")
    return pa.concat_tables(tables).cast(schema())


def result(
    plan_version: int, origin: str, log: pa.Table, layers: Sequence[FeatureLayers], recomputed: bool
) -> AuditResult:
    """The audit's result from its layers."""
    requests = log.column("request_id").to_pylist()
    positions = log.column("entity_index").to_pylist()
    return AuditResult(
        plan_version=plan_version,
        origin=origin,
        lookups=len(set(requests)),
        entities=len(set(zip(requests, positions, strict=True))),
        values=log.num_rows,
        features=tuple(compare(layer) for layer in layers),
        recomputed=recomputed,
        points={layer.feature: plot_points(layer) for layer in layers},
    )


def rollback_times(records: Sequence[Any]) -> dict[str, list[Rollback]]:
    """Per view, the times a rollback held it (from the registry's rollback records, oldest first): each lasts
    until the release, or the next rollback, of that view."""
    out: dict[str, list[Rollback]] = {}
    for record in records:
        spans = out.setdefault(record.view, [])
        if spans and spans[-1].end is None:
            spans[-1] = Rollback(spans[-1].start, record.at, spans[-1].version, spans[-1].text)
        if record.action == "rollback" and record.offline_version is not None:
            text = (
                f"rolled back by {record.who} at {iso_text(record.at)} to snapshot {record.to_snapshot} "
                f"(Delta version {record.offline_version}): compared with that version"
            )
            spans.append(Rollback(record.at, None, int(record.offline_version), text))
    return out
