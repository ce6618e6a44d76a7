"""Rolling a view's online values back to an earlier published snapshot, at once, and releasing the hold after.

The online store keeps the last ``online.keep_snapshots`` published snapshots of each view (default 2: the live
one and the previous). :func:`rollback` makes one of them live again in one atomic step, so lookups return its
values bit for bit, and *holds* the view: later runs still commit to the Delta table, but their publications
are refused until :func:`release`, so a scheduled run cannot silently undo a rollback made because the newest
values were wrong. Both are recorded in the registry (who and when), and ``skewless runs``/``status`` show them.

A snapshot holding another definition of the view's features than the applied plan is not rolled back to:
lookups would report those features missing. Apply the definitions it was published from first.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from features.errors import OnlineStoreError
from features.protocols import LiveSnapshot, RollbackStore, snapshot_order
from features.registry import RollbackRecord

if TYPE_CHECKING:
    from features.plan import ViewPlan
    from features.protocols import OnlineStore
    from features.registry import Registry


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """A rollback done: the view, the snapshot that was live and the one that is now, the Delta version it was
    published from, and the hold it put on the view."""

    view: str
    from_snapshot: str
    to_snapshot: str
    offline_version: int
    held: str


def who() -> str:
    """The user name recorded with a rollback (the login name; ``unknown`` when the system has none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def kept_snapshots(online: OnlineStore, view: ViewPlan) -> list[LiveSnapshot]:
    """The snapshots of ``view`` the store keeps (newest first)."""
    return _rollback_store(online).kept_snapshots(view.name)


def rollback(online: OnlineStore, registry: Registry, view: ViewPlan, *, to: str | None = None) -> RollbackResult:
    """Make snapshot ``to`` of ``view`` live (None: the newest kept one older than the live one), hold the view,
    and record it. :class:`OnlineStoreError` names the kept snapshots when ``to`` is not one, and refuses a
    snapshot of another definition; nothing changes then."""
    store = _rollback_store(online)
    kept = {s.version: s for s in store.kept_snapshots(view.name)}
    live = online.live_snapshot(view)
    if live is None:
        raise OnlineStoreError(f"cannot roll back view '{view.name}': it was never published")
    target = kept.get(to) if to is not None else _older(list(kept.values()), live)
    if target is not None:
        current = tuple((f.name, f.fingerprint) for f in view.features)
        if target.feature_fingerprints != current:
            changed = sorted(
                {n for n, _ in current} ^ {n for n, _ in target.feature_fingerprints}
                | _differing(target.feature_fingerprints, current)
            )
            raise OnlineStoreError(
                f"cannot roll back view '{view.name}' to snapshot {target.version}: it holds another definition of "
                f"{', '.join(changed)} than the applied plan (lookups would report them missing); apply the "
                "definitions it was published from first"
            )
    now = datetime.now(UTC)
    user = who()
    held = f"rolled back by {user} at {now.isoformat(timespec='seconds')}"
    previous, made_live = store.rollback(view.name, to=to, held=held)
    version = kept[made_live].watermark if made_live in kept else -1
    registry.record_rollback(
        RollbackRecord(view.name, "rollback", user, now, previous, made_live, version if version >= 0 else None)
    )
    return RollbackResult(view.name, previous, made_live, version, held)


def release(online: OnlineStore, registry: Registry, view: ViewPlan) -> str | None:
    """End the hold a rollback put on ``view`` (the next run publishes the table's latest version); the hold
    ended, None when the view was not held (nothing recorded then)."""
    ended = _rollback_store(online).release(view.name)
    if ended is not None:
        live = online.live_snapshot(view)
        registry.record_rollback(
            RollbackRecord(
                view.name,
                "release",
                who(),
                datetime.now(UTC),
                to_snapshot=None if live is None else live.version,
                offline_version=None if live is None else live.watermark,
            )
        )
    return ended


def _rollback_store(online: OnlineStore) -> RollbackStore:
    if not isinstance(online, RollbackStore):
        raise OnlineStoreError(f"the online store {type(online).__name__} keeps no earlier snapshots to roll back to")
    return online


def _older(kept: list[LiveSnapshot], live: LiveSnapshot) -> LiveSnapshot | None:
    """The newest kept snapshot older than the live one."""
    live_point = snapshot_order(live.version or "0")
    older = [s for s in kept if snapshot_order(s.version or "0") < live_point]
    return max(older, key=lambda s: snapshot_order(s.version or "0")) if older else None


def _differing(a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...]) -> set[str]:
    """Feature names present in both with another fingerprint."""
    left, right = dict(a), dict(b)
    return {name for name in left.keys() & right.keys() if left[name] != right[name]}
