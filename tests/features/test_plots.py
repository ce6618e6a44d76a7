from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.plots import daily_coverage, plot_coverage


def make_training() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "card_id": [1, 2, 3, 4, 5],
            "ts": pd.to_datetime(
                ["2024-01-01 01:00", "2024-01-01 23:59", "2024-01-02 00:00", "2024-01-02 12:00", "2024-01-03 08:00"],
                utc=True,
            ),
            "a__x": [None, 1.0, 2.0, None, 3.0],
            "a__y": [None, None, None, 5.0, None],
            "b__z": ["p", None, None, None, "q"],
        }
    )


def test_daily_coverage_counts_rows_with_any_feature_of_a_view() -> None:
    training = make_training()
    # The oracle: plain loops over the rows.
    expected: dict[tuple[str, str], list[bool]] = {}
    for _, row in training.iterrows():
        day = row["ts"].strftime("%Y-%m-%d")
        expected.setdefault((day, "a"), []).append(pd.notna(row["a__x"]) or pd.notna(row["a__y"]))
        expected.setdefault((day, "b"), []).append(pd.notna(row["b__z"]))
    coverage = daily_coverage(training, "ts")
    assert list(coverage.columns) == ["a", "b"]
    for (day, view), flags in expected.items():
        assert coverage.loc[pd.Timestamp(day, tz="UTC"), view] == sum(flags) / len(flags)


def test_plot_is_a_png(tmp_path: Path) -> None:
    out = plot_coverage(make_training(), "ts", tmp_path / "nested" / "coverage.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
