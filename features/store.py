"""``FeatureStore``: the Python API over one feature repository.

>>> store = FeatureStore("path/to/repo")                      # doctest: +SKIP
>>> store.apply()                                             # doctest: +SKIP
>>> store.materialize()                                       # doctest: +SKIP
>>> training = store.get_training_dataset(entity_df, feature_service="fraud_model")  # doctest: +SKIP
>>> store.get_online_features({"card_id": [1, 2]}, features=["card_profile:credit_limit"])  # doctest: +SKIP

The facade drives the offline engine (Spark) and the online store (Redis) through the protocols in
:mod:`features.protocols`; which implementation runs is chosen by name in ``skewless.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from features.checks import PREVIOUS
from features.compiler import compile_plan, reflect_with
from features.config import RepoConfig
from features.diff import PlanDiff, diff_plans
from features.discovery import discover
from features.errors import ChecksFailedError, DefinitionError, MaterializationError, OnlineStoreError, RegistryError
from features.functions import FunctionLoader
from features.plan import Plan, ViewPlan
from features.plugins import load_plugin
from features.protocols import LiveSnapshot, MaterializationResult, OfflineEngine, OnlineStore, Progress
from features.registry import PlanVersion, Registry, TrainingSetRecord

if TYPE_CHECKING:
    from features.audit import AuditResult
    from features.contracts import Contract, ContractCache
    from features.push import PushResult
    from features.rollback import RollbackResult


# One view's run: the plan it is defined in, the view, the plan version recorded with the run.
_Job = tuple[Plan, ViewPlan, int]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    version: PlanVersion
    created: bool
    diff: PlanDiff


class FeatureStore:
    """One feature repository: its definitions, registry, offline engine and online store."""

    def __init__(self, repo_path: str | os.PathLike[str] = ".", *, config: RepoConfig | None = None) -> None:
        self.config = config or RepoConfig.load(repo_path)
        self._lock = threading.Lock()
        self._cached_version: PlanVersion | None = None
        self._checked_at = 0.0

    # -- definitions and the registry -------------------------------------------------------------------------
    @cached_property
    def registry(self) -> Registry:
        return Registry(self.config.resolved_registry_url())

    def compile(self) -> Plan:
        """Compile the definitions on disk (without storing anything)."""
        discovered = discover(self.config.root / self.config.definitions)
        return compile_plan(discovered, reflect_with(self.config))

    def plan(self) -> tuple[Plan, PlanDiff]:
        """What ``apply`` would change: the compiled plan and its diff against the registry."""
        new, diff, _ = self._plan_against_latest()
        return new, diff

    def _plan_against_latest(self) -> tuple[Plan, PlanDiff, int | None]:
        new = self.compile()
        self._check_drift_targets(new)
        latest = self.registry.latest()
        diff = diff_plans(latest.plan if latest else None, new, self.registry.materialized_storage())
        return new, diff, latest.version if latest else None

    def _check_drift_targets(self, plan: Plan) -> None:
        """A ``Drift(against=...)`` names ``previous`` or a registered training contract (the registry knows
        them, the compiler does not): an unknown name is a definition error at its file and line."""
        known = None
        for view in plan.views:
            for check in view.checks:
                against = check.params.get("against") if check.kind == "drift" else None
                if against is None or against == PREVIOUS:
                    continue
                known = self.registry.contracts() if known is None else known
                if against not in known or known[against].retired_at is not None:
                    active = sorted(n for n, c in known.items() if c.retired_at is None)
                    raise DefinitionError(
                        f"Drift against unknown training set '{against}' in view '{view.name}'; valid choices: "
                        f"'{PREVIOUS}' or a registered training contract ({', '.join(active) or 'none registered'}"
                        f"; skewless contract register)",
                        location=check.location,
                    )

    def apply(self) -> ApplyResult:
        """Store the definitions as a new plan version; a no-op when nothing changed.

        The plan is written only on top of the version it was diffed against: when another apply wrote one in
        between, nothing is written and a :class:`~features.errors.RegistryError` says to plan again.
        """
        new, diff, planned_against = self._plan_against_latest()
        version, created = self.registry.apply(new, planned_against=planned_against)
        self.registry.keep_function_sources(self._function_sources(new))
        self._cached_version = version
        return ApplyResult(version, created, diff)

    def _function_sources(self, plan: Plan) -> dict[str, tuple[str, str]]:
        """The module text of each request-time function of ``plan`` by its source fingerprint, as applied: a
        training contract's earlier version is served from it after the file changes."""
        folder = self.config.root / self.config.definitions
        out = {}
        for view in plan.on_demand_views:
            function = view.function
            if function is None or not function.module.startswith(folder.name + "."):
                continue
            path = folder.joinpath(*function.module.split(".")[1:]).with_suffix(".py")
            if path.is_file():
                out[function.source_fingerprint] = (function.module, path.read_text())
        return out

    def plan_version(self, *, max_age: float = 0.0) -> PlanVersion:
        """The latest applied plan, re-read from the registry when older than ``max_age`` seconds."""
        with self._lock:
            now = time.monotonic()
            if self._cached_version is None or now - self._checked_at >= max_age:
                latest = self.registry.latest()
                if latest is None:
                    raise RegistryError("no plan has been applied to the registry yet; run 'skewless apply'")
                if self._cached_version is None or latest.version != self._cached_version.version:
                    self._cached_version = latest
                self._checked_at = now
            return self._cached_version

    @cached_property
    def function_loader(self) -> FunctionLoader:
        """Imports the on-demand functions a plan names from this repository's definitions, checked against
        the plan's source fingerprints (see :mod:`features.functions`)."""
        return FunctionLoader(self.config.root / self.config.definitions, kept_sources=self.registry.function_source)

    # -- engines ----------------------------------------------------------------------------------------------
    @cached_property
    def offline(self) -> OfflineEngine:
        engine_class = load_plugin("skewless.offline_engines", self.config.offline_engine)
        engine: OfflineEngine = engine_class(self.config)
        return engine

    def online_store(self) -> OnlineStore:
        """The online store of this repository (opened once, then shared)."""
        return self._online

    @cached_property
    def _online(self) -> OnlineStore:
        store_class = load_plugin("skewless.online_stores", self.config.online_store)
        store: OnlineStore = store_class.from_config(self.config)
        return store

    # -- batch ------------------------------------------------------------------------------------------------
    def materialize(
        self,
        views: Sequence[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        progress: Progress | None = None,
        republish: bool = False,
        skip_checks: bool = False,
    ) -> list[MaterializationResult]:
        """Compute ``views`` (default: all) over ``[start, end)`` into Delta Lake and publish them online.

        Each run's checks (:mod:`features.checks`) are evaluated before it commits: a run that fails a blocking
        check is neither committed nor published, and is recorded as failed with its checks; when every failure
        is of that kind, :class:`~features.errors.ChecksFailedError` is raised (its ``reports`` hold each view's
        checks). ``skip_checks`` lets such runs publish, and records that it did.

        A view whose run commits nothing new to Delta is not published again while the online store already
        serves that table version (``online_current`` in its result); ``republish`` publishes it anyway.

        Views are independent (each has its own Delta table and its own atomic online publication), so up to
        ``offline.concurrent_views`` of them run at once. Every selected view is attempted even when another
        fails; each one that succeeded is recorded, then the failure is raised (a
        :class:`~features.errors.MaterializationError` naming every failed view when there are several).
        Results come back in the order the views were given.
        """
        version = self.plan_version()
        plan = version.plan
        names = list(dict.fromkeys(views)) if views else [v.name for v in plan.views]  # each view once
        selected = [plan.view(name) for name in names]
        online = self.online_store() if any(v.online for v in selected) else None
        engine = self.offline

        # Earlier definitions kept for training contracts run first: their snapshots are published before a live
        # run replaces the last snapshot of the old definition, so a lookup under a contract always finds one.
        kept = self._kept_versions(plan, {v.name for v in selected})
        if kept and online is None:
            online = self.online_store()
        jobs: list[_Job] = [*kept, *((plan, view, version.version) for view in selected)]

        def run(job: _Job) -> MaterializationResult:
            job_plan, view, plan_version = job
            result = engine.materialize(
                job_plan,
                view,
                start=start,
                end=end,
                online=online if view.online else None,
                progress=progress,
                republish=republish,
                plan_version=plan_version,  # each run is recorded in the registry where it runs
                skip_checks=skip_checks,
            )
            return dataclasses.replace(result, view=view.online_name)

        outcomes = [_attempt(run, job) for job in jobs[: len(kept)]]  # the kept ones first, then the live ones
        rest = jobs[len(kept) :]
        workers = min(self.config.concurrent_views, len(rest))
        if workers <= 1:
            outcomes += [_attempt(run, job) for job in rest]
        else:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="materialize")
            try:
                futures = [pool.submit(_attempt, run, job) for job in rest]
                outcomes += [future.result() for future in futures]
            finally:  # on Ctrl-C, views not started yet are dropped (running ones finish atomically, recorded)
                pool.shutdown(wait=False, cancel_futures=True)
        results: list[MaterializationResult] = []
        failures: list[tuple[str, BaseException]] = []
        for (_, view, _), (result, error) in zip(jobs, outcomes, strict=True):
            if result is None:
                assert error is not None
                failures.append((view.online_name, error))
                continue
            results.append(result)
        if len(failures) == 1:
            raise failures[0][1]
        if failures:
            listed = "; ".join(f"'{name}': {error}" for name, error in failures)
            done = ", ".join(f"'{r.view}'" for r in results) or "none"
            if all(isinstance(error, ChecksFailedError) for _, error in failures):
                reports = {k: v for _, e in failures for k, v in cast(ChecksFailedError, e).reports.items()}
                raise ChecksFailedError(
                    f"{len(failures)} of {len(jobs)} views failed their checks ({listed}); materialized: {done}",
                    reports,
                ) from failures[0][1]
            raise MaterializationError(
                f"{len(failures)} of {len(jobs)} views failed ({listed}); materialized: {done}"
            ) from failures[0][1]
        return results

    def _kept_versions(self, plan: Plan, names: set[str]) -> list[_Job]:
        """The earlier definitions of ``names`` that registered training contracts keep materialized (see
        :func:`features.contracts.kept_versions`): (their plan, the view, its plan version)."""
        if self.config.contract_versions <= 0:
            return []
        contracts = self.registry.contracts()
        if not contracts:
            return []
        from features.contracts import kept_versions

        found = kept_versions(plan, contracts, lambda v: self.registry.get(v).plan, self.config.contract_versions)
        return [(old, view, contracts[needed[0]].plan_version) for old, view, needed in found if view.name in names]

    def get_training_dataset(
        self,
        entities: Any,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        timestamp_column: str = "event_timestamp",
        output: str | None = None,
        output_format: str = "pandas",
    ) -> Any:
        """A point-in-time correct training set: for each entity row, each feature as of its timestamp.

        ``entities``: a pandas DataFrame, pyarrow Table or Spark DataFrame with the join keys and
        ``timestamp_column``. ``output``: a Parquet path; a manifest to rebuild it is written beside it.
        """
        version = self.plan_version()
        refs = version.plan.select(features=features, feature_service=feature_service)
        result = self.offline.training_dataset(
            version.plan,
            version.version,
            entities,
            refs,
            timestamp_column=timestamp_column,
            output=output,
            output_format=output_format,
        )
        if output is not None:  # a set written with its manifest: the catalog lists it in its views' lineage
            self._record_training_set(output, version.version, refs, feature_service)
        return result

    def _record_training_set(
        self, output: str, plan_version: int, refs: Sequence[Any], feature_service: str | None
    ) -> None:
        from pathlib import Path

        import pyarrow.parquet as pq

        rows = pq.read_metadata(output).num_rows  # the file's footer: whatever form the set was returned in
        path = str(Path(output).resolve())
        self.registry.record_training_set(
            TrainingSetRecord(
                output=path,
                manifest=f"{path}.manifest.json",
                plan_version=plan_version,
                features=tuple(str(r) for r in refs),
                rows=int(rows),
                created_at=datetime.now().astimezone(),
                feature_service=feature_service,
            )
        )

    def reproduce_training_dataset(self, manifest_path: str, *, output: str | None = None) -> Any:
        """Rebuild a dataset bit for bit from its manifest (the same plan version and Delta versions)."""
        import json

        with open(manifest_path) as f:
            manifest = json.load(f)
        plan = self.registry.get(int(manifest["plan_version"])).plan
        return self.offline.reproduce(plan, manifest_path, output=output)

    # -- online -----------------------------------------------------------------------------------------------
    def get_online_features(
        self,
        entities: Mapping[str, Sequence[Any]],
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        request_data: Mapping[str, Sequence[Any]] | None = None,
        trained_with: str | None = None,
    ) -> Any:
        """The latest published values for ``entities`` (columns of join-key values), read from the online
        store directly. Returns a :class:`features.lookup.LookupResult` (``.to_dict()``, ``.to_pandas()``).

        ``trained_with`` names a training contract (:meth:`register_contract`): the values are returned only
        when every requested feature (default: all of the contract's) still has the contracted definition;
        :class:`~features.errors.ContractConflictError` names those that changed otherwise.

        An on-demand function that raises gives :class:`features.on_demand.OnDemandFunctionError`; one whose
        source changed since the plan was applied, :class:`features.functions.FunctionLoadError`."""
        from features.lookup import prepare

        version = self.plan_version(max_age=1.0)
        plan = version.plan
        if trained_with is not None:
            plan, features = self.contract_cache.selection(
                plan, version.version, trained_with, features=features, feature_service=feature_service
            )
            feature_service = None
        compiled = prepare(plan, features=features, feature_service=feature_service)
        applied = plan is not version.plan  # a contract's earlier plan: its functions as they were applied
        functions = self.function_loader.functions_for(plan, applied=applied) if plan.on_demand_views else {}
        return compiled.run(
            self.online_store(),
            entities,
            plan_version=version.version,
            request_data=request_data,
            functions=functions,
        )

    def served_lookups(self, since: datetime | None = None) -> Any:
        """The lookups the served-feature log holds since ``since`` (pending batches are landed first), as a
        pandas DataFrame of entity rows: ``request_id``, ``served_at``, ``service``, ``plan_version``, the join
        keys and the request-data fields, one row per logged entity. Hand it to :meth:`get_training_dataset`
        with ``timestamp_column="served_at"`` for the features as of the instant each was served."""
        from features.served_log import entity_rows

        return entity_rows(self.offline.served_log(since))

    def audit(
        self,
        names: Sequence[str] = (),
        *,
        since: datetime | None = None,
        sample: int | None = None,
        recompute: bool = True,
    ) -> AuditResult:
        """Compare served values with the offline side, value by value (see :mod:`features.audit`): the lookups
        logged since ``since`` (pending batches are landed first), or with ``sample``, that many entity keys
        read from the online store now. ``names``: feature services or views to audit (default: every logged
        feature). ``recompute``: also recompute the views from their sources (layer 3). Changes no table, online
        key or registry row. :class:`~features.errors.AuditInputError` on bad input.

        >>> result = store.audit(["fraud_model"])                     # doctest: +SKIP
        >>> result.feature("card_profile__credit_limit").mismatch_rate  # doctest: +SKIP
        """
        from features import audit

        version = self.plan_version()
        plan = version.plan
        audit.check_since(since)
        selected = audit.select_features(plan, names)
        if sample is not None:
            log = audit.sample_log(self, plan, version.version, selected, sample)
        else:
            log = audit.only_features(self.offline.served_log(since), selected)
            audit.check_log(log, self.config.resolved_offline_path(), since, names)
        known = {v.version for v in self.registry.versions()}
        logged = audit.plan_versions(log, known)
        logged_plans = {v: self.registry.get(v).plan for v in logged}
        online = self.online_store()
        watermarks: dict[str, int | None] = {}
        for view in plan.views:
            if view.online:
                live = online.live_snapshot(view)
                watermarks[view.name] = None if live is None else live.watermark
        layers = self.offline.audit_layers(
            plan,
            version.version,
            log,
            logged_plans=logged_plans,
            watermarks=watermarks,
            recompute=recompute,
            rollbacks=audit.rollback_times(self.registry.rollbacks()),
        )
        return audit.result(version.version, "sample" if sample is not None else "log", log, layers, recompute)

    def push(self, view: str, rows: Any) -> PushResult:
        """Write fresh ``rows`` to ``view``: served online at once, and in its Delta table (so in training sets)
        from its next materialization. See :mod:`features.push`.

        ``rows`` (a pandas DataFrame, a pyarrow Table or a dict of lists) holds the view's source columns: its
        join keys, the source's timestamp column (and created column, if it has one) and the fields its features
        read. The features are computed by the same expressions and evaluator as a materialization's. Online,
        each entity takes its newest pushed row unless the row served is newer (event time, then created
        time). A :class:`~features.errors.PushError` names a missing, extra or mistyped column and changes
        nothing; views with windowed aggregations take no pushes.

        >>> store.push("card_profile", {"card_id": [7], "updated_at": [now], "ingested_at": [now],  # doctest: +SKIP
        ...     "credit_limit": [5000.0], "balance": [120.0], "card_tier": ["gold"], "is_blocked": [False]})
        """
        from features.push import push

        selected = self.plan_version(max_age=1.0).plan.view(view)
        online = self.online_store() if selected.online else None
        return push(selected, rows, offline=self.offline, online=online)

    @cached_property
    def contract_cache(self) -> ContractCache:
        """The registered contracts and what lookups under them read, refreshed at most once a second."""
        from features.contracts import ContractCache

        return ContractCache(
            self.registry.contracts,
            plan_of=lambda v: self.registry.get(v).plan,
            online=self.online_store(),
            function_kept=lambda fingerprint: self.registry.function_source(fingerprint) is not None,
        )

    def register_contract(self, manifest: str | os.PathLike[str], *, name: str) -> Contract:
        """Register the training set whose manifest is at ``manifest`` as the contract ``name`` (see
        :mod:`features.contracts`): lookups naming it are served only the contracted definitions. Registering
        the same manifest under the same name again is a no-op."""
        from features.contracts import from_manifest
        from features.rollback import who

        contract, _ = self.registry.register_contract(from_manifest(name, manifest, self.registry), by=who())
        return contract

    def retire_contract(self, name: str) -> Contract:
        """Retire the contract ``name``: lookups naming it get an unknown-contract error from now on."""
        return self.registry.retire_contract(name)

    def rollback(self, view: str, *, to: str | None = None) -> RollbackResult:
        """Serve an earlier published snapshot of ``view`` again, at once (``to``: its snapshot version; default
        the newest kept one older than the live one), and hold the view: runs still commit to its Delta table but
        are not published until :meth:`release`. Recorded in the registry. See :mod:`features.rollback`."""
        from features.rollback import rollback

        return rollback(self.online_store(), self.registry, self._online_view(view), to=to)

    def release(self, view: str) -> str | None:
        """End the hold of a rollback of ``view``: its next run publishes again. The hold ended, or None."""
        from features.rollback import release

        return release(self.online_store(), self.registry, self._online_view(view))

    def kept_snapshots(self, view: str) -> list[LiveSnapshot]:
        """The published snapshots of ``view`` the online store keeps (``online.keep_snapshots``), newest first."""
        from features.rollback import kept_snapshots

        return kept_snapshots(self.online_store(), self._online_view(view))

    def _online_view(self, name: str) -> ViewPlan:
        selected = self.plan_version(max_age=1.0).plan.view(name)
        if not selected.online:
            raise OnlineStoreError(f"view '{name}' is offline-only (online=False): it has no online snapshots")
        return selected

    def close(self) -> None:
        """Close the online store and registry connections. The Spark session is the process's (one per
        process, shared by every store and by the user's own Spark code): stop it with ``store.offline.stop()``
        when the process has no more Spark work."""
        if "_online" in self.__dict__:
            self._online.close()
        if "registry" in self.__dict__:
            self.registry.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attempt(
    run: Callable[[_Job], MaterializationResult], job: _Job
) -> tuple[MaterializationResult | None, Exception | None]:
    """``run(job)``'s result, or the exception it raised (one view's failure must not stop the others)."""
    try:
        return run(job), None
    except Exception as exc:
        return None, exc
