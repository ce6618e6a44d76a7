"""Removing what a repository no longer uses (``skewless prune``) and everything it stored (``skewless teardown``).

What prune keeps, and why:

- **Delta tables** (``<offline path>/<view>/<storage fingerprint>``) that a protected plan version names: every
  version by default, only the last N with ``keep_versions=N``. A training set's manifest pins its plan version
  and the Delta versions of these tables, so ``skewless dataset --reproduce`` rebuilds it only while they exist.
  A table no protected version names (a removed view, a view's table from before a breaking change, when only
  older versions name it; or a folder no version ever named) is deleted, and the manifests found under the
  repository that read one are named as made unreproducible.
- **Online keys** of the views the latest plan serves (``online=True``). Only the latest plan is ever served, and
  no training set reads the online store, so keys of any other view are orphaned whatever ``keep_versions`` is.
  (Old snapshots of a served view are already deleted by each publication.)

Deletion is one item at a time: a Delta table is first renamed out of its place (``<view>/.deleting-<fp>``, so a
half-deleted folder is never taken for a table, and the next prune finishes it), then deleted; a view's keys go
pointer first (see :mod:`online.redis_cleanup`). A prune that fails part way raises :class:`CleanupError` naming
what it had deleted; everything else is as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import CONFIG_FILE, RepoConfig
from features.errors import CleanupError
from features.plugins import all_plugins
from features.protocols import PrunableStore
from features.redaction import redact_url
from features.registry import PlanVersion

if TYPE_CHECKING:
    from features.store import FeatureStore

FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # a storage fingerprint (features.plan.stable_hash): a table's folder
DELETING = ".deleting-"  # a table folder being deleted, moved out of its place first
MANIFEST_SUFFIX = ".manifest.json"  # written beside every training set (offline/manifest.py)


@dataclass(frozen=True, slots=True)
class TableFolder:
    """One Delta table folder and what prune does with it."""

    view: str
    fingerprint: str
    path: Path
    bytes: int
    delete: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ViewKeys:
    """One view's keys in the online store and what prune does with them."""

    view: str
    keys: int
    snapshots: int
    delete: bool
    reason: str


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What prune would delete and keep. ``unreproducible``: manifests (path, plan version) that read a table to be
    deleted."""

    latest: int
    protected: tuple[int, ...]
    tables: tuple[TableFolder, ...]
    online: tuple[ViewKeys, ...]
    unreproducible: tuple[tuple[str, int], ...] = ()
    online_store: str = ""  # why online keys are not listed, when they are not

    @property
    def doomed_tables(self) -> list[TableFolder]:
        return [t for t in self.tables if t.delete]

    @property
    def doomed_views(self) -> list[ViewKeys]:
        return [v for v in self.online if v.delete]

    def to_json(self) -> dict[str, Any]:
        return {
            "latest_plan_version": self.latest,
            "protecting_plan_versions": list(self.protected),
            "tables": [asdict(t) | {"path": str(t.path)} for t in self.tables],
            "online": [asdict(v) for v in self.online],
            "unreproducible_manifests": [{"path": p, "plan_version": v} for p, v in self.unreproducible],
        }


@dataclass
class Deleted:
    """What a prune or teardown deleted so far (said in full when it stops part way)."""

    items: list[str] = field(default_factory=list)
    report: Callable[[str], None] = lambda _: None

    def add(self, what: str) -> None:
        self.items.append(what)
        self.report(what)

    def summary(self) -> str:
        return "; ".join(self.items) if self.items else "nothing"


def plan_prune(
    store: FeatureStore, *, keep_versions: int | None = None, manifest_dirs: Sequence[Path] = ()
) -> PrunePlan:
    """What ``skewless prune`` would delete (nothing is deleted here)."""
    if keep_versions is not None and keep_versions < 1:
        raise CleanupError(
            f"--keep-versions must be at least 1 (the latest plan version is always kept), got {keep_versions}"
        )
    versions = store.registry.versions()
    if not versions:
        raise CleanupError(
            "the registry holds no plan version, so nothing would protect any table or key; nothing was deleted "
            "(to remove everything of the repository, use 'skewless teardown')"
        )
    latest = versions[-1]
    protected = versions[-keep_versions:] if keep_versions else versions
    # Active training contracts protect the plan versions they were trained on (their tables are kept current).
    contracted = {c.plan_version for c in store.registry.contracts().values() if c.retired_at is None}
    protected = [v for v in versions if v in protected or v.version in contracted]
    tables = _table_folders(store.config, versions, {v.version for v in protected}, keep_versions)
    online, why_not = _online_keys(store, latest)
    doomed = {t.path.resolve() for t in tables if t.delete}
    return PrunePlan(
        latest=latest.version,
        protected=tuple(v.version for v in protected),
        tables=tuple(tables),
        online=tuple(online),
        unreproducible=tuple(_manifests_reading(doomed, [store.config.root, *manifest_dirs], store.config)),
        online_store=why_not,
    )


def prune(store: FeatureStore, plan: PrunePlan, *, advance: Callable[[str], None] = lambda _: None) -> Deleted:
    """Delete what ``plan`` marks, one item at a time (``advance`` is told each). A plan version applied since
    ``plan`` was made stops it before anything is deleted: the new version may name what ``plan`` would delete."""
    latest = store.registry.latest()
    if latest is None or latest.version != plan.latest:
        raise CleanupError("a plan version was applied while prune was looking; nothing was deleted: run it again")
    deleted = Deleted()
    current = ""
    try:
        for table in plan.doomed_tables:
            current = f"deleting table {table.path}"
            _delete_table(table.path)
            deleted.add(f"table {table.view}/{table.fingerprint} ({human_size(table.bytes)})")
            advance("tables")
        online = store.online_store() if plan.doomed_views else None
        for view in plan.doomed_views:
            current = f"deleting the online keys of view '{view.view}'"
            assert isinstance(online, PrunableStore)  # plan_prune lists keys only of such a store
            count = online.delete_view(view.view)
            deleted.add(f"{count} online key(s) of view '{view.view}'")
            advance("online views")
    except Exception as exc:
        raise CleanupError(
            f"prune stopped while {current}: {exc}. Deleted before that: {deleted.summary()}. Everything else is "
            "as it was; run prune again to finish."
        ) from exc
    return deleted


def _table_folders(
    config: RepoConfig, versions: list[PlanVersion], protected: set[int], keep_versions: int | None
) -> list[TableFolder]:
    users: dict[tuple[str, str], list[int]] = {}
    for version in versions:
        for view in version.plan.views:
            users.setdefault((view.name, view.storage_fingerprint), []).append(version.version)
    latest = versions[-1].version
    found = []
    for view_name, name, path in _folders(config.resolved_offline_path()):
        using = users.get((view_name, name), [])
        keeping = [v for v in using if v in protected]
        if name.startswith(DELETING):
            delete, reason = True, "left by a prune that was interrupted"
        elif keeping:
            delete = False
            latest_too = " (the latest)" if latest in keeping else ""
            reason = f"used by plan version(s) {versions_text(keeping)}{latest_too}"
        elif using:
            delete = True
            reason = f"used only by plan version(s) {versions_text(using)}, older than the last {keep_versions} kept"
        else:
            delete, reason = True, "no plan version uses it"
        found.append(TableFolder(view_name, name, path, _folder_bytes(path), delete, reason))
    return found


def _folders(offline: Path) -> Iterator[tuple[str, str, Path]]:
    """(view, folder name, path) of the table folders under the offline path: ``<view>/<fingerprint>``, and
    ``<view>/.deleting-<fingerprint>`` left by an interrupted prune. Anything else there is not ours to judge."""
    if not offline.is_dir():
        return
    for view_dir in sorted(p for p in offline.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for table in sorted(p for p in view_dir.iterdir() if p.is_dir()):
            if FINGERPRINT.fullmatch(table.name.removeprefix(DELETING)):
                yield view_dir.name, table.name, table


def _online_keys(store: FeatureStore, latest: PlanVersion) -> tuple[list[ViewKeys], str]:
    online = store.online_store()
    if not isinstance(online, PrunableStore):
        return [], f"the online store {type(online).__name__} cannot list its keys: online keys are left as they are"
    served = {v.name for v in latest.plan.views if v.online}
    offline_only = {v.name for v in latest.plan.views if not v.online}
    kept = _kept_for_contracts(store, latest)
    found = []
    for stored in online.stored_views():
        if stored.name in served:
            delete, reason = False, f"served by plan version {latest.version} (the latest)"
        elif stored.name in kept:
            delete, reason = False, f"an earlier definition served side by side for contract(s) {kept[stored.name]}"
        elif stored.name in offline_only:
            delete, reason = True, f"offline-only (online=False) in plan version {latest.version} (the latest)"
        else:
            delete, reason = True, f"not in plan version {latest.version} (the latest): nothing serves it"
        found.append(ViewKeys(stored.name, stored.keys, stored.snapshots, delete, reason))
    return found, ""


def _kept_for_contracts(store: FeatureStore, latest: PlanVersion) -> dict[str, str]:
    """The online names of earlier definitions kept for training contracts, with the contracts' names."""
    from features.contracts import kept_versions

    contracts = store.registry.contracts()
    if not contracts or store.config.contract_versions <= 0:
        return {}
    found = kept_versions(latest.plan, contracts, lambda v: store.registry.get(v).plan, store.config.contract_versions)
    return {view.online_name: ", ".join(names) for _, view, names in found}


def _manifests_reading(doomed: set[Path], roots: Iterable[Path], config: RepoConfig) -> Iterator[tuple[str, int]]:
    """Training-set manifests under ``roots`` that read one of the ``doomed`` tables (hidden folders and the offline
    path are not searched)."""
    if not doomed:
        return
    offline = config.resolved_offline_path()
    seen: set[Path] = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".") and Path(folder, d).resolve() != offline]
            for name in files:
                path = Path(folder, name).resolve()
                if not name.endswith(MANIFEST_SUFFIX) or path in seen:
                    continue
                seen.add(path)
                try:
                    manifest = json.loads(path.read_text())
                    reads = {Path(v["path"]).resolve() for v in manifest["views"].values()}
                    version = int(manifest["plan_version"])
                except (OSError, ValueError, KeyError, TypeError, AttributeError):
                    continue  # not a training-set manifest
                if reads & doomed:
                    yield str(path), version


def _delete_table(path: Path) -> None:
    moving = path if path.name.startswith(DELETING) else path.with_name(DELETING + path.name)
    if moving != path:
        path.rename(moving)
    shutil.rmtree(moving)
    if not any(moving.parent.iterdir()):
        moving.parent.rmdir()  # the view's folder, once its last table is gone


# -- teardown ---------------------------------------------------------------------------------------------------------


def check_teardown(config: RepoConfig) -> None:
    """Refuse before anything is deleted when the offline path holds the repository itself (deleting it would
    delete the definitions and skewless.yaml)."""
    offline = config.resolved_offline_path()
    root = config.root.resolve()
    if offline == root or offline in root.parents or (offline / CONFIG_FILE).exists():
        raise CleanupError(
            f"offline.path is {offline}, which holds the repository {root}: teardown would delete the definitions "
            "too; nothing was deleted (point offline.path at a folder of its own)"
        )


def teardown(store: FeatureStore, *, report: Callable[[str], None] = lambda _: None) -> Deleted:
    """Delete everything the repository stored: its online keys, its services' state (warm engine, embedded online
    server: the ``skewless.teardown`` plugins), its Delta tables (offline.path) and, last, its registry, so a
    teardown that stops part way can be run again. Definitions and ``skewless.yaml`` stay. ``report`` is told
    each thing deleted as soon as it is."""
    config = store.config
    check_teardown(config)
    deleted = Deleted(report=report)
    current = ""
    try:
        current = "deleting the online keys"
        online = store.online_store()
        if isinstance(online, PrunableStore):
            for view in online.stored_views():
                current = f"deleting the online keys of view '{view.name}'"
                deleted.add(f"{online.delete_view(view.name)} online key(s) of view '{view.name}'")
        online.close()
        for name, stop in sorted(all_plugins("skewless.teardown").items()):
            current = f"stopping the repository's {name} service"
            done = stop(config)
            if done:
                deleted.add(done)
        offline = config.resolved_offline_path()
        if offline.exists():
            current = f"deleting the Delta tables in {offline}"
            size = _folder_bytes(offline)
            shutil.rmtree(offline)
            deleted.add(f"the Delta tables in {offline} ({human_size(size)})")
        current = "dropping the registry"
        store.registry.drop()
        deleted.add(f"the registry ({redact_url(config.resolved_registry_url())})")
    except Exception as exc:
        raise CleanupError(
            f"teardown stopped while {current}: {exc}. Deleted before that: {deleted.summary()}. Run it again to "
            "finish."
        ) from exc
    return deleted


# -- helpers ----------------------------------------------------------------------------------------------------------


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def versions_text(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
