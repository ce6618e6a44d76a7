"""skewless offline: the Spark engine, JDBC sources, Delta Lake feature tables and point-in-time joins.

Importing this package does not import pyspark; the session starts on first use.
"""

from offline.datasets import DatasetError, reproduce, training_dataset
from offline.engine import SparkEngine
from offline.materialize import materialize
from offline.point_in_time import ViewInput, point_in_time_join
from offline.session import JavaNotFoundError, get_spark, stop_spark
from offline.translate import SparkTranslator, UnsupportedExpressionError, to_spark

__all__ = [
    "DatasetError",
    "JavaNotFoundError",
    "SparkEngine",
    "SparkTranslator",
    "UnsupportedExpressionError",
    "ViewInput",
    "get_spark",
    "materialize",
    "point_in_time_join",
    "reproduce",
    "stop_spark",
    "to_spark",
    "training_dataset",
]
