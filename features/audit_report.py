"""The consistency audit's reports: the terminal table's rows, the JSON file, the HTML page with a plot per
numeric feature (online against offline, the diagonal where they agree). See :mod:`features.audit`."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from features.audit import LAGGED, AuditResult, FeatureAudit, iso_text


def summary_rows(result: AuditResult) -> list[list[Any]]:
    """One row per feature for the terminal table."""
    rows = []
    for f in result.features:
        causes = "; ".join(sorted(set(f.causes.values()))) if f.disagreements or f.drifted else ""
        rows.append(
            [
                f.feature,
                f.total,
                f.equal,
                f.both_null,
                f.online_only,
                f.offline_only,
                f.mismatched,
                f"{f.mismatch_rate:.2%}",
                "" if f.smape is None else f"{f.smape:.4g}",
                "" if f.max_abs_diff is None else f"{f.max_abs_diff:.4g}",
                f.drifted if result.recomputed else "-",
                f.lagged,
                "" if f.lag_max_seconds is None else f"{f.lag_max_seconds:.0f}s",
                causes,
            ]
        )
    return rows


SUMMARY_COLUMNS = (
    "feature",
    "total",
    "equal",
    "both null",
    "online only",
    "offline only",
    "differ",
    "rate",
    "SMAPE",
    "max |diff|",
    "drifted",
    "lagged",
    "max lag",
    "likely cause",
)


def example_rows(result: AuditResult) -> list[list[Any]]:
    rows = []
    for f in result.features:
        for kind, found in f.examples.items():
            if kind == LAGGED:
                continue
            for e in found:
                rows.append(
                    [
                        f.feature,
                        kind,
                        e.entity,
                        iso_text(e.served_at),
                        f"{e.sides[0]}: {_show(e.online)}",
                        iso_text(e.online_event_time),
                        f"{e.sides[1]}: {_show(e.offline)}",
                        iso_text(e.offline_event_time),
                    ]
                )
    return rows


EXAMPLE_COLUMNS = ("feature", "kind", "entity", "served at", "value", "its event time", "against", "its event time")


def write_json(result: AuditResult, path: str | Path) -> Path:
    import json

    out = Path(path)
    out.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    return out


def write_html(result: AuditResult, path: str | Path) -> Path:
    """A self-contained HTML report: the summary, the examples, and a plot per feature, the images inlined: a
    numeric feature's served values against the stored ones (the diagonal where they agree), any other
    feature's outcomes (equal, online-only, offline-only, mismatched) per status served."""
    out = Path(path)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>skewless audit</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>",
        f"<h1>skewless audit</h1><p>plan version {result.plan_version}; {result.lookups:,} lookup(s) of "
        f"{result.entities:,} entities, {result.values:,} value(s), from the {html.escape(result.origin)}</p>",
        _html_table(SUMMARY_COLUMNS, summary_rows(result)),
        "<h2>Examples</h2>",
        _html_table(EXAMPLE_COLUMNS, example_rows(result)),
    ]
    for f in result.features:
        points = result.points.get(f.feature)
        picture = _scatter(f.feature, points) if points else _outcomes(f)
        name = html.escape(f.feature)
        parts.append(f"<h2>{name}</h2><img alt='{name}' src='data:image/png;base64,{picture}'>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts))
    return out


def _scatter(feature: str, points: Sequence[tuple[float, float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5), dpi=90)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    axes.scatter(xs, ys, s=8, alpha=0.6)
    low, high = min(xs + ys), max(xs + ys)
    axes.plot([low, high], [low, high], color="grey", linewidth=0.8)  # where online and offline agree
    axes.set_xlabel("online (served)")
    axes.set_ylabel("offline (stored at serving time)")
    axes.set_title(feature)
    figure.tight_layout()
    return _png(figure)


def _outcomes(feature: FeatureAudit) -> str:
    """Bars of a feature's values served per status, split into those equal to the stored value and not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    statuses = sorted(feature.by_status)
    equal = [feature.by_status[s].equal for s in statuses]
    other = [feature.by_status[s].mismatched for s in statuses]
    figure, axes = plt.subplots(figsize=(5, 3), dpi=90)
    axes.bar(statuses, equal, label="equal to the stored value", color="tab:green")
    axes.bar(statuses, other, bottom=equal, label="disagreeing", color="tab:red")
    axes.set_ylabel("values served")
    axes.set_title(feature.feature)
    axes.legend()
    figure.tight_layout()
    return _png(figure)


def _png(figure: Any) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)
