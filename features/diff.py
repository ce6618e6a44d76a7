"""What ``skewless plan`` shows: the difference between the applied plan and the definitions on disk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from features.plan import FunctionPlan, OnDemandViewPlan, Plan, ViewPlan

Change = Literal["added", "removed", "changed"]


@dataclass(frozen=True, slots=True)
class PlanChange:
    kind: str  # entity, feature view, on-demand view, feature, feature service
    name: str
    change: Change
    detail: str = ""
    breaking: bool = False  # its view's stored values no longer match: materialize it again after apply
    orphans: bool = False  # a removed view's materialized data: nothing uses it; ``skewless prune`` removes it

    @property
    def after_apply(self) -> str:
        """What the user does after applying this change, in a word or three (the plan table's last column)."""
        if self.breaking:
            return "re-materialize"
        if self.orphans:
            return "orphaned: prune"
        if self.kind == "feature view" and self.change == "added":
            return "materialize (starts empty)"
        return ""


@dataclass(frozen=True, slots=True)
class PlanDiff:
    changes: tuple[PlanChange, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def breaking(self) -> tuple[PlanChange, ...]:
        return tuple(c for c in self.changes if c.breaking)

    @property
    def orphaning(self) -> tuple[PlanChange, ...]:
        """Removed views whose materialized data nothing uses any more."""
        return tuple(c for c in self.changes if c.orphans)


def diff_plans(old: Plan | None, new: Plan, materialized: set[tuple[str, str]] | None = None) -> PlanDiff:
    """Changes from ``old`` to ``new``. A change is *breaking* when the view's stored values were computed by a
    definition that no longer exists, so it must be materialized again. A removed view's data is *orphaned*:
    nothing serves it or builds training sets from it (older plan versions' reproductions aside, see
    ``skewless prune``). A rename is a removal and an addition: the new name starts empty."""
    materialized = materialized or set()
    old = old or Plan((), (), ())
    changes: list[PlanChange] = []

    def by_name(items: tuple[object, ...]) -> dict[str, object]:
        return {getattr(i, "name"): i for i in items}  # noqa: B009 - all plan nodes have .name

    for kind, old_items, new_items in (
        ("entity", old.entities, new.entities),
        ("feature service", old.services, new.services),
    ):
        before, after = by_name(old_items), by_name(new_items)
        changes += [PlanChange(kind, n, "added") for n in sorted(after.keys() - before.keys())]
        changes += [PlanChange(kind, n, "removed") for n in sorted(before.keys() - after.keys())]
        changes += [
            PlanChange(kind, n, "changed", _describe(before[n], after[n]))
            for n in sorted(before.keys() & after.keys())
            if _comparable(before[n]) != _comparable(after[n])
        ]

    old_views = {v.name: v for v in old.views}
    new_views = {v.name: v for v in new.views}
    removed = sorted(old_views.keys() - new_views.keys())
    added = sorted(new_views.keys() - old_views.keys())
    # A view's table is named by its storage fingerprint, which leaves the name out: the same fingerprint under
    # a removed name and an added one is a rename. Tables and keys are per name, so the data stays behind.
    renamed_from = {
        new_name: old_name
        for new_name in added
        for old_name in removed
        if old_views[old_name].storage_fingerprint == new_views[new_name].storage_fingerprint
    }
    for name in added:
        detail = f"{len(new_views[name].features)} feature(s)"
        if name in renamed_from:
            detail += f"; renamed from '{renamed_from[name]}': starts empty, the old name's data is not carried over"
        changes.append(PlanChange("feature view", name, "added", detail))
    for name in removed:
        had_data = any(view == name for view, _ in materialized)
        detail = "its materialized data becomes orphaned; 'skewless prune' can remove it" if had_data else ""
        renamed_to = [new_name for new_name, old_name in renamed_from.items() if old_name == name]
        if renamed_to:
            detail = "; ".join(filter(None, (f"renamed to '{renamed_to[0]}'", detail)))
        changes.append(PlanChange("feature view", name, "removed", detail, orphans=had_data))
    for name in sorted(old_views.keys() & new_views.keys()):
        changes += _view_changes(old_views[name], new_views[name], materialized)
    changes += _on_demand_changes(old.on_demand_views, new.on_demand_views)
    return PlanDiff(tuple(changes))


def _on_demand_changes(
    old_views: tuple[OnDemandViewPlan, ...], new_views: tuple[OnDemandViewPlan, ...]
) -> list[PlanChange]:
    """Request-time views store nothing, so none of their changes is breaking; a function's changes are
    listed one by one (its source, mode, inputs, or which function it is)."""
    before = {v.name: v for v in old_views}
    after = {v.name: v for v in new_views}
    kind = "on-demand view"
    changes = [PlanChange(kind, n, "added", _on_demand_summary(after[n])) for n in sorted(after.keys() - before.keys())]
    changes += [PlanChange(kind, n, "removed") for n in sorted(before.keys() - after.keys())]
    for name in sorted(before.keys() & after.keys()):
        old, new = before[name], after[name]
        changes += [PlanChange(kind, name, "changed", d) for d in _function_changes(old.function, new.function)]
        old_features = {f.name: f for f in old.features}
        new_features = {f.name: f for f in new.features}
        changes += [
            PlanChange("feature", f"{name}:{f}", "added") for f in sorted(new_features.keys() - old_features.keys())
        ]
        changes += [
            PlanChange("feature", f"{name}:{f}", "removed") for f in sorted(old_features.keys() - new_features.keys())
        ]
        for feature in sorted(old_features.keys() & new_features.keys()):
            a, b = old_features[feature], new_features[feature]
            if a.fingerprint != b.fingerprint:
                detail = f"fingerprint {a.fingerprint[:8]} -> {b.fingerprint[:8]}"
                changes.append(PlanChange("feature", f"{name}:{feature}", "changed", detail))
    return changes


def _on_demand_summary(view: OnDemandViewPlan) -> str:
    features = f"{len(view.features)} feature(s)"
    if view.function is None:
        return features
    return f"{features} from function {view.function} ({view.function.mode})"


def _function_changes(old: FunctionPlan | None, new: FunctionPlan | None) -> list[str]:
    if old is None and new is None:
        return []
    if old is None:
        return [f"now computed by function {new} instead of expressions"]
    if new is None:
        return [f"now computed by expressions instead of function {old}"]
    details = []
    if (old.module, old.qualname) != (new.module, new.qualname):
        details.append(f"function {old} -> {new}")
    if old.source_fingerprint != new.source_fingerprint:
        details.append(
            f"function {new} source changed (fingerprint {old.source_fingerprint[:8]} -> {new.source_fingerprint[:8]})"
        )
    if old.mode != new.mode:
        details.append(f"function {new} mode {old.mode} -> {new.mode}")
    if old.inputs != new.inputs:
        details.append(f"function {new} inputs {list(old.input_names)} -> {list(new.input_names)}")
    return details


def _view_changes(old: ViewPlan, new: ViewPlan, materialized: set[tuple[str, str]]) -> list[PlanChange]:
    changes: list[PlanChange] = []
    had_data = (old.name, old.storage_fingerprint) in materialized
    breaking = old.storage_fingerprint != new.storage_fingerprint and had_data
    if old.join_keys != new.join_keys:
        changes.append(
            PlanChange(
                "feature view",
                new.name,
                "changed",
                f"join keys {list(old.key_names)} -> {list(new.key_names)}",
                breaking,
            )
        )
    if _source_identity(old) != _source_identity(new):
        changes.append(PlanChange("feature view", new.name, "changed", "source changed", breaking))
    if old.ttl_seconds != new.ttl_seconds:
        changes.append(PlanChange("feature view", new.name, "changed", f"ttl {old.ttl_seconds}s -> {new.ttl_seconds}s"))
    if old.online != new.online:
        changes.append(PlanChange("feature view", new.name, "changed", f"online {old.online} -> {new.online}"))
    before = {f.name: f for f in old.features}
    after = {f.name: f for f in new.features}
    for feature in sorted(after.keys() - before.keys()):
        changes.append(PlanChange("feature", f"{new.name}:{feature}", "added", "", breaking))
    for feature in sorted(before.keys() - after.keys()):
        changes.append(PlanChange("feature", f"{new.name}:{feature}", "removed", "", breaking))
    for feature in sorted(before.keys() & after.keys()):
        if before[feature].fingerprint != after[feature].fingerprint:
            detail = f"fingerprint {before[feature].fingerprint[:8]} -> {after[feature].fingerprint[:8]}"
            changes.append(PlanChange("feature", f"{new.name}:{feature}", "changed", detail, breaking))
    if breaking and not changes:
        changes.append(PlanChange("feature view", new.name, "changed", "stored columns changed", True))
    return changes


def _source_identity(view: ViewPlan) -> dict[str, object]:
    """The source as a reader sees it; which of its columns are used shows up as feature changes."""
    return {k: v for k, v in view.source.to_dict().items() if k not in ("columns", "name")}


def _comparable(item: object) -> object:
    data = item.to_dict()  # type: ignore[attr-defined]
    data.pop("location", None)
    return data


def _describe(old: object, new: object) -> str:
    before, after = _comparable(old), _comparable(new)
    assert isinstance(before, dict) and isinstance(after, dict)
    return ", ".join(sorted(k for k in after if before.get(k) != after.get(k)))
