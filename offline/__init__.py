"""skewless offline: the batch engines behind one router, Delta Lake feature tables and point-in-time joins.

``offline.router.Router`` picks, per job, the first engine that takes it: ``offline.arrow`` (in this process, no
JVM), ``offline.warm`` (the repository's long-lived Spark process) or ``offline.spark`` (a Spark session here).
Importing this package does not import pyspark; a Spark session starts on first use.
"""

from offline.jobs import Engine, JoinedSet, Materialization, TrainingSet
from offline.manifest import DatasetError, Manifest
from offline.router import Router

__all__ = [
    "DatasetError",
    "Engine",
    "JoinedSet",
    "Manifest",
    "Materialization",
    "Router",
    "TrainingSet",
]
