"""The audit's comparison on hand-built layers: every count checked against what the rows were built to hold."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from features.audit import (
    CAUSE_LATE_ROW,
    CAUSE_OVERWRITTEN,
    CAUSE_SOURCE_CHANGED,
    CAUSE_STORED_NEWER,
    DRIFTED,
    LAGGED,
    MISMATCHED,
    OFFLINE_ONLY,
    ONLINE_ONLY,
    AuditResult,
    FeatureLayers,
    compare,
    same,
)
from features.audit_report import write_html, write_json

T = datetime(2025, 1, 1, tzinfo=UTC)


def layers(served: list[Any], stored: list[Any], **overrides: Any) -> FeatureLayers:
    n = len(served)
    base: dict[str, Any] = {
        "feature": "v__f",
        "numeric": True,
        "entities": [f'{{"id":{i}}}' for i in range(n)],
        "served_at": [T] * n,
        "statuses": ["present" if v is not None else "missing" for v in served],
        "served": served,
        "served_event": [T - timedelta(hours=1)] * n,
        "stored": stored,
        "stored_event": [T - timedelta(hours=1)] * n,
        "latest": list(stored),
        "latest_event": [T - timedelta(hours=1)] * n,
    }
    return FeatureLayers(**(base | overrides))


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (None, None, True),
        (None, 0.0, False),
        (1.5, 1.5, True),
        (math.nan, math.nan, True),
        (math.nan, 1.0, False),
        (math.inf, math.inf, True),
        (0.1 + 0.2, 0.3, False),  # no tolerance: one computation gives the same bits
        (0.0, -0.0, False),
        (1, 1.0, True),  # an integer value read back as a double
        (True, 1, False),
        (True, True, True),
        ("a", "a", True),
        (T, T.astimezone(), True),  # the same instant in another zone
    ],
)
def test_the_equality_rules(a: Any, b: Any, equal: bool) -> None:
    assert same(a, b) is equal
    assert same(b, a) is equal


def test_each_kind_of_disagreement_is_counted_once_with_examples() -> None:
    served = [1.0, None, 2.0, None, 3.0, 10.0, math.nan]
    stored = [1.0, None, None, 4.0, 5.0, 10.0, math.nan]
    result = compare(layers(served, stored))
    assert (result.total, result.equal, result.both_null) == (7, 4, 1)
    assert (result.online_only, result.offline_only, result.mismatched) == (1, 1, 1)
    assert result.mismatch_rate == 3 / 7
    assert result.max_abs_diff == 2.0  # |3 - 5|
    # SMAPE over the pairs with two finite numbers: 1/1, 3/5, 10/10 -> 0, 2/4, 0
    assert result.smape == pytest.approx((0 + 0.5 + 0) / 3)
    assert {k: [e.entity for e in v] for k, v in result.examples.items()} == {
        ONLINE_ONLY: ['{"id":2}'],
        OFFLINE_ONLY: ['{"id":3}'],
        MISMATCHED: ['{"id":4}'],
    }
    assert result.causes == {
        ONLINE_ONLY: CAUSE_OVERWRITTEN,
        OFFLINE_ONLY: CAUSE_OVERWRITTEN,
        MISMATCHED: CAUSE_OVERWRITTEN,
    }
    assert (result.by_status["present"].total, result.by_status["present"].mismatched) == (5, 2)
    assert (result.by_status["missing"].total, result.by_status["missing"].mismatched) == (2, 1)


def test_a_newer_row_published_after_the_lookup_is_lag_not_skew() -> None:
    served = [1.0, 2.0, 3.0]
    served_event = T - timedelta(hours=1)
    newer = [served_event + timedelta(hours=1), served_event + timedelta(hours=2), served_event]
    result = compare(layers(served, list(served), latest=[7.0, 8.0, 3.0], latest_event=newer))
    assert result.disagreements == 0 and result.lagged == 2
    assert (result.lag_max_seconds, result.lag_median_seconds) == (7200, 5400)
    assert LAGGED in result.causes


def test_drift_tells_a_changed_source_row_from_a_late_one_and_a_pushed_one() -> None:
    old = T - timedelta(hours=1)
    result = compare(
        layers(
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 2.0, 3.0, 4.0],
            recomputed=[1.0, 9.0, 8.0, 7.0],
            recomputed_event=[old, old, old + timedelta(minutes=5), old - timedelta(minutes=5)],
        )
    )
    assert (result.drifted, result.drift_compared, result.disagreements) == (3, 4, 0)
    assert result.causes[DRIFTED] == "; ".join(sorted([CAUSE_SOURCE_CHANGED, CAUSE_LATE_ROW, CAUSE_STORED_NEWER]))
    assert [e.entity for e in result.examples[DRIFTED]] == ['{"id":1}', '{"id":2}', '{"id":3}']


def test_reports_are_written(tmp_path: Any) -> None:
    import json

    feature = compare(layers([1.0, 2.0], [1.0, 3.0]))
    audit = AuditResult(1, "log", 1, 2, 2, (feature,), False, points={"v__f": [(1.0, 1.0), (2.0, 3.0)]})
    assert audit.worst_rate == 0.5
    data = json.loads(write_json(audit, tmp_path / "a.json").read_text())
    assert data["features"][0]["mismatched"] == 1
    assert data["features"][0]["examples"][MISMATCHED][0]["offline"] == 3.0
    page = write_html(audit, tmp_path / "a.html").read_text()
    assert page.count("<img") == 1 and "v__f" in page
    # A feature without numbers to plot gets the picture of its outcomes per status.
    text = compare(layers(["a", "b"], ["a", "c"]))
    words = AuditResult(1, "log", 1, 2, 2, (text,), False)
    assert write_html(words, tmp_path / "b.html").read_text().count("<img") == 1
