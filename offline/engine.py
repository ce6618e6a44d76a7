"""The Spark offline engine, loaded by name through the ``skewless.offline_engines`` entry point."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.plan import EVENT_TIMESTAMP, FeatureRefPlan, Plan, ViewPlan
from features.protocols import MaterializationResult, OnlineStore, Progress
from offline import datasets
from offline import materialize as materialize_module
from offline.session import get_spark, stop_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SparkEngine:
    """:class:`features.protocols.OfflineEngine` on Spark and Delta Lake.

    The Spark session starts on first use (``offline.spark`` settings of ``skewless.yaml`` apply) and is
    shared by every engine of the process.

    >>> engine = SparkEngine(RepoConfig.load("."))                          # doctest: +SKIP
    >>> engine.materialize(plan, plan.view("card_txn"), start=None, end=None, online=None)  # doctest: +SKIP
    """

    def __init__(self, config: RepoConfig) -> None:
        self.config = config

    @property
    def spark(self) -> SparkSession:
        return get_spark(self.config)

    def materialize(
        self,
        plan: Plan,
        view: ViewPlan,
        *,
        start: datetime | None,
        end: datetime | None,
        online: OnlineStore | None,
        progress: Progress | None = None,
    ) -> MaterializationResult:
        """Compute ``view`` for ``start <= event time < end`` into Delta, then publish it online."""
        return materialize_module.materialize(
            self.spark, self.config, plan, view, start=start, end=end, online=online, progress=progress
        )

    def training_dataset(
        self,
        plan: Plan,
        plan_version: int,
        entities: Any,
        refs: Sequence[FeatureRefPlan],
        *,
        timestamp_column: str = EVENT_TIMESTAMP,
        output: str | None = None,
        output_format: str = "pandas",
    ) -> Any:
        """A point-in-time training set; see :func:`offline.datasets.training_dataset`."""
        return datasets.training_dataset(
            self.spark,
            self.config,
            plan,
            plan_version,
            entities,
            refs,
            timestamp_column=timestamp_column,
            output=output,
            output_format=output_format,
        )

    def reproduce(self, plan: Plan, manifest_path: str, *, output: str | None = None) -> Any:
        """Rebuild a training set from its manifest with Delta time travel."""
        return datasets.reproduce(self.spark, self.config, plan, manifest_path, output=output)

    def stop(self) -> None:
        """Stop the process's Spark session."""
        stop_spark()
