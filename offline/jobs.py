"""The jobs of the offline side, and the protocol every engine implements to run them.

An engine says up front, cheaply and before reading any data, whether it takes a job (:meth:`Engine.refusal`:
None, or the reason it does not); :class:`offline.router.Router` asks the engines in order and gives the job to
the first that takes it. Jobs are plain picklable data, so the warm engine can take them over a connection.

Engines today, in the order the router asks them:

- ``arrow`` (:mod:`offline.arrow.engine`): in this process with Arrow and NumPy, no JVM; views without
  aggregations and training sets whose tables fit in memory.
- ``warm`` (:mod:`offline.warm.client`): the repository's long-lived Spark process, while one runs.
- ``spark`` (:mod:`offline.spark.engine`): a Spark session in this process (local, or any cluster by
  ``spark.master``); it takes every job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from features.checks import Baseline
from features.plan import Plan, ViewPlan
from offline.manifest import Manifest

if TYPE_CHECKING:
    import pyarrow as pa

    from features.protocols import MaterializationResult, OnlineStore, Progress


@dataclass(frozen=True, slots=True)
class Materialization:
    """Compute ``view`` for source rows with ``start <= event time < end`` into its Delta table, then publish
    the latest row per entity online (unless the online store already serves that table version and not
    ``republish``). ``plan_version``: the registry's version of ``plan``; a job that has one is recorded in the
    registry's run history by the process that runs it (see :mod:`offline.runs`), with ``rows_landed``, the
    pushed rows the router landed in the table just before (:mod:`offline.pushed`)."""

    plan: Plan
    view: ViewPlan
    start: datetime | None
    end: datetime | None
    republish: bool = False
    plan_version: int | None = None
    rows_landed: int = 0
    #: What the run's checks compare it with (the previous run, training sets), and ``--skip-checks``.
    baseline: Baseline = field(default_factory=Baseline)

    def __str__(self) -> str:
        return f"view '{self.view.name}'"


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Join the features of ``manifest`` onto ``entities`` (pandas, Arrow or a Spark DataFrame) point-in-time,
    then add its on-demand features. The manifest already pins every table version."""

    manifest: Manifest
    entities: Any

    def __str__(self) -> str:
        return "the training set"


Job = Materialization | TrainingSet


@dataclass(frozen=True, slots=True)
class JoinedSet:
    """A training set as an engine returns it: as Arrow (``table``) whenever it reached this process, and as a
    Spark DataFrame (``frame``) when it stays in Spark or is asked for as one. ``joined_in``: the engine whose
    code joined it ("arrow" or "spark"; the warm engine joins in Spark)."""

    joined_in: str
    table: pa.Table | None
    frame: Any = None


class Engine(Protocol):
    """One way of running offline jobs. Every engine gives the same values for the jobs it takes (the
    conformance suite holds each to the same oracles); they differ in what they take and what it costs."""

    #: A short name: what logs, run summaries and manifests say ran a job.
    name: str
    #: Whether the engine runs jobs in another process (the warm engine). That process records the
    #: materializations it runs (:mod:`offline.runs`); the router records those of the engines in its own.
    remote: bool

    def refusal(self, job: Job) -> str | None:
        """Why this engine does not take ``job``, or None when it does. Cheap: reads metadata (plans, Delta
        logs, a database's catalog), never the job's rows."""
        ...

    def materialize(
        self, job: Materialization, online: OnlineStore | None, progress: Progress | None
    ) -> MaterializationResult: ...

    def training_set(self, job: TrainingSet) -> JoinedSet: ...

    def stop(self) -> None:
        """Release what the engine holds (a Spark session, a connection); the next job starts it again."""
        ...
