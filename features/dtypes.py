"""The value types a feature or key can have, shared by every engine.

Each type names its Arrow type so the offline engine, the online store and the HTTP layer agree on one
physical representation. Timestamps are always UTC with microsecond precision.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

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


Int64 = DType.INT64
Float64 = DType.FLOAT64
String = DType.STRING
Bool = DType.BOOL
Timestamp = DType.TIMESTAMP
