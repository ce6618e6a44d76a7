"""A materialization is recorded in the registry by the process that runs it.

The caller of a run may go away before the run ends (Ctrl-C while the warm engine runs it, a killed
notebook): recording the run where it runs means a run that committed to Delta and published online is never
missing from the registry's history, whatever happened to its caller. :class:`offline.router.Router` records the
runs of the engines in its process; the warm engine (:mod:`offline.warm.server`) records the runs it takes.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime
from typing import TYPE_CHECKING

from features.registry import Registry, RunRecord

if TYPE_CHECKING:
    from features.config import RepoConfig
    from features.protocols import MaterializationResult, OnlineStore, Progress
    from offline.jobs import Engine, Materialization

_registries: dict[str, Registry] = {}
_lock = threading.Lock()


def run_and_record(
    config: RepoConfig, job: Materialization, engine: Engine, online: OnlineStore | None, progress: Progress | None
) -> MaterializationResult:
    """Run ``job`` in ``engine`` (in this process) and record it in the repository's registry, whether it
    succeeded, failed or was interrupted; a job without a ``plan_version`` (a test's, a tool's) is not recorded."""
    started = datetime.now().astimezone()
    try:
        result = dataclasses.replace(engine.materialize(job, online, progress), rows_landed=job.rows_landed)
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, Exception) else "interrupted"
        _record(config, job, started, engine.name, None, outcome, f"{type(exc).__name__}: {exc}"[:4000])
        raise
    _record(config, job, started, result.engine, result, "ok", None)
    return result


def _record(
    config: RepoConfig,
    job: Materialization,
    started: datetime,
    engine: str,
    result: MaterializationResult | None,
    outcome: str,
    error: str | None,
) -> None:
    if job.plan_version is None:
        return
    record = RunRecord(
        view=job.view.name,
        storage_fingerprint=job.view.storage_fingerprint,
        plan_version=job.plan_version,
        window_start=job.start,
        window_end=job.end,
        rows_read=0 if result is None else result.rows_read,
        rows_written_offline=0 if result is None else result.rows_written_offline,
        offline_version=None if result is None else result.offline_version,
        rows_published=0 if result is None else result.rows_published,
        finished_at=datetime.now().astimezone(),
        started_at=started,
        engine=engine,
        outcome=outcome,
        error=error,
        rows_landed=job.rows_landed,  # landed before the run, so counted even when the run failed
        stats=None if result is None else result.stats,
    )
    _registry(config).record_run(record)


def _registry(config: RepoConfig) -> Registry:
    """One registry (one SQLAlchemy engine, one connection pool) per URL for the process's runs."""
    url = config.resolved_registry_url()
    with _lock:
        if url not in _registries:
            _registries[url] = Registry(url)
        return _registries[url]
