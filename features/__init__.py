"""skewless: define features once in Python; train and serve the same values.

The definitions SDK, the compiled plan, the registry, and the :class:`FeatureStore` facade.
"""

from features.checks import AllowedValues, Drift, MaxNulls, Range, RowCount, UniqueKeys
from features.definitions import (
    Aggregation,
    Entity,
    Feature,
    FeatureRef,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    RequestSource,
    SqlSource,
    on_demand_function,
)
from features.dtypes import Bool, DType, Float64, Int64, String, Timestamp
from features.errors import (
    ChecksFailedError,
    ConfigError,
    DefinitionError,
    EntityKeyError,
    MaterializationError,
    OnlineStoreError,
    PushConflictError,
    PushError,
    RegistryError,
    SchemaMismatchError,
    SkewlessError,
    UnknownNameError,
)
from features.functions import FunctionLoadError
from features.on_demand import OnDemandFunctionError
from features.store import FeatureStore

__all__ = [
    "Aggregation",
    "AllowedValues",
    "Bool",
    "ChecksFailedError",
    "ConfigError",
    "DType",
    "DefinitionError",
    "Drift",
    "Entity",
    "EntityKeyError",
    "Feature",
    "FeatureRef",
    "FeatureService",
    "FeatureStore",
    "FeatureView",
    "Float64",
    "FunctionLoadError",
    "Int64",
    "MaterializationError",
    "MaxNulls",
    "OnDemandFeatureView",
    "OnDemandFunctionError",
    "OnlineStoreError",
    "PushConflictError",
    "PushError",
    "Range",
    "RegistryError",
    "RequestSource",
    "RowCount",
    "SchemaMismatchError",
    "SkewlessError",
    "SqlSource",
    "String",
    "Timestamp",
    "UniqueKeys",
    "UnknownNameError",
    "on_demand_function",
]
