"""On-demand functions for the serving tests: good ones, and ones that fail on purpose.

Plans in the tests name them by module and qualified name, as a compiled plan would.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def amount_shape(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas mode: a ratio, a logarithm (no expression says it) and whole cents."""
    amount = frame["req.amount"]
    return pd.DataFrame(
        {
            "ratio": amount / frame["card.limit"],
            "log_amount": amount.map(lambda v: math.log10(v) if v > 0 else float("nan")),
            "cents": (amount * 100).round().astype("Int64"),
        }
    )


def shout_tier(table: pa.Table) -> dict[str, Any]:
    """arrow mode: gets a pyarrow Table, returns a dict of Arrow arrays."""
    return {"tier_upper": pc.utf8_upper(table.column("card.tier"))}


def explode(frame: pd.DataFrame) -> pd.DataFrame:
    raise ZeroDivisionError("the model's favourite number is zero")


def wrong_type(frame: pd.DataFrame) -> dict[str, Any]:
    return {"n": ["not a number"] * len(frame)}


def wrong_columns(frame: pd.DataFrame) -> dict[str, Any]:
    return {"m": [1] * len(frame)}
