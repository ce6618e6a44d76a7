"""A materialization is recorded in the registry by the process that runs it.

The caller of a run may go away before the run ends (Ctrl-C while the warm engine runs it, a killed
notebook): recording the run where it runs means a run that committed to Delta and published online is never
missing from the registry's history, whatever happened to its caller. :class:`offline.router.Router` records the
runs of the engines in its process; the warm engine (:mod:`offline.warm.server`) records the runs it takes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from datetime import datetime
from typing import TYPE_CHECKING

from features.checks import Baseline, CheckReport, drift_targets, reference_stats
from features.errors import ChecksFailedError, DatasetError
from features.registry import Registry, RunRecord
from features.run_stats import FeatureStats, RunStats
from offline import incremental
from offline.manifest import Manifest
from offline.tables import table_path

if TYPE_CHECKING:
    from features.config import RepoConfig
    from features.plan import ViewPlan
    from features.protocols import MaterializationResult, OnlineStore, Progress
    from offline.jobs import Engine, Materialization

log = logging.getLogger(__name__)

_registries: dict[str, tuple[Registry, tuple[int, int] | None]] = {}
_lock = threading.Lock()


def run_and_record(
    config: RepoConfig, job: Materialization, engine: Engine, online: OnlineStore | None, progress: Progress | None
) -> MaterializationResult:
    """Run ``job`` in ``engine`` (in this process) and record it in the repository's registry, whether it
    succeeded, failed or was interrupted; a job without a ``plan_version`` (a test's, a tool's) is not recorded."""
    started = datetime.now().astimezone()
    try:
        result = dataclasses.replace(engine.materialize(job, online, progress), rows_landed=job.rows_landed)
    except ChecksFailedError as exc:  # recorded with its checks, the rows it read and their statistics
        report = exc.reports.get(job.view.name)
        _record(config, job, started, engine.name, None, "failed", f"{type(exc).__name__}: {exc}"[:4000], report)
        raise
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, Exception) else "interrupted"
        _record(config, job, started, engine.name, None, outcome, f"{type(exc).__name__}: {exc}"[:4000])
        raise
    _record(config, job, started, result.engine, result, "ok", None, result.checks)
    return result


def _record(
    config: RepoConfig,
    job: Materialization,
    started: datetime,
    engine: str,
    result: MaterializationResult | None,
    outcome: str,
    error: str | None,
    checks: CheckReport | None = None,
) -> None:
    if job.plan_version is None:
        return
    stats = None if result is None else result.stats
    if stats is None and checks is not None and checks.written is not None:
        stats = RunStats(engine, checks.written)  # a blocked run: the statistics its checks read
    record = RunRecord(
        view=job.view.name,
        storage_fingerprint=job.view.storage_fingerprint,
        plan_version=job.plan_version,
        window_start=job.start,
        window_end=job.end,
        rows_read=result.rows_read if result is not None else (checks.rows_read if checks is not None else 0),
        rows_written_offline=0 if result is None else result.rows_written_offline,
        offline_version=None if result is None else result.offline_version,
        rows_published=0 if result is None else result.rows_published,
        finished_at=datetime.now().astimezone(),
        started_at=started,
        engine=engine,
        outcome=outcome,
        error=error,
        rows_landed=job.rows_landed,  # landed before the run, so counted even when the run failed
        stats=stats,
        checks=checks,
        read_kind=job.baseline.read_kind,
    )
    _registry(config).record_run(record)


def _registry(config: RepoConfig) -> Registry:
    """One registry (one SQLAlchemy engine, one connection pool) per URL for the process's runs (a warm engine's
    process lives across many). A SQLite file replaced since (deleted and created again: a repository started
    over) is opened again: a connection to the deleted file can no longer write to it ("attempt to write a
    readonly database")."""
    url = config.resolved_registry_url()
    with _lock:
        cached = _registries.get(url)
        if cached is not None and cached[1] != _file_identity(url):
            cached[0].close()
            cached = None
        if cached is None:
            registry = Registry(url)  # creates the file when there is none
            cached = _registries[url] = (registry, _file_identity(url))
        return cached[0]


def _file_identity(url: str) -> tuple[int, int] | None:
    """The device and inode of a SQLite registry's file (None: not a file, or none there)."""
    if not url.startswith("sqlite:///"):
        return None
    try:
        found = os.stat(url[len("sqlite:///") :])
    except OSError:
        return None
    return found.st_dev, found.st_ino


def baseline(config: RepoConfig, view: ViewPlan, *, start: datetime | None = None, skip: bool = False) -> Baseline:
    """What a run of ``view`` (from ``--start`` ``start``) is checked against (:class:`features.checks.Baseline`),
    read before it starts: the statistics of the last successful run of this definition that wrote rows, the
    source rows read by the last such run that read the same kind of window (every row, a ``--start`` range, after
    the cursor, or ticks), and the statistics recorded by the manifest of each training contract a drift check
    names (a manifest that cannot be read gives none: that check says it compared nothing)."""
    registry = _registry(config)
    read_kind = "ticks" if view.is_windowed else incremental.plan_read(view, table_path(config, view), start, None).kind
    earlier = [
        r
        for r in reversed(registry.runs(view.name))
        if r.storage_fingerprint == view.storage_fingerprint and r.rows_written_offline > 0 and r.stats is not None
    ]
    previous = next(iter(earlier), None)
    same_kind = next((r for r in earlier if r.read_kind == read_kind), None)
    references: dict[str, dict[str, FeatureStats]] = {}
    targets = drift_targets(view.checks)
    contracts = registry.contracts() if targets else {}
    for name in sorted(targets):
        contract = contracts.get(name)
        try:
            manifest = Manifest.load(contract.manifest) if contract is not None else None
        except DatasetError as exc:
            log.warning("view '%s': training contract '%s': %s", view.name, name, exc)
            continue
        if manifest is not None and manifest.stats is not None:
            references[name] = reference_stats(view.name, manifest.stats.written)
    return Baseline(
        previous=None if previous is None or previous.stats is None else previous.stats.written,
        read_kind=read_kind,
        previous_rows_read=None if same_kind is None else same_kind.rows_read,
        previous_run=None if previous is None else previous.run_id,
        references=references,
        skip=skip,
    )
