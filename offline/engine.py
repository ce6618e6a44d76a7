"""The Spark offline engine, loaded by name through the ``skewless.offline_engines`` entry point."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.plan import EVENT_TIMESTAMP, FeatureRefPlan, Plan, ViewPlan
from features.protocols import MaterializationResult, OnlineStore, Progress
from offline import arrow_materialize, daemon, datasets
from offline import materialize as materialize_module
from offline.session import get_spark, stop_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SparkEngine:
    """:class:`features.protocols.OfflineEngine` on Spark and Delta Lake.

    The Spark session starts on first use (``offline.spark`` settings of ``skewless.yaml`` apply) and is
    shared by every engine of the process. While the repository's warm engine runs (``skewless engine
    start``, :mod:`offline.daemon`), jobs go there instead, unless ``in_process``.

    >>> engine = SparkEngine(RepoConfig.load("."))                          # doctest: +SKIP
    >>> engine.materialize(plan, plan.view("card_txn"), start=None, end=None, online=None)  # doctest: +SKIP
    """

    def __init__(self, config: RepoConfig, *, in_process: bool = False) -> None:
        self.config = config
        self.in_process = in_process

    def _warm_engine(self) -> daemon.EngineClient | None:
        return None if self.in_process else daemon.connect(self.config)

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
        republish: bool = False,
    ) -> MaterializationResult:
        """Compute ``view`` for ``start <= event time < end`` into Delta, then publish it online (unless the
        online store already serves that table version and not ``republish``).

        A view without aggregations whose rows fit (:mod:`offline.arrow_materialize`) is materialized right
        here in Arrow, without Spark; any other goes to the warm engine when one runs, else to this process's
        session."""
        in_arrow = arrow_materialize.materialize(
            self.config, view, start=start, end=end, online=online, progress=progress, republish=republish
        )
        if in_arrow is not None:
            return in_arrow
        warm = self._warm_engine()
        if warm is not None:
            # The engine publishes to the repository's online store, opened from the same settings.
            with warm:
                result: MaterializationResult = warm.call(
                    "materialize",
                    plan,
                    view,
                    start=start,
                    end=end,
                    online=online is not None,
                    progress=progress,
                    republish=republish,
                )
                return result
        return materialize_module.materialize(
            self.spark,
            self.config,
            plan,
            view,
            start=start,
            end=end,
            online=online,
            progress=progress,
            republish=republish,
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
        """A point-in-time training set; see :func:`offline.datasets.training_dataset`.

        A set that can be joined in Arrow (:func:`offline.datasets.arrow_join_problem`) is joined right here,
        without Spark; any other goes to the warm engine when one runs, else to this process's session. Spark
        DataFrames in or out belong to this process's session: those never go to the warm engine.
        """
        spark_io = output_format == "spark" or datasets.is_spark(entities)
        if not spark_io:
            entities = datasets.as_arrow(entities)
            manifest = datasets.describe(
                self.config, plan, plan_version, refs, timestamp_column=timestamp_column, output_format=output_format
            )
            if datasets.arrow_join_problem(self.config, manifest, entities) is None:
                return datasets.build(lambda: self.spark, self.config, manifest, entities, output, join="arrow")[0]
        warm = None if spark_io else self._warm_engine()
        if warm is not None:
            with warm:
                return warm.call(
                    "training_dataset",
                    plan,
                    plan_version,
                    entities,
                    refs,
                    timestamp_column=timestamp_column,
                    output=_absolute(output),
                    output_format=output_format,
                )
        return datasets.training_dataset(
            lambda: self.spark,
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
        """Rebuild a training set from its manifest with Delta time travel (in Arrow when it can be)."""
        if datasets.can_reproduce_in_arrow(self.config, manifest_path):
            return datasets.reproduce(lambda: self.spark, self.config, plan, manifest_path, output=output, join="arrow")
        warm = self._warm_engine()
        if warm is not None:
            with warm:
                return warm.call("reproduce", plan, _absolute(manifest_path), output=_absolute(output))
        return datasets.reproduce(lambda: self.spark, self.config, plan, manifest_path, output=output)

    def stop(self) -> None:
        """Stop the process's Spark session."""
        stop_spark()


def _absolute(path: str | None) -> str | None:
    """``path`` as the caller means it: relative to the caller's folder, not the warm engine's."""
    return None if path is None or "://" in path else os.path.abspath(path)
