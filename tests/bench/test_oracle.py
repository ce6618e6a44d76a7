"""The pandas oracle on a case small enough to check by hand, and the comparison's counts."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from bench.oracle import compare, training_set


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


FEATURES = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 2],
        "event_ts": [ts("2024-01-01 00:00"), ts("2024-01-03 00:00"), ts("2024-01-03 00:00"), ts("2024-01-02 00:00")],
        "created_ts": [ts("2024-01-01 00:00"), ts("2024-01-03 00:05"), ts("2024-01-03 00:01"), ts("2024-01-02 00:00")],
        "x": [10, 30, 31, 20],
    }
)
ENTITIES = pd.DataFrame(
    {
        "row_id": [0, 1, 2, 3, 4, 5, 6],
        "user_id": [1, 1, 1, 1, 2, 2, 3],
        "ts": [
            ts("2023-12-31 23:59"),  # before any row: null
            ts("2024-01-02 00:00"),  # the 01-01 row, exactly 1 day old: still valid
            ts("2024-01-03 00:00"),  # the tie at 01-03: the later created row (x=30, created 00:05) wins
            ts("2024-01-04 00:00:01"),  # the 01-03 row, 1 day and 1 second old: expired
            ts("2024-01-02 12:00"),  # user 2's row, half a day old
            ts("2024-01-02 12:00"),  # the same entity row again: its own answer
            ts("2024-01-05 00:00"),  # an unknown user
        ],
    }
)


def test_the_hand_checked_answer() -> None:
    result = training_set(ENTITIES, {"v": (FEATURES, timedelta(days=1), ["x"])})
    assert result["row_id"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert result["v__x"].tolist() == [None, 10, 30, None, 20, 20, None]


def test_input_order_is_kept() -> None:
    shuffled = ENTITIES.iloc[[6, 2, 0, 5, 1, 4, 3]].reset_index(drop=True)
    result = training_set(shuffled, {"v": (FEATURES, timedelta(days=1), ["x"])})
    assert dict(zip(result["row_id"], result["v__x"], strict=True)) == {
        0: None, 1: 10, 2: 30, 3: None, 4: 20, 5: 20, 6: None,
    }  # fmt: skip


def test_compare_counts_lost_extra_and_wrong_rows() -> None:
    expected = training_set(ENTITIES.assign(kind="k"), {"v": (FEATURES, timedelta(days=1), ["x"])})
    assert compare(expected, expected, ["v__x"])["values_wrong"] == 0
    result = expected[expected["row_id"] != 6].copy()  # one row lost
    result = pd.concat([result, result[result["row_id"] == 5]])  # one returned twice
    result.loc[result["row_id"] == 2, "v__x"] = 31.0  # the tie broken the wrong way
    result.loc[result["row_id"] == 1, "v__x"] = 10.0  # the same value as a float: right
    result.loc[result["row_id"] == 0, "v__x"] = float("nan")  # NaN for null: right
    counts = compare(expected, result, ["v__x"])
    assert counts == {
        "rows_expected": 7,
        "rows_returned": 7,
        "rows_lost": 1,
        "rows_extra": 1,
        "rows_wrong": 1,
        "values_wrong": 1,
        "wrong_by_kind": {"k": 2},
    }


def test_rows_tied_on_created_time_too_go_to_the_values_that_sort_first() -> None:
    tied = pd.DataFrame(
        {
            "user_id": [1, 1, 1],
            "event_ts": [ts("2024-01-01 00:00")] * 3,
            "created_ts": [ts("2024-01-01 00:05")] * 3,
            "x": [482, 454, 454],
            "y": ["loyal", "vip", "casual"],
        }
    )
    entities = pd.DataFrame({"row_id": [0], "user_id": [1], "ts": [ts("2024-01-01 12:00")]})
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        frame = tied.iloc[order].reset_index(drop=True)
        result = training_set(entities, {"v": (frame, timedelta(days=1), ["x", "y"])})
        assert (result["v__x"][0], result["v__y"][0]) == (454, "casual")  # (454, "casual") < (454, "vip") < (482, …)
