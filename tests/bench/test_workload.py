"""The workload generator plants the edge rows the point-in-time join must get right (no Feast, no servers)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from bench.workload import VIEWS, generate

END = datetime(2026, 11, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def workload():  # type: ignore[no-untyped-def]
    return generate(0.005, 3, end=END)


def test_sizes_follow_the_scale(workload) -> None:  # type: ignore[no-untyped-def]
    assert workload.users == 500
    assert workload.feature_rows == pytest.approx(10_000, rel=0.01)
    assert len(workload.entities) == 1_000
    assert workload.entities["row_id"].tolist() == list(range(1_000))
    for view in workload.views.values():
        frame = view.frame
        assert frame["event_ts"].min() >= pd.Timestamp(workload.start)
        assert frame["event_ts"].max() < pd.Timestamp(END)


def test_same_seed_same_data_other_seed_other_data(workload) -> None:  # type: ignore[no-untyped-def]
    again = generate(0.005, 3, end=END)
    pd.testing.assert_frame_equal(again.entities, workload.entities)
    pd.testing.assert_frame_equal(again.views["user_activity"].frame, workload.views["user_activity"].frame)
    other = generate(0.005, 4, end=END)
    assert not other.entities["user_id"].equals(workload.entities["user_id"])


def test_rows_before_any_feature(workload) -> None:  # type: ignore[no-untyped-def]
    rows = workload.entities[workload.entities["kind"] == "before_any"]
    assert len(rows) > 0
    frames = pd.concat(v.frame for v in workload.views.values())
    first = frames.groupby("user_id")["event_ts"].min()
    assert (rows["ts"].to_numpy() < first.loc[rows["user_id"]].to_numpy()).all()


def test_rows_exactly_at_the_ttl_boundary_and_one_second_past(workload) -> None:  # type: ignore[no-untyped-def]
    profile = workload.views["user_profile"].frame
    ttl = pd.Timedelta(VIEWS[0].ttl)
    for kind, age in (("ttl_boundary", ttl), ("ttl_expired", ttl + pd.Timedelta(seconds=1))):
        rows = workload.entities[workload.entities["kind"] == kind]
        assert len(rows) > 0
        for user, ts in zip(rows["user_id"], rows["ts"], strict=True):
            latest = profile.loc[(profile["user_id"] == user) & (profile["event_ts"] <= ts), "event_ts"].max()
            assert ts - latest == age


def test_duplicate_entity_rows(workload) -> None:  # type: ignore[no-untyped-def]
    entities = workload.entities
    dupes = entities[entities["kind"] == "duplicate"]
    assert len(dupes) > 0
    pairs = set(
        zip(
            entities.loc[entities["kind"] != "duplicate", "user_id"],
            entities.loc[entities["kind"] != "duplicate", "ts"],
            strict=True,
        )
    )
    assert all((u, t) in pairs for u, t in zip(dupes["user_id"], dupes["ts"], strict=True))


def test_ties_on_event_time_differ_in_created_time_and_values(workload) -> None:  # type: ignore[no-untyped-def]
    profile = workload.views["user_profile"].frame
    tied = profile[profile.duplicated(["user_id", "event_ts"], keep=False)]
    groups = tied.groupby(["user_id", "event_ts"])
    assert any(g["created_ts"].nunique() > 1 and g["income"].nunique() > 1 for _, g in groups)
    rows = workload.entities[workload.entities["kind"] == "tie"]
    assert len(rows) > 0
    keys = set(zip(tied["user_id"], tied["event_ts"], strict=True))
    assert all((u, t) in keys for u, t in zip(rows["user_id"], rows["ts"], strict=True))
    # Exact duplicate feature rows exist too (same created time and values).
    assert profile.duplicated().any()
