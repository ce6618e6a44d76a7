"""Pictures a person would rather look at than read: how well a training set is covered by its features.

A training row gets a null feature when no value existed yet, or the latest one was older than the view's TTL.
Coverage per day and per view shows both at a glance: the warm-up before a view's first values, gaps where a
source stopped, and TTLs that are too short.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from features.run_stats import FeatureStats


def daily_coverage(training: pd.DataFrame, timestamp_column: str) -> pd.DataFrame:
    """Share of rows with a value, per day (rows) and per view (columns): a view counts as covered on a row
    when any of its features has a value there."""
    import pandas as pd

    views = sorted({c.split("__", 1)[0] for c in training.columns if "__" in c})
    day = pd.to_datetime(training[timestamp_column], utc=True).dt.floor("D")
    covered = pd.DataFrame(
        {
            view: training[[c for c in training.columns if c.startswith(f"{view}__")]].notna().any(axis=1)
            for view in views
        }
    )
    return covered.groupby(day.rename("day")).mean()


def plot_coverage(training: pd.DataFrame, timestamp_column: str, path: str | Path, *, title: str = "") -> Path:
    """Draw :func:`daily_coverage` as one line per view into a PNG file; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, works on servers and in CI
    import matplotlib.pyplot as plt

    coverage = daily_coverage(training, timestamp_column)
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    for view in coverage.columns:
        axes.plot(coverage.index, coverage[view] * 100, marker="o", markersize=3, label=view)
    axes.set_ylim(-2, 102)
    axes.set_ylabel("training rows with a value (%)")
    axes.set_xlabel(f"day of {timestamp_column} (UTC)")
    axes.set_title(title or f"Feature coverage of {len(training):,} training rows")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.autofmt_xdate()
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    """Write ``figure`` into the PNG file ``path`` (its folder created) and release it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def plot_feature_stats(feature: str, curves: dict[str, FeatureStats], path: str | Path) -> Path:
    """One feature's distribution in each of ``curves`` (label -> statistics: this run, the previous one, a
    training set), side by side, into a PNG file. A number's distribution is drawn from its quantiles (the share
    of finite values at or below each, from min to max); a string's or boolean's as the share of rows of each
    of its most frequent values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from features.run_stats import QUANTILES

    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    numeric = any(s.is_numeric for s in curves.values())
    if numeric:
        for label, stats in curves.items():
            if stats.min is None or stats.max is None:  # no finite value to draw
                continue
            points = [(float(stats.min), 0.0), *((float(stats.quantiles[n]), p) for n, p in QUANTILES)]
            points.append((float(stats.max), 1.0))
            axes.plot([x for x, _ in points], [y * 100 for _, y in points], marker="o", markersize=3, label=label)
        axes.set_xlabel(feature)
        axes.set_ylabel("finite values at or below (%)")
    else:
        values = list(dict.fromkeys(str(v) for stats in curves.values() for v, _ in stats.top))
        width = 0.8 / max(len(curves), 1)
        for i, (label, stats) in enumerate(curves.items()):
            shares = {str(v): n / stats.count * 100 for v, n in stats.top} if stats.count else {}
            axes.bar(
                [j + i * width for j in range(len(values))], [shares.get(v, 0) for v in values], width, label=label
            )
        axes.set_xticks([j + 0.4 - width / 2 for j in range(len(values))], values, rotation=30, ha="right")
        axes.set_ylabel("rows (%)")
    axes.set_title(f"{feature}: " + ", ".join(f"{label} ({stats.count:,} rows)" for label, stats in curves.items()))
    axes.grid(alpha=0.3)
    if curves:
        axes.legend()
    return _save(figure, path)
