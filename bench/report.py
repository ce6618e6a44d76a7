"""Results of the side-by-side benchmark: the measurements, the issue's targets, and the Markdown report.

A :class:`Measurement` is one system's repeated values of one metric of one case; :func:`evaluate_targets`
reads the issue-4 targets off them; :func:`render` makes ``bench/results/<date>.md`` and :func:`plot_speedups`
the picture beside it (:func:`speedups`: how many times better than Feast, case by case). Pure functions over
plain data, so the tests can check them without running anything.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SKEWLESS = "skewless"
SKEWLESS_WARM = "skewless-warm"  # the same jobs sent to a running `skewless engine` (Spark already started)
FEAST = "feast"  # Feast with its duckdb offline store (its best local setting) and its Redis online store
FEAST_SPARK = "feast-spark"
SKEWLESS_GRANIAN = "skewless-granian"  # `skewless serve --server granian` (HTTP cases only)
REFERENCE = "reference"  # the floor app for HTTP cases, the raw Redis MGET for the Python client
COMPILED = "compiled"  # the compiled floor (bench/go_floor: Go's net/http and go-redis), HTTP cases only
SYSTEMS = (SKEWLESS, SKEWLESS_GRANIAN, SKEWLESS_WARM, FEAST, FEAST_SPARK, REFERENCE, COMPILED)
SYSTEM_TITLES = {
    SKEWLESS: "skewless",
    SKEWLESS_GRANIAN: "skewless, granian",
    SKEWLESS_WARM: "skewless, warm engine",
    FEAST: "Feast (duckdb)",
    FEAST_SPARK: "Feast (Spark)",
    REFERENCE: "floor / raw Redis",
    COMPILED: "compiled floor (Go)",
}

# Case and metric names shared by the harness (which records them) and the targets (which read them).
MAT_EMPTY = "1. materialize into empty Redis"
MAT_FILLED = "1. materialize onto filled keys"
PUBLISH = "1. Redis publishing, one writer"
PIT = "2. point-in-time training set"
ENGINE = "1-2. the warm engine process (cases 1 and 2)"
CLIENT_1 = "3. Python client, 1 entity"
CLIENT_100 = "3. Python client, 100 entities"
HTTP_1 = "4. HTTP, 1 entity"
HTTP_100 = "4. HTTP, 100 entities"
# The issue-24 targets against the compiled floor: skewless's req/s as a share of the floor's.
COMPILED_TARGETS = {HTTP_1: 0.40, HTTP_100: 0.80}

IN_PROCESS_S = "in-process time (s)"
WHOLE_PROCESS_S = "whole-process time (s)"
PEAK_RSS = "peak RSS (MiB)"
ROWS_PER_S = "feature rows/s (whole process)"
KEYS_PER_S = "keys/s"
LATENCY_MS = "latency median (ms)"
P50_SEQ = "p50 one at a time (ms)"
P99_SEQ = "p99 one at a time (ms)"
RPS_LOAD = "req/s, 16 connections"
P99_LOAD = "p99, 16 connections (ms)"

HIGHER_IS_BETTER = {ROWS_PER_S, RPS_LOAD, KEYS_PER_S}

# The speed comparisons the picture shows, each with the target in "times better than Feast" (None: no
# target on this one). Memory and the floor stay in the table.
SPEED_CASES: tuple[tuple[str, str, float | None], ...] = (
    (MAT_EMPTY, ROWS_PER_S, 3.0),
    (MAT_FILLED, ROWS_PER_S, None),
    (PIT, WHOLE_PROCESS_S, 1.0),
    (CLIENT_1, LATENCY_MS, None),
    (CLIENT_100, LATENCY_MS, None),
    (HTTP_1, RPS_LOAD, 5.0),
    (HTTP_1, P99_SEQ, 5.0),
    (HTTP_100, RPS_LOAD, 20.0),
    (HTTP_100, P99_SEQ, None),
)


@dataclass
class Measurement:
    """One system's values (one per repetition) of one metric of one case."""

    case: str
    metric: str
    system: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass
class Target:
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def save(out: Path, name: str, data: dict[str, Any], markdown: str) -> None:
    """Write a benchmark's ``<out>/<name>.json`` and ``.md``, print the markdown and say where it went."""
    from bench.run import log

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    log(f"wrote {out / name}.md and .json")


def find(measurements: Sequence[Measurement], case: str, metric: str, system: str) -> Measurement | None:
    for m in measurements:
        if (m.case, m.metric, m.system) == (case, metric, system) and m.values:
            return m
    return None


def ratio(measurements: Sequence[Measurement], case: str, metric: str, num: str, den: str) -> float | None:
    a, b = find(measurements, case, metric, num), find(measurements, case, metric, den)
    if a is None or b is None or b.median == 0:
        return None
    return a.median / b.median


@dataclass(frozen=True)
class Speedup:
    """How many times better than Feast's median one skewless system did in one case: at its median, and at its
    worst and best repetition (the spread)."""

    case: str
    metric: str
    system: str
    median: float
    worst: float
    best: float
    target: float | None


def speedups(measurements: Sequence[Measurement]) -> list[Speedup]:
    """The :data:`SPEED_CASES` measured for Feast and for skewless (cold, warm), in that order. "Better" is
    more for rates (rows/s, req/s) and less for times and latencies."""
    out: list[Speedup] = []
    for case, metric, target in SPEED_CASES:
        feast = find(measurements, case, metric, FEAST)
        if feast is None or feast.median <= 0:
            continue
        for system in (SKEWLESS, SKEWLESS_WARM):
            ours = find(measurements, case, metric, system)
            if ours is None or min(ours.values) <= 0:
                continue
            higher = metric in HIGHER_IS_BETTER
            factors = [_times_better(v, feast.median, higher) for v in ours.values]
            median = _times_better(ours.median, feast.median, higher)
            out.append(Speedup(case, metric, system, median, min(factors), max(factors), target))
    return out


def _times_better(value: float, feast: float, higher_is_better: bool) -> float:
    return value / feast if higher_is_better else feast / value


def plot_speedups(found: Sequence[Speedup], path: Path, *, title: str) -> Path:
    """One bar per :class:`Speedup` on a log scale, whiskers from the worst to the best repetition, a line at
    Feast (1x) and a mark at each target; writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    colors = {SKEWLESS: "#4878a8", SKEWLESS_WARM: "#e0883a"}
    figure, axes = plt.subplots(figsize=(10, 0.42 * len(found) + 1.8), dpi=110)
    rows = list(range(len(found)))[::-1]  # the first comparison on top
    for y, s in zip(rows, found, strict=True):
        axes.barh(y, s.median, color=colors[s.system], height=0.7)
        axes.errorbar(
            s.median, y, xerr=[[s.median - s.worst], [s.best - s.median]], fmt="none", ecolor="black", capsize=3
        )
        axes.annotate(f"{s.median:.2g}x", (max(s.best, s.median), y), xytext=(4, -3), textcoords="offset points")
        if s.target is not None:
            axes.plot([s.target], [y], marker="|", color="crimson", markersize=16, markeredgewidth=2.5)
    axes.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    axes.set_yticks(rows, [f"{s.case[3:]}: {s.metric}" for s in found], fontsize=8)
    axes.set_xlabel("times better than Feast, log scale (dashed: as good as Feast; red: the issue's target)")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3, which="both")
    shown = [system for system in colors if any(s.system == system for s in found)]
    axes.legend(
        handles=[Patch(color=colors[system], label=SYSTEM_TITLES[system]) for system in shown],
        loc="upper right",
        fontsize=8,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _at_least(value: float | None, threshold: float, what: str, fmt: str = "{:.2f}x") -> tuple[str, bool | None]:
    if value is None:
        return "not measured", None
    return f"{fmt.format(value)} {what}", value >= threshold


def evaluate_targets(measurements: Sequence[Measurement], correctness: Sequence[dict[str, Any]]) -> list[Target]:
    """The targets of issue 4, each with the value this run measured and whether it is met."""
    ms = measurements
    targets: list[Target] = []

    def add(text: str, result: tuple[str, bool | None]) -> None:
        targets.append(Target(text, *result))

    add("HTTP 1 entity: >= 5x Feast's req/s", _at_least(ratio(ms, HTTP_1, RPS_LOAD, SKEWLESS, FEAST), 5, "of Feast"))
    add(
        "HTTP 1 entity: >= 85% of the floor's req/s",
        _at_least(ratio(ms, HTTP_1, RPS_LOAD, SKEWLESS, REFERENCE), 0.85, "of the floor", "{:.0%}"),
    )
    p99 = ratio(ms, HTTP_1, P99_SEQ, SKEWLESS, FEAST)
    add(
        "HTTP 1 entity: p99 one at a time <= 1/5 of Feast's",
        ("not measured", None) if p99 is None else (f"{p99:.2f}x Feast's p99", p99 <= 0.2),
    )
    add(
        "HTTP 100 entities: >= 20x Feast's req/s",
        _at_least(ratio(ms, HTTP_100, RPS_LOAD, SKEWLESS, FEAST), 20, "of Feast"),
    )
    add(
        "HTTP 100 entities: >= 60% of the floor's req/s",
        _at_least(ratio(ms, HTTP_100, RPS_LOAD, SKEWLESS, REFERENCE), 0.60, "of the floor", "{:.0%}"),
    )
    for system, how in ((SKEWLESS, ""), (SKEWLESS_GRANIAN, " (granian)")):
        if system != SKEWLESS and not find(ms, HTTP_1, RPS_LOAD, system):
            continue
        for case, share in COMPILED_TARGETS.items():
            add(
                f"HTTP {case[9:]}: >= {share:.0%} of the compiled floor's req/s{how} (issue 24)",
                _at_least(ratio(ms, case, RPS_LOAD, system, COMPILED), share, "of the compiled floor", "{:.0%}"),
            )
    client, raw = find(ms, CLIENT_1, LATENCY_MS, SKEWLESS), find(ms, CLIENT_1, LATENCY_MS, REFERENCE)
    if client and raw:
        gap = client.median - raw.median
        add("Python client 1 entity: within 0.2 ms of the raw Redis round trip", (f"+{gap:.3f} ms", gap <= 0.2))
    else:
        add("Python client 1 entity: within 0.2 ms of the raw Redis round trip", ("not measured", None))
    for system, how in ((SKEWLESS, ""), (SKEWLESS_WARM, " (warm engine)")):
        if system == SKEWLESS or find(ms, MAT_EMPTY, ROWS_PER_S, system):
            add(
                f"Materialize: >= 3x Feast's rows/s end to end{how}",
                _at_least(ratio(ms, MAT_EMPTY, ROWS_PER_S, system, FEAST), 3, "of Feast"),
            )
    published = find(ms, PUBLISH, KEYS_PER_S, SKEWLESS)
    add(
        "Materialize: Redis publishing >= 100k keys/s",
        ("not measured", None)
        if published is None
        else (f"{published.median:,.0f} keys/s (one writer)", published.median >= 100_000),
    )
    for system, how in ((SKEWLESS, ""), (SKEWLESS_WARM, " (warm engine)")):
        if system != SKEWLESS and not find(ms, PIT, WHOLE_PROCESS_S, system):
            continue
        add(
            f"Point-in-time: >= 10x faster than Feast's Spark offline store{how}",
            _at_least(ratio(ms, PIT, WHOLE_PROCESS_S, FEAST_SPARK, system), 10, "faster"),
        )
        pit = ratio(ms, PIT, WHOLE_PROCESS_S, system, FEAST)
        add(
            f"Point-in-time: whole process no slower than Feast duckdb{how}",
            ("not measured", None) if pit is None else (f"{pit:.2f}x Feast's time", pit <= 1.0),
        )
    ours = [c for c in correctness if c["system"] in (SKEWLESS, SKEWLESS_WARM)]
    if ours:
        lost = sum(c["rows_lost"] + c["rows_extra"] for c in ours)
        wrong = sum(c["values_wrong"] for c in ours)
        add(
            "Correctness: zero rows lost, zero values wrong (skewless, every training set)",
            (f"{lost} rows lost or extra, {wrong} values wrong in {len(ours)} training sets", lost == 0 and wrong == 0),
        )
    else:
        add("Correctness: zero rows lost, zero values wrong", ("not measured", None))
    return targets


def spread(values: Sequence[float]) -> str:
    """``min / median / max`` with a precision that suits the size of the numbers."""
    if not values:
        return "-"

    def fmt(v: float) -> str:
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"

    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(min(values))} / {fmt(statistics.median(values))} / {fmt(max(values))}"


def render(results: dict[str, Any], *, picture: str | None = None) -> str:
    """The Markdown report of a results document (the same dict that is written as JSON); ``picture``: the
    file name of its :func:`plot_speedups` image, shown under the introduction."""
    measurements = [Measurement(**m) for m in results["measurements"]]
    systems = [s for s in SYSTEMS if any(m.system == s for m in measurements)]
    config, machine = results["config"], results["machine"]
    lines = [
        f"# skewless vs Feast, {results['date']}",
        "",
        f"Scale {config['scale']} (seed {config['seed']}): {config['users']:,} users, {config['feature_rows']:,} "
        f"feature rows over 60 days in 2 views (10 features), {config['entity_rows']:,} entity rows; "
        f"{config['repeats']} repetition{'s' if config['repeats'] != 1 else ' (one value per cell)'}, HTTP loads of "
        f"{config['load_seconds']:g} s. "
        f"Machine: {machine['cores']} cores, {machine['memory_gib']} GiB; Python {machine['python']}, "
        f"Feast {machine.get('feast', '?')}, pyspark {machine.get('pyspark', '?')}; load generator: "
        f"{machine.get('load_generator', '?')}. Every server has 2 workers; everything on 127.0.0.1."
        + (
            f" Load average (1 min) of the machine, shared with other work: {machine['load_start']} at the start, "
            f"{machine['load_end']} at the end."
            if "load_start" in machine
            else ""
        ),
        "",
        "Values are min / median / max over the repetitions; a ratio is of the medians (skewless's over Feast's: "
        "duckdb offline store, Redis online store; over the compiled floor's: Go's net/http and go-redis). "
        "Peak RSS is the whole process tree (the Spark JVM included)."
        + (
            " *skewless, warm engine*: the same commands while `skewless engine start` keeps Spark running (the "
            "engine was started, and ran three materializations and one training set, before the measured runs); "
            "its peak RSS is the calling process's, the engine's own is the row of case 1-2."
            if SKEWLESS_WARM in systems
            else ""
        ),
        "",
        *([f"![How many times better than Feast, case by case]({picture})", ""] if picture else []),
    ]
    ratios = []
    if FEAST in systems:
        ratios.append((SKEWLESS, FEAST, "skewless / Feast"))
    if FEAST in systems and SKEWLESS_WARM in systems:
        ratios.append((SKEWLESS_WARM, FEAST, "warm engine / Feast"))
    if COMPILED in systems:
        ratios.append((SKEWLESS, COMPILED, "skewless / compiled floor"))
    if COMPILED in systems and SKEWLESS_GRANIAN in systems:
        ratios.append((SKEWLESS_GRANIAN, COMPILED, "granian / compiled floor"))
    header = ["case", "metric", *(SYSTEM_TITLES[s] for s in systems), *(title for _, _, title in ratios)]
    lines += ["| " + " | ".join(header) + " |", "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |"]
    keys: list[tuple[str, str]] = []
    for m in measurements:
        if (m.case, m.metric) not in keys:
            keys.append((m.case, m.metric))
    for case, metric in keys:
        cells = [case, metric]
        for system in systems:
            found = find(measurements, case, metric, system)
            cells.append(spread(found.values) if found else "-")
        for system, other, _ in ratios:
            r = ratio(measurements, case, metric, system, other)
            cells.append(f"{r:.2f}" if r is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Correctness against the pandas `merge_asof` oracle", ""]
    lines += [
        "| system | training set | rows expected | rows returned | rows lost | rows extra | rows wrong | values wrong "
        "| wrong rows by kind |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in results.get("correctness", []):
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(c.get("wrong_by_kind", {}).items())) or "-"
        lines.append(
            f"| {SYSTEM_TITLES.get(c['system'], c['system'])} | {c['run']} | {c['rows_expected']:,} | "
            f"{c['rows_returned']:,} | {c['rows_lost']:,} | {c['rows_extra']:,} | {c['rows_wrong']:,} | "
            f"{c['values_wrong']:,} | {kinds} |"
        )

    lines += ["", "## Targets (issues 4 and 24)", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in results.get("targets", []):
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    notes = results.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_picture(results: dict[str, Any], measurements: Sequence[Measurement], path: Path) -> str | None:
    """Draw the speedups of a results document into ``path``; its file name, or None when nothing compares."""
    found = speedups(measurements)
    if not found:
        return None
    config = results["config"]
    title = f"skewless vs Feast, {results['date']}: {config['feature_rows']:,} feature rows, {config['repeats']} runs"
    return plot_speedups(found, path, title=title).name


def to_jsonable(measurements: Sequence[Measurement], targets: Sequence[Target]) -> dict[str, Any]:
    return {"measurements": [asdict(m) for m in measurements], "targets": [asdict(t) for t in targets]}


def main(argv: list[str] | None = None) -> int:
    """Re-render ``<results>.md`` from ``<results>.json`` (targets recomputed): ``python -m bench.report F.json``."""
    import sys

    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        results = json.loads(path.read_text())
        measurements = [Measurement(**m) for m in results["measurements"]]
        results["targets"] = [asdict(t) for t in evaluate_targets(measurements, results.get("correctness", []))]
        path.write_text(json.dumps(results, indent=2) + "\n")
        picture = write_picture(results, measurements, path.with_suffix(".png"))
        path.with_suffix(".md").write_text(render(results, picture=picture))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
