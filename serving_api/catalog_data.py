"""What the browser catalog shows (``skewless ui``), as plain dictionaries for its templates.

Definitions come from :mod:`features.catalog` (the same text ``skewless describe`` prints); runs and training
sets from the registry; freshness from the online store's live snapshot; the per-run charts from the Parquet
footers of what each run committed (:mod:`features.table_stats`). Lineage is worked out here from the plan and
the registry's training sets: source -> view -> on-demand views -> services -> training sets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.catalog import describe, list_objects, run_summary
from features.errors import SkewlessError, UnknownNameError
from features.plan import FeatureRefPlan, OnDemandViewPlan, Plan, ViewPlan
from features.registry import TrainingSetRecord
from features.table_stats import CommitStats, commit_stats, table_dir

if TYPE_CHECKING:
    from features.store import FeatureStore

logger = logging.getLogger(__name__)

RUNS_SHOWN = 10  # the last runs listed on a view's page
CHART_RUNS = 20  # the last table versions a feature's chart shows


@dataclass(frozen=True, slots=True)
class Lineage:
    """Who reads what, for one plan and the training sets recorded."""

    plan: Plan
    training_sets: tuple[TrainingSetRecord, ...]

    def views_read(self, refs: Iterable[str | FeatureRefPlan]) -> set[str]:
        """The views ``refs`` read: their own, and the stored inputs of the on-demand views among them."""
        read: set[str] = set()
        for ref in refs:
            view = str(ref).partition(":")[0]
            read.add(view)
            if self.plan.is_on_demand(view):
                read.update(r.view for r in self.plan.on_demand_view(view).inputs)
        return read

    def features_read(self, refs: Iterable[str | FeatureRefPlan]) -> set[str]:
        """The ``view:feature`` references ``refs`` read, the inputs of their on-demand views included."""
        read: set[str] = set()
        for ref in refs:
            read.add(str(ref))
            view = str(ref).partition(":")[0]
            if self.plan.is_on_demand(view):
                read.update(str(r) for r in self.plan.on_demand_view(view).inputs)
        return read

    def on_demand_views_of(self, view: str) -> list[str]:
        return [o.name for o in self.plan.on_demand_views if any(r.view == view for r in o.inputs)]

    def services_of(self, view: str, feature: str | None = None) -> list[str]:
        """The services that read ``view`` (its ``feature``, when given), directly or through an on-demand view."""
        return [s.name for s in self.plan.services if self._reads(s.features, view, feature)]

    def training_sets_of(self, view: str, feature: str | None = None) -> list[TrainingSetRecord]:
        return [t for t in self.training_sets if self._reads(t.features, view, feature)]

    def _reads(self, refs: Iterable[str | FeatureRefPlan], view: str, feature: str | None) -> bool:
        if feature is None:
            return view in self.views_read(refs)
        return f"{view}:{feature}" in self.features_read(refs)


class Catalog:
    """The pages' data for one repository, read fresh on each page (the plan at most once a second)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    # -- the plan and the registry ------------------------------------------------------------------------------
    def _plan(self) -> tuple[int, Plan]:
        version = self.store.plan_version(max_age=1.0)
        return version.version, version.plan

    def _lineage(self, plan: Plan) -> Lineage:
        return Lineage(plan, tuple(self.store.registry.training_sets()))

    # -- pages ----------------------------------------------------------------------------------------------------
    def index(self) -> dict[str, Any]:
        version, plan = self._plan()
        last_runs = {run.view: run_summary(run) for run in self.store.registry.runs(failed=True)}  # the newest wins
        views = list_objects(plan, "views")
        for view in views:
            view["last_run"] = last_runs.get(view["name"])
        return {
            "plan_version": version,
            "entities": list_objects(plan, "entities"),
            "views": [v for v in views if v["kind"] != "on-demand view"],
            "on_demand_views": [v for v in views if v["kind"] == "on-demand view"],
            "services": list_objects(plan, "services"),
            "features": list_objects(plan, "features"),
            "training_sets": [_training_set(t) for t in reversed(self._lineage(plan).training_sets)],
        }

    def entity(self, name: str) -> dict[str, Any]:
        version, plan = self._plan()
        entity = next((e for e in plan.entities if e.name == name), None)
        if entity is None:
            raise UnknownNameError("entity", name, [e.name for e in plan.entities])
        lineage = self._lineage(plan)
        views = [v.name for v in plan.views if name in v.entities]
        return {
            "plan_version": version,
            **describe(plan, name),
            "views": views,
            "services": sorted({s for v in views for s in lineage.services_of(v)}),
        }

    def view(self, name: str) -> dict[str, Any]:
        """A stored or an on-demand view: its definition, lineage and, for a stored one, runs, freshness, charts."""
        version, plan = self._plan()
        lineage = self._lineage(plan)
        described = describe(plan, name)
        if described["kind"] in ("entity", "service"):
            raise UnknownNameError("view", name, plan.view_names())
        page: dict[str, Any] = {
            "plan_version": version,
            **described,
            "on_demand_views": lineage.on_demand_views_of(name),
            "services": lineage.services_of(name),
            "training_sets": [_training_set(t) for t in lineage.training_sets_of(name)],
        }
        if plan.is_on_demand(name):
            odfv = plan.on_demand_view(name)
            page["input_refs"] = [str(r) for r in odfv.inputs]
            page["request_fields"] = [f"{s}.{f.name}: {f.dtype.value}" for s, f in odfv.request_fields()]
            return page
        stored = plan.view(name)
        history = self._history(stored)
        page["runs"] = [run_summary(r) for r in reversed(self.store.registry.runs(name, failed=True)[-RUNS_SHOWN:])]
        page["online_snapshot"] = self._freshness(stored)
        page["charts"] = {f.name: feature_chart(history, f.name, f.dtype.is_numeric) for f in stored.features}
        return page

    def service(self, name: str) -> dict[str, Any]:
        version, plan = self._plan()
        service = plan.service(name)
        lineage = self._lineage(plan)
        refs = [str(r) for r in service.features]
        return {
            "plan_version": version,
            **describe(plan, name),
            "views": sorted(lineage.views_read(refs)),
            "stored_views": sorted(v for v in lineage.views_read(refs) if not plan.is_on_demand(v)),
            "on_demand_views": sorted(v for v in lineage.views_read(refs) if plan.is_on_demand(v)),
            "training_sets": [
                _training_set(t)
                for t in lineage.training_sets
                if t.feature_service == name or set(refs) <= set(t.features)
            ],
        }

    def feature(self, view_name: str, feature_name: str) -> dict[str, Any]:
        version, plan = self._plan()
        view = plan.any_view(view_name)
        feature = next((f for f in describe(plan, view_name)["features"] if f["name"] == feature_name), None)
        if feature is None:
            raise UnknownNameError(f"feature of view '{view_name}'", feature_name, view.feature_names)
        lineage = self._lineage(plan)
        page: dict[str, Any] = {
            "plan_version": version,
            "view": view_name,
            "on_demand": isinstance(view, OnDemandViewPlan),
            **feature,
            "on_demand_views": [
                o.name for o in plan.on_demand_views if FeatureRefPlan(view_name, feature_name) in o.inputs
            ],
            "services": lineage.services_of(view_name, feature_name),
            "training_sets": [_training_set(t) for t in lineage.training_sets_of(view_name, feature_name)],
            "chart": None,
        }
        if isinstance(view, ViewPlan):
            dtype = view.feature(feature_name).dtype
            page["chart"] = feature_chart(self._history(view), feature_name, dtype.is_numeric)
        return page

    def training_set(self, set_id: int) -> dict[str, Any]:
        version, plan = self._plan()
        sets = {t.set_id: t for t in self._lineage(plan).training_sets}
        if set_id not in sets:
            raise UnknownNameError("training set", str(set_id), [str(i) for i in sets])
        record = sets[set_id]
        manifest = Path(record.manifest)
        known = set(plan.view_names())
        return {
            "plan_version": version,
            **_training_set(record),
            # a view removed from the definitions since is listed, not linked
            "views": [{"name": v, "known": v in known} for v in record.views],
            "manifest_text": manifest.read_text() if manifest.is_file() else None,
            "output_exists": Path(record.output).exists(),
        }

    # -- runs, freshness, statistics ----------------------------------------------------------------------------
    def _freshness(self, view: ViewPlan) -> dict[str, Any]:
        if not view.online:
            return {"state": "offline only"}
        try:
            live = self.store.online_store().live_snapshot(view)
        except SkewlessError as exc:  # the page still shows the rest: the store is down, not the catalog
            return {"state": "unreachable", "error": str(exc)}
        if live is None:
            return {"state": "never published"}
        return {
            "state": "current" if live.storage_fingerprint == view.storage_fingerprint else "older definition",
            "offline_version": live.watermark,
            "published_at": live.published_at.isoformat(timespec="seconds"),
        }

    def _history(self, view: ViewPlan) -> list[CommitStats]:
        """The statistics of the last :data:`CHART_RUNS` table versions runs of the current definition committed."""
        versions = [
            r.offline_version
            for r in self.store.registry.runs(view.name)
            if r.storage_fingerprint == view.storage_fingerprint and r.offline_version is not None
        ]
        table = table_dir(self.store.config, view.name, view.storage_fingerprint)
        found = [commit_stats(table, v) for v in sorted(set(versions))[-CHART_RUNS:]]
        return [s for s in found if s is not None]


def feature_chart(history: list[CommitStats], feature: str, numeric: bool) -> dict[str, Any]:
    """One feature's values over the runs in ``history``: per table version its rows, nulls, null share, min
    and max (None where unknown), and the chart's drawing (:func:`chart_geometry`)."""
    points = []
    for commit in history:
        stats = commit.columns.get(feature)
        if stats is None:
            continue
        points.append(
            {
                "version": commit.version,
                "committed_at": None if commit.committed_at is None else commit.committed_at.isoformat("T", "seconds"),
                "rows": stats.rows,
                "nulls": stats.nulls,
                "null_share": stats.null_share,
                "min": stats.min,
                "max": stats.max,
            }
        )
    return {"points": points, "numeric": numeric, "drawing": chart_geometry(points, numeric) if points else None}


WIDTH, RANGE_HEIGHT, NULL_HEIGHT, GAP, LEFT, RIGHT = 640, 140, 50, 28, 80, 16


def chart_geometry(points: list[dict[str, Any]], numeric: bool) -> dict[str, Any]:
    """Where to draw ``points``: a band from min to max per table version (numeric features), then the null share
    per version as bars (0 to 100%). The SVG itself is the template's (``templates/_chart.html``)."""
    step = (WIDTH - LEFT - RIGHT) / max(len(points), 1)
    xs = [LEFT + step * (i + 0.5) for i in range(len(points))]
    drawing: dict[str, Any] = {"width": WIDTH, "left": LEFT, "right": WIDTH - RIGHT, "step": step}
    top = 10
    if numeric:
        bounds = [float(p[k]) for p in points for k in ("min", "max") if p[k] is not None]
        low, high = (min(bounds), max(bounds)) if bounds else (0.0, 1.0)
        span = (high - low) or 1.0

        def y(value: float) -> float:
            return top + RANGE_HEIGHT * (1 - (value - low) / span)

        bars = [
            {"x": x, "y_max": y(float(p["max"])), "y_min": y(float(p["min"])), "point": p}
            for x, p in zip(xs, points, strict=True)
            if p["min"] is not None and p["max"] is not None
        ]
        drawing["range"] = {
            "top": top,
            "bottom": top + RANGE_HEIGHT,
            "low": low,
            "high": high,
            "bars": bars,
            "max_line": " ".join(f"{b['x']:.1f},{b['y_max']:.1f}" for b in bars),
            "min_line": " ".join(f"{b['x']:.1f},{b['y_min']:.1f}" for b in bars),
        }
        top += RANGE_HEIGHT + GAP
    drawing["nulls"] = {
        "top": top,
        "bottom": top + NULL_HEIGHT,
        "bars": [
            {"x": x, "height": NULL_HEIGHT * (p["null_share"] or 0.0), "point": p}
            for x, p in zip(xs, points, strict=True)
            if p["null_share"] is not None
        ],
    }
    drawing["labels"] = [{"x": x, "text": f"v{p['version']}"} for x, p in zip(xs, points, strict=True)]
    drawing["height"] = top + NULL_HEIGHT + 24
    return drawing


def _training_set(record: TrainingSetRecord) -> dict[str, Any]:
    return {
        "id": record.set_id,
        "output": record.output,
        "manifest": record.manifest,
        "plan_version": record.plan_version,
        "feature_service": record.feature_service,
        "features": list(record.features),
        "rows": record.rows,
        "created_at": _time(record.created_at),
    }


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")
