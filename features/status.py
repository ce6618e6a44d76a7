"""Freshness: per stored view, what was materialized, what the online store serves, and whether it is stale.

``skewless status`` prints these; ``--json`` prints the same dictionaries. A view is **stale** when any of these
holds (each is a reason in its ``stale`` list; the command exits 1 when one view has one):

- ``never materialized``: no successful run in the registry;
- online views only: ``never published`` (no live snapshot); ``snapshot of another definition`` (the live
  snapshot was published for another storage fingerprint: the table of the applied definition was never
  served); ``behind the table`` (the table has a newer Delta version than the snapshot was published from:
  pushed rows landed, or a publication failed after its Delta commit); ``older than the TTL`` (published more
  than the view's TTL ago: every row it held had an event time before its publication, so every value it
  serves is expired by now); for a windowed view, ``no tick within cadence + grace`` (published more than
  one cadence plus :func:`grace_seconds` ago: the scheduler missed a tick);
- ``online store unreachable`` for an online view whose snapshot cannot be read.

A failed run newer than the last successful one is shown, not stale by itself: a failed run leaves the
previous snapshot served, and the rules above say whether that one is still good enough. ``checks`` lists the
checks the view's latest run failed (:mod:`features.checks`): blocking ones stopped it, warnings did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from features.catalog import run_summary
from features.errors import OnlineStoreError, UnknownNameError
from features.plan import ViewPlan
from features.protocols import LiveSnapshot
from features.registry import RunRecord
from features.table_stats import latest_version, table_dir

if TYPE_CHECKING:
    from features.store import FeatureStore

NEVER = "never"
NO_CHECKS = "none failing"
MIN_GRACE_SECONDS = 300


def grace_seconds(cadence_seconds: int) -> int:
    """How late a windowed view's tick may be before the view is stale: half a cadence, at least 5 minutes (a
    scheduled run takes time, and schedulers start late; a whole missed tick is always noticed)."""
    return max(MIN_GRACE_SECONDS, cadence_seconds // 2)


def view_statuses(
    store: FeatureStore, views: Sequence[str] = (), *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The freshness of ``views`` (default: every stored view of the applied plan), one dictionary each, as of
    ``now`` (default: the current time). Reads the registry's runs, each view's live snapshot pointer and the
    Delta log's listing: no row of any table."""
    now = now or datetime.now(UTC)
    plan = store.plan_version().plan
    for name in views:
        if name not in plan.view_names():
            raise UnknownNameError("feature view", name, plan.view_names())
    selected = [plan.view(name) for name in dict.fromkeys(views)] if views else list(plan.views)
    runs = store.registry.runs(failed=True)
    snapshots, unreachable = _live_snapshots(store, [v for v in selected if v.online])
    return [
        _status(
            view,
            runs,
            snapshots.get(view.name),
            unreachable,
            latest_version(table_dir(store.config, view.name, view.storage_fingerprint)),
            now,
        )
        for view in selected
    ]


def _live_snapshots(store: FeatureStore, views: list[ViewPlan]) -> tuple[dict[str, LiveSnapshot | None], str | None]:
    """Each online view's live snapshot; when the online store cannot be read, none and why."""
    if not views:
        return {}, None
    try:
        online = store.online_store()
        return {view.name: online.live_snapshot(view) for view in views}, None
    except OnlineStoreError as exc:
        return {}, str(exc)


def _status(
    view: ViewPlan,
    runs: list[RunRecord],
    live: LiveSnapshot | None,
    unreachable: str | None,
    table_version: int | None,
    now: datetime,
) -> dict[str, Any]:
    # The runs of the applied definition: a run of an earlier one wrote another table.
    mine = [r for r in runs if r.view == view.name and r.storage_fingerprint == view.storage_fingerprint]
    succeeded = next((r for r in reversed(mine) if r.outcome == "ok"), None)
    failed = next((r for r in reversed(mine) if r.outcome != "ok"), None)
    stale: list[str] = []
    if succeeded is None:
        stale.append("never materialized")
    snapshot: dict[str, Any] | None = None
    if view.online and unreachable is not None:
        stale.append(f"online store unreachable: {unreachable}")
    elif view.online and live is None:
        stale.append("never published")
    elif view.online and live is not None:
        age = (now - live.published_at).total_seconds()
        snapshot = {
            "offline_version": live.watermark,
            "published_at": live.published_at.isoformat(timespec="seconds"),
            "age_seconds": round(age, 3),
            "held": live.held,  # set while a rollback holds the view (skewless rollback): who and when
        }
        stale.extend(_snapshot_reasons(view, live, age, table_version))
    return {
        "view": view.name,
        "kind": "windowed view" if view.is_windowed else "view",
        "online": view.online,
        "ttl_seconds": view.ttl_seconds,
        "cadence_seconds": view.cadence_seconds,
        "last_success": None if succeeded is None else run_summary(succeeded),
        "last_failure": None if failed is None else run_summary(failed),
        "table_version": table_version,
        "online_snapshot": snapshot,
        "checks": failing_checks(mine[-1] if mine else None),
        "stale": stale,
    }


def failing_checks(last: RunRecord | None) -> list[dict[str, Any]]:
    """The checks the view's latest run failed (blocking ones stopped it; warnings, or blocking ones under
    ``--skip-checks``, were published), each as ``{"check", "level", "observed", "default"}``."""
    if last is None or last.checks is None:
        return []
    return [
        {"check": o.check, "level": o.level, "observed": o.observed, "default": o.default} for o in last.checks.failed
    ]


def _checks_cell(failing: list[dict[str, Any]]) -> str:
    if not failing:
        return NO_CHECKS
    blocking = [f["check"] for f in failing if f["level"] == "blocking"]
    warnings = [f["check"] for f in failing if f["level"] != "blocking"]
    parts = [f"{len(blocking)} blocking: {', '.join(blocking)}"] if blocking else []
    parts += [f"{len(warnings)} warning: {', '.join(warnings)}"] if warnings else []
    return "; ".join(parts)


def _snapshot_reasons(view: ViewPlan, live: LiveSnapshot, age: float, table_version: int | None) -> list[str]:
    reasons = []
    if live.storage_fingerprint != view.storage_fingerprint:
        reasons.append("snapshot of another definition")
    elif table_version is not None and table_version > live.watermark and not live.held:
        # Behind the table is what a rollback does on purpose: the state says "rolled back" instead.
        reasons.append(f"behind the table (Delta version {table_version}, served {live.watermark})")
    if view.ttl_seconds is not None and age > view.ttl_seconds:
        reasons.append(f"older than the TTL ({age_text(int(age))} > {age_text(view.ttl_seconds)})")
    if view.cadence_seconds is not None:
        allowed = view.cadence_seconds + grace_seconds(view.cadence_seconds)
        if age > allowed:
            reasons.append(f"no tick within cadence + grace ({age_text(int(age))} > {age_text(allowed)})")
    return reasons


def age_text(seconds: int) -> str:
    """``11520`` -> ``"3h 12m"``: the two largest units, so an age reads at a glance."""
    if seconds < 0:
        return f"-{age_text(-seconds)}"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def status_rows(statuses: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The table ``skewless status`` prints: one row per view."""
    return [_row(s) for s in statuses]


STATUS_COLUMNS = (
    "view",
    "last success",
    "rows read / written",
    "Delta version",
    "engine",
    "last failure",
    "served version",
    "snapshot age",
    "TTL / cadence",
    "checks",
    "state",
)


def _row(status: dict[str, Any]) -> tuple[str, ...]:
    ok, failed, live = status["last_success"], status["last_failure"], status["online_snapshot"]
    if live is not None:
        served = str(live["offline_version"]) + (" (rolled back)" if live.get("held") else "")
        age = age_text(int(live["age_seconds"]))
    else:
        served, age = (NEVER if status["online"] else "offline only"), ""
    limits = " / ".join(
        age_text(s) if s is not None else "-" for s in (status["ttl_seconds"], status["cadence_seconds"])
    )
    return (
        status["view"],
        NEVER if ok is None else ok["finished_at"],
        "" if ok is None else f"{ok['rows_read']} / {ok['rows_written']}",
        "" if ok is None or ok["offline_version"] is None else str(ok["offline_version"]),
        "" if ok is None else str(ok["engine"] or ""),
        NEVER if failed is None else failed["finished_at"],
        served,
        age,
        limits,
        _checks_cell(status["checks"]),
        "stale" if status["stale"] else ("rolled back" if live is not None and live.get("held") else "fresh"),
    )
