"""The value types a feature or key can have, shared by every engine.

Each type names its Arrow type so the offline engine, the online store and the HTTP layer agree on one
physical representation. Timestamps are always UTC with microsecond precision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch (how stores and the read path carry times); a naive datetime is UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _MICRO


def from_micros(micros: int) -> datetime:
    """The UTC datetime ``micros`` microseconds after the epoch (exact, no float rounding)."""
    return EPOCH + timedelta(microseconds=micros)


class DType(enum.Enum):
    """A feature or join-key value type."""

    INT64 = "int64"
    FLOAT64 = "float64"
    STRING = "string"
    BOOL = "bool"
    TIMESTAMP = "timestamp"

    @property
    def is_numeric(self) -> bool:
        return self in (DType.INT64, DType.FLOAT64)

    @classmethod
    def parse(cls, value: DType | str) -> DType:
        """Accept a DType or its name (``"int64"``); raise ValueError naming the valid choices."""
        if isinstance(value, DType):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown dtype {value!r}; valid choices: {valid}") from None

    def accepts(self, other: DType) -> bool:
        """Whether a value of type ``other`` may be stored as this type without an explicit cast."""
        return other is self or (self is DType.FLOAT64 and other is DType.INT64)


@dataclass(frozen=True, slots=True)
class TypeNames:
    """What one plan type is called by each system that holds its values."""

    arrow: str  # Arrow's name of the type (str() of the pyarrow type; timestamps: microseconds, UTC)
    spark: str  # the pyspark.sql.types class
    delta: str  # the type name in a Delta table's schema string
    pandas: str  # the pandas dtype of a column of it (nullable where pandas has one)


#: The one table of type names: every engine, store and format derives its types from it.
TYPE_NAMES: dict[DType, TypeNames] = {
    DType.INT64: TypeNames(arrow="int64", spark="LongType", delta="long", pandas="Int64"),
    DType.FLOAT64: TypeNames(arrow="double", spark="DoubleType", delta="double", pandas="float64"),
    DType.STRING: TypeNames(arrow="string", spark="StringType", delta="string", pandas="object"),
    DType.BOOL: TypeNames(arrow="bool", spark="BooleanType", delta="boolean", pandas="boolean"),
    DType.TIMESTAMP: TypeNames(
        arrow="timestamp[us, tz=UTC]", spark="TimestampType", delta="timestamp", pandas="datetime64[us, UTC]"
    ),
}


def arrow_type(dtype: DType) -> pa.DataType:
    """The Arrow type of a plan type (pyarrow imported on first use)."""
    import pyarrow as pa

    if dtype is DType.TIMESTAMP:
        return pa.timestamp("us", tz="UTC")
    return pa.type_for_alias(TYPE_NAMES[dtype].arrow)


Int64 = DType.INT64
Float64 = DType.FLOAT64
String = DType.STRING
Bool = DType.BOOL
Timestamp = DType.TIMESTAMP
