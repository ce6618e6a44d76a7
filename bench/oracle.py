"""The independent answer to a point-in-time training set, with pandas ``merge_asof``, and the comparison.

Neither system's code is used here. The rule (docs/ARCHITECTURE.md, "Point-in-time rule"): for an entity row
at time ``t``, each view gives its latest row with ``event_ts <= t`` and ``t - event_ts <= ttl`` (exactly at
the TTL is still valid), ties on event time going to the later ``created_ts``, and rows tied on created time too
going to the one whose feature values sort first (in order, ascending, nulls first); otherwise nulls.

>>> expected = training_set(entities, {"v": (frame, timedelta(days=1), ["x"])})   # doctest: +SKIP
>>> compare(expected, result, ["v__x"])                                            # doctest: +SKIP
{'rows_expected': 3, 'rows_returned': 3, 'rows_lost': 0, 'rows_extra': 0, 'rows_wrong': 0, 'values_wrong': 0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pandas as pd


def training_set(
    entities: pd.DataFrame,
    views: Mapping[str, tuple[pd.DataFrame, timedelta, Sequence[str]]],
    *,
    key: str = "user_id",
    timestamp: str = "ts",
) -> pd.DataFrame:
    """``entities`` (with ``row_id``, ``key``, ``timestamp``) plus ``<view>__<feature>`` columns, in input order.

    ``views`` maps a view name to (its rows with ``key``, ``event_ts``, ``created_ts`` and the features, its
    TTL, the features to take).
    """
    left = entities[["row_id", key, timestamp]].copy()
    left[timestamp] = pd.to_datetime(left[timestamp], utc=True)
    left = left.sort_values(timestamp, kind="stable")
    out = entities.copy()
    for name, (frame, ttl, features) in views.items():
        right = frame[[key, "event_ts", "created_ts", *features]].copy()
        right["event_ts"] = pd.to_datetime(right["event_ts"], utc=True)
        right["created_ts"] = pd.to_datetime(right["created_ts"], utc=True)
        # Ties on event time: keep the row with the latest created time (merge_asof takes the last row among
        # equal keys only when they are sorted that way, so make it explicit); among rows equal in created
        # time too, the one whose values sort first: sorted descending (nulls after) so that it comes last.
        right = right.sort_values(
            [key, "event_ts", "created_ts", *features],
            ascending=[True, True, True, *([False] * len(features))],
            na_position="last",
            kind="stable",
        )
        right = right.drop_duplicates([key, "event_ts"], keep="last")
        right = right.rename(columns={f: f"{name}__{f}" for f in features})
        right = right.sort_values("event_ts", kind="stable")
        joined = pd.merge_asof(
            left, right, left_on=timestamp, right_on="event_ts", by=key, direction="backward", allow_exact_matches=True
        )
        expired = (joined[timestamp] - joined["event_ts"]) > pd.Timedelta(ttl)
        columns = [f"{name}__{f}" for f in features]
        for column in columns:
            joined[column] = joined[column].astype(object).mask(expired | joined["event_ts"].isna(), None)
        values = joined.set_index("row_id")[columns]
        for column in columns:
            out[column] = out["row_id"].map(values[column])
    return out


def compare(expected: pd.DataFrame, result: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """Rows lost (an expected ``row_id`` missing), extra (a ``row_id`` returned more than once, or unknown),
    rows with at least one wrong value, wrong values in all, and (when ``expected`` has a ``kind`` column) the
    lost or wrong rows per kind. Nulls (None, NaN, NaT) equal each other;
    floats equal within 1e-9 relative; ints and floats compare as numbers (Feast returns nullable ints as
    floats)."""
    counts = result["row_id"].value_counts()
    expected_ids = set(expected["row_id"])
    extra = int((counts - 1).clip(lower=0).sum()) + int(sum(c for rid, c in counts.items() if rid not in expected_ids))
    lost = len(expected_ids - set(counts.index))
    got = result.drop_duplicates("row_id").set_index("row_id")
    want = expected.set_index("row_id")
    common = want.index.intersection(got.index)
    rows_wrong = 0
    values_wrong = 0
    by_kind: dict[str, int] = {}
    kinds = want["kind"] if "kind" in want.columns else None
    for row_id in want.index.difference(got.index):
        if kinds is not None:
            by_kind[str(kinds.at[row_id])] = by_kind.get(str(kinds.at[row_id]), 0) + 1
    missing_columns = [c for c in columns if c not in got.columns]
    for row_id in common:
        wrong = len(missing_columns)
        for column in columns:
            if column in missing_columns:
                continue
            if not same_value(want.at[row_id, column], got.at[row_id, column]):
                wrong += 1
        values_wrong += wrong
        rows_wrong += wrong > 0
        if wrong and kinds is not None:
            by_kind[str(kinds.at[row_id])] = by_kind.get(str(kinds.at[row_id]), 0) + 1
    return {
        "rows_expected": len(expected),
        "rows_returned": len(result),
        "rows_lost": lost,
        "rows_extra": extra,
        "rows_wrong": rows_wrong,
        "values_wrong": values_wrong,
        "wrong_by_kind": by_kind,
    }


def is_null(value: Any) -> bool:
    if value is None or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def same_value(want: Any, got: Any) -> bool:
    if is_null(want) or is_null(got):
        return is_null(want) and is_null(got)
    if isinstance(want, str) or isinstance(got, str):
        return str(want) == str(got)
    try:
        a, b = float(want), float(got)
    except (TypeError, ValueError):
        return bool(want == got)
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
