"""The one place that chooses where an offline job runs.

:class:`Router` is the offline engine the facade loads (``skewless.offline_engines`` entry point; it implements
:class:`features.protocols.OfflineEngine`). For each job it asks the engines in order whether they take it
(:meth:`offline.jobs.Engine.refusal`, before any data is read) and hands it to the first that does: Arrow in
this process, then the repository's warm engine, then Spark in this process. Why the engines before it did not
take the job is logged, and kept in the run's result (``MaterializationResult.refusals``) and in a training
set's manifest (``joined_in``, ``refusals``).

It also does what every engine's training set shares around the join: the manifest, the copy of the entity
rows and the set written beside it, the output format, and the hash check of a reproduced set.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from features.checks import Baseline
from features.config import RepoConfig
from features.errors import MaterializationError, SkewlessError
from features.plan import EVENT_TIMESTAMP, FeatureRefPlan, Plan, ViewPlan
from features.protocols import MaterializationResult, OnlineStore, Progress
from features.run_stats import table_stats
from offline import pushed
from offline.arrow.engine import ArrowEngine
from offline.datasets import as_arrow, describe, is_spark
from offline.jobs import Engine, Job, JoinedSet, Materialization, TrainingSet
from offline.manifest import DatasetError, FileRecord, Manifest, table_sha256
from offline.runs import baseline, run_and_record
from offline.warm.client import WarmEngine

if TYPE_CHECKING:
    import pyarrow as pa

    from features.audit import FeatureLayers, Rollback

log = logging.getLogger(__name__)

ENGINE_NAMES = ("arrow", "warm", "spark")


def default_engines(config: RepoConfig, *, in_process: bool = False) -> list[Engine]:
    """The engines in the order they are asked: no JVM beats a warm one, a warm one beats a new session.
    ``in_process``: never the warm engine."""
    from offline.spark.engine import SparkEngine

    engines: list[Engine] = [ArrowEngine(config)]
    if not in_process:
        engines.append(WarmEngine(config))
    engines.append(SparkEngine(config))
    return engines


class Router:
    """:class:`features.protocols.OfflineEngine` over every engine of :func:`default_engines` (or ``engines``).

    >>> router = Router(RepoConfig.load("."))                                 # doctest: +SKIP
    >>> router.materialize(plan, plan.view("card_txn"), start=None, end=None, online=None)  # doctest: +SKIP
    """

    def __init__(self, config: RepoConfig, *, in_process: bool = False, engines: Sequence[Engine] | None = None):
        self.config = config
        self.engines: list[Engine] = (
            list(engines) if engines is not None else default_engines(config, in_process=in_process)
        )

    # -- choosing ------------------------------------------------------------------------------------------------
    def route(self, job: Job, *, only: str | None = None) -> tuple[Engine, dict[str, str]]:
        """The engine that runs ``job``, and why each engine asked before it did not take it. ``only``: that
        engine or an error saying why it does not take the job."""
        refusals: dict[str, str] = {}
        known = [engine.name for engine in self.engines]
        if only is not None and only not in known:
            raise _error(job, f"unknown engine {only!r}; valid choices: {', '.join(known)}")
        for engine in self.engines:
            if only is not None and engine.name != only:
                continue
            reason = engine.refusal(job)
            if reason is None:
                if refusals:
                    why = "; ".join(f"not {name}: {text}" for name, text in refusals.items())
                    log.info("%s: runs in %s (%s)", job, engine.name, why)
                else:
                    log.info("%s: runs in %s", job, engine.name)
                return engine, refusals
            refusals[engine.name] = reason
        if only is not None:
            raise _error(job, f"{job} cannot {_verb(job)} in {only.capitalize()}: {refusals[only]}")
        raise _error(job, f"no engine takes {job}: " + "; ".join(f"{n}: {r}" for n, r in refusals.items()))

    # -- materialization -------------------------------------------------------------------------------------------
    def materialize(
        self,
        plan: Plan,
        view: ViewPlan,
        *,
        start: datetime | None,
        end: datetime | None,
        online: OnlineStore | None,
        progress: Progress | None = None,
        republish: bool = False,
        engine: str | None = None,
        plan_version: int | None = None,
        skip_checks: bool = False,
    ) -> MaterializationResult:
        """Compute ``view`` for ``start <= event time < end`` into Delta, then publish it online (unless the
        online store already serves that table version and not ``republish``), in the first engine that takes
        it (or in ``engine``). With ``plan_version``, the run is recorded in the registry where it runs, so a
        caller that goes away (Ctrl-C) never leaves a run the engine finished out of the history."""
        # Pushed rows land first, whichever engine runs: the run then reads them as stored rows (its refusals
        # see the table as it will be read) and publishes them with the rest.
        landed = pushed.land(self.config, view) if not view.is_windowed else 0
        # A job the registry does not record (a test's, the audit's recomputation) has no previous run to compare.
        checked_against = (
            baseline(self.config, view, start=start, skip=skip_checks)
            if plan_version is not None
            else Baseline(skip=skip_checks)
        )
        job = Materialization(
            plan, view, start, end, republish, plan_version, rows_landed=landed, baseline=checked_against
        )
        chosen, refusals = self.route(job, only=engine)
        if chosen.remote:
            result = chosen.materialize(job, online, progress)  # recorded there (offline.warm.server)
        else:
            result = run_and_record(self.config, job, chosen, online, progress)
        return dataclasses.replace(result, refusals=tuple(refusals.items()))

    # -- pushes ------------------------------------------------------------------------------------------------------
    def record_push(self, view: ViewPlan, rows: pa.Table) -> str:
        """Keep a push's computed rows for the next materialization of ``view`` (:mod:`offline.pushed`)."""
        return pushed.record(self.config, view, rows)

    def discard_push(self, view: ViewPlan, handle: str) -> None:
        """Drop the rows of a push whose online step failed (:mod:`offline.pushed`)."""
        pushed.discard(self.config, view, handle)

    # -- training sets ---------------------------------------------------------------------------------------------
    def training_dataset(
        self,
        plan: Plan,
        plan_version: int,
        entities: Any,
        refs: Sequence[FeatureRefPlan | str],
        *,
        timestamp_column: str = EVENT_TIMESTAMP,
        output: str | None = None,
        output_format: str = "pandas",
        engine: str | None = None,
    ) -> Any:
        """Join ``refs`` onto ``entities`` point-in-time; returns pandas, a Spark DataFrame or a pyarrow Table.

        ``entities`` (pandas, pyarrow or Spark) holds the join keys of every referenced view and
        ``timestamp_column``. The columns come back as given, in order, followed by ``<view>__<feature>``. With
        ``output`` (a Parquet path) the set is written there, with ``<output>.manifest.json`` and
        ``<output>.entities.parquet`` beside it: all :meth:`reproduce` needs. Every engine gives the same set.
        """
        manifest = describe(
            self.config, plan, plan_version, refs, timestamp_column=timestamp_column, output_format=output_format
        )
        return self._build(manifest, entities, output, engine)[0]

    def reproduce(self, plan: Plan, manifest_path: str, *, output: str | None = None, engine: str | None = None) -> Any:
        """Rebuild the training set of a manifest, reading each table at the recorded version. The result equals
        the original (its sha256 is checked), whichever engine joins it; a :class:`DatasetError` says why it
        cannot be."""
        import pyarrow.parquet as pq

        manifest = Manifest.load(manifest_path)
        for ref, fingerprint in manifest.feature_fingerprints.items():
            view_name, _, feature = ref.partition(":")
            try:
                current: str | None = plan.feature_plan(FeatureRefPlan(view_name, feature)).fingerprint
            except SkewlessError:
                current = None
            if current != fingerprint:
                log.warning("feature %s changed since the dataset was built; reproducing the recorded values", ref)
        if manifest.entities is None or manifest.result is None:
            raise DatasetError(f"{manifest_path} records no entity rows or result: it was built without an output")
        entities = pq.read_table(manifest.entities.path)
        if table_sha256(entities) != manifest.entities.sha256:
            raise DatasetError(f"the entity rows in {manifest.entities.path} changed since the manifest was written")
        expected = manifest.result.sha256
        manifest = manifest.replace(created_at=datetime.now(UTC).isoformat())
        result, table = self._build(manifest, entities, output, engine)
        if table is None or table_sha256(table) != expected:
            raise DatasetError("the reproduced dataset differs from the original (was an old Delta version vacuumed?)")
        return result

    def _build(self, manifest: Manifest, entities: Any, output: str | None, only: str | None) -> tuple[Any, Any]:
        """Run the join of ``manifest``; with ``output``, write the set, the entities and the manifest. Returns the
        set in the manifest's output format, and as Arrow when it reached this process."""
        import pyarrow.parquet as pq

        if not is_spark(entities):
            entities = as_arrow(entities)
        if output is not None:
            if is_spark(entities):
                entities = entities.toArrow()
            path = f"{output}.entities.parquet"
            pq.write_table(entities, path)
            entities = pq.read_table(path)  # the copy on disk is the canonical entity table: what reproduce reads
            manifest = manifest.replace(entities=FileRecord.of(path, entities))
        manifest.check_entity_columns(list(entities.column_names if not is_spark(entities) else entities.columns))
        engine, refusals = self.route(TrainingSet(manifest, entities), only=only)
        joined: JoinedSet = engine.training_set(TrainingSet(manifest, entities))
        manifest = manifest.replace(joined_in=joined.joined_in, refusals=refusals)
        table: pa.Table | None = joined.table
        if output is not None:
            assert table is not None  # written entity rows are Arrow: every engine returns the set as Arrow
            pq.write_table(table, output)
            stats = table_stats(table, [c for c in table.column_names if c not in entities.column_names])
            manifest.replace(result=FileRecord.of(output, table), stats=stats).write(f"{output}.manifest.json")
        if joined.frame is not None and (table is None or manifest.output_format == "spark"):
            frame = joined.frame
            converted = {"spark": lambda: frame, "pandas": frame.toPandas, "arrow": frame.toArrow}
            return converted[manifest.output_format](), table
        assert table is not None
        return (table if manifest.output_format == "arrow" else table.to_pandas()), table

    # -- the consistency audit -----------------------------------------------------------------------------------
    def served_log(self, since: datetime | None = None) -> pa.Table:
        """Land the serving workers' pending batches of logged lookups, then the log's rows served since ``since``
        (:mod:`offline.served_log`)."""
        from offline import served_log

        served_log.land(self.config)
        return served_log.read(self.config, since=since)

    def audit_layers(
        self,
        plan: Plan,
        plan_version: int,
        log: pa.Table,
        *,
        logged_plans: Mapping[int, Plan],
        watermarks: Mapping[str, int | None],
        recompute: bool = True,
        rollbacks: Mapping[str, Sequence[Rollback]] | None = None,
    ) -> list[FeatureLayers]:
        """The offline layers of the audit of ``log`` (:mod:`offline.audit`): joined by the engine this router
        chooses for each join, recomputed (``recompute``) by the engine it chooses for each view, into a scratch
        path, with no online store and nothing recorded."""
        from offline.audit import audit_layers

        def join(manifest: Manifest, entities: pa.Table) -> pa.Table:
            table: pa.Table = self._build(manifest, entities, None, None)[0]
            return table

        def rematerialize(config: RepoConfig, plan: Plan, view: ViewPlan) -> None:
            # The recomputation is compared, never published: a check must not stop it (rows published under
            # --skip-checks are part of what the audit compares).
            Router(config, in_process=True).materialize(plan, view, start=None, end=None, online=None, skip_checks=True)

        return audit_layers(
            self.config,
            plan,
            plan_version,
            log,
            join=join,
            logged_plans=logged_plans,
            watermarks=watermarks,
            recompute=rematerialize if recompute else None,
            rollbacks=rollbacks,
        )

    def stop(self) -> None:
        """Release what every engine holds (the process's Spark session among them)."""
        for engine in self.engines:
            engine.stop()


def _verb(job: Job) -> str:
    return "be joined" if isinstance(job, TrainingSet) else "be materialized"


def _error(job: Job, message: str) -> SkewlessError:
    if isinstance(job, TrainingSet):
        return DatasetError(message)
    return MaterializationError(message)
