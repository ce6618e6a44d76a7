"""The report renderer and the targets, on made-up measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.report import Measurement, evaluate_targets, render, spread, to_jsonable


def measurements() -> list[Measurement]:
    return [
        Measurement(report.HTTP_1, report.RPS_LOAD, report.SKEWLESS, [3000.0, 3400.0, 3500.0]),
        Measurement(report.HTTP_1, report.RPS_LOAD, report.FEAST, [600.0, 650.0, 700.0]),
        Measurement(report.HTTP_1, report.RPS_LOAD, report.REFERENCE, [4000.0, 4000.0, 4100.0]),
        Measurement(report.HTTP_1, report.P99_SEQ, report.SKEWLESS, [2.0, 2.5, 9.0]),
        Measurement(report.HTTP_1, report.P99_SEQ, report.FEAST, [10.0, 10.0, 12.0]),
        Measurement(report.CLIENT_1, report.LATENCY_MS, report.SKEWLESS, [0.5, 0.45, 0.6]),
        Measurement(report.CLIENT_1, report.LATENCY_MS, report.REFERENCE, [0.2, 0.2, 0.2]),
        Measurement(report.PIT, report.WHOLE_PROCESS_S, report.SKEWLESS, [20.0, 22.0, 30.0]),
        Measurement(report.PIT, report.WHOLE_PROCESS_S, report.FEAST, [15.0, 15.0, 16.0]),
        Measurement(report.PIT, report.PEAK_RSS, report.SKEWLESS, [1500.0]),
        Measurement(report.PUBLISH, report.KEYS_PER_S, report.SKEWLESS, [90_000.0, 120_000.0, 130_000.0]),
    ]


CORRECT = [
    {"system": report.SKEWLESS, "run": "point-in-time #1", "rows_expected": 10, "rows_returned": 10, "rows_lost": 0,
     "rows_extra": 0, "rows_wrong": 0, "values_wrong": 0, "wrong_by_kind": {}},
    {"system": report.FEAST, "run": "point-in-time #1", "rows_expected": 10, "rows_returned": 9, "rows_lost": 1,
     "rows_extra": 0, "rows_wrong": 2, "values_wrong": 7, "wrong_by_kind": {"tie": 2, "duplicate": 1}},
]  # fmt: skip


def test_targets_read_ratios_of_medians() -> None:
    targets = {t.target: t for t in evaluate_targets(measurements(), CORRECT)}
    assert targets["HTTP 1 entity: >= 5x Feast's req/s"].met is True  # 3400 / 650 = 5.2
    assert targets["HTTP 1 entity: >= 5x Feast's req/s"].measured == "5.23x of Feast"
    assert targets["HTTP 1 entity: >= 85% of the floor's req/s"].met is True  # 85%
    assert targets["HTTP 1 entity: p99 one at a time <= 1/5 of Feast's"].met is False  # 2.5 / 10 = 0.25
    assert targets["HTTP 1 entity: p99 one at a time <= 1/5 of Feast's"].measured == "0.25x Feast's p99"
    assert targets["Python client 1 entity: within 0.2 ms of the raw Redis round trip"].met is False  # +0.3 ms
    assert targets["Point-in-time: whole process no slower than Feast duckdb"].met is False
    assert targets["HTTP 100 entities: >= 20x Feast's req/s"].met is None  # not measured
    assert targets["HTTP 100 entities: >= 20x Feast's req/s"].measured == "not measured"
    assert targets["Materialize: Redis publishing >= 100k keys/s"].met is True  # the median, 120k
    assert targets["Materialize: Redis publishing >= 100k keys/s"].measured == "120,000 keys/s (one writer)"
    correctness = [t for t in targets.values() if t.target.startswith("Correctness")]
    assert correctness[0].met is True  # skewless's training sets only; Feast's losses are reported, not a target


def test_spread_is_min_median_max() -> None:
    assert spread([3.0, 1.0, 2.0]) == "1.00 / 2.00 / 3.00"
    assert spread([1500.0, 2500.5]) == "1,500 / 2,000 / 2,500"
    assert spread([0.25]) == "0.250"
    assert spread([]) == "-"


def document() -> dict[str, Any]:
    ms = measurements()
    return {
        "date": "2026-11-30",
        "machine": {"cores": 2, "memory_gib": 24.0, "python": "3.11.7", "pyspark": "4.0.1", "feast": "0.67.0"},
        "config": {"scale": 0.05, "seed": 7, "repeats": 3, "load_seconds": 5.0, "users": 5000,
                   "feature_rows": 100000, "entity_rows": 10000},
        **to_jsonable(ms, evaluate_targets(ms, CORRECT)),
        "correctness": CORRECT,
        "notes": ["wrk was not installed"],
    }  # fmt: skip


def test_render_makes_one_table_row_per_case_and_metric() -> None:
    text = render(document())
    lines = text.splitlines()
    assert lines[0] == "# skewless vs Feast, 2026-11-30"
    header = next(line for line in lines if line.startswith("| case |"))
    assert header == "| case | metric | skewless | Feast (duckdb) | floor / raw Redis | skewless / Feast |"
    row = next(line for line in lines if line.startswith(f"| {report.HTTP_1} | {report.RPS_LOAD} |"))
    cells = "3,000 / 3,400 / 3,500 | 600.0 / 650.0 / 700.0 | 4,000 / 4,000 / 4,100 | 5.23"
    assert row == f"| {report.HTTP_1} | {report.RPS_LOAD} | {cells} |"
    rss = next(line for line in lines if line.startswith(f"| {report.PIT} | {report.PEAK_RSS} |"))
    assert rss.endswith("| 1,500 | - | - | - |")  # skewless only: no ratio
    assert "| Feast (duckdb) | point-in-time #1 | 10 | 9 | 1 | 0 | 2 | 7 | duplicate: 1, tie: 2 |" in lines
    assert "| HTTP 1 entity: p99 one at a time <= 1/5 of Feast's | 0.25x Feast's p99 | **no** |" in lines
    assert lines[-1] == "- wrk was not installed"


def test_warm_engine_gets_its_own_targets_column_and_correctness() -> None:
    warm = [
        *measurements(),
        Measurement(report.PIT, report.WHOLE_PROCESS_S, report.SKEWLESS_WARM, [8.0, 9.0, 12.0]),
        Measurement(report.PIT, report.WHOLE_PROCESS_S, report.FEAST_SPARK, [100.0]),
    ]
    wrong = {**CORRECT[0], "system": report.SKEWLESS_WARM, "values_wrong": 1}
    targets = {t.target: t for t in evaluate_targets(warm, [*CORRECT, wrong])}
    assert targets["Point-in-time: whole process no slower than Feast duckdb (warm engine)"].met is True  # 9 / 15
    assert targets["Point-in-time: whole process no slower than Feast duckdb"].met is False  # 22 / 15
    assert targets["Point-in-time: >= 10x faster than Feast's Spark offline store (warm engine)"].met is True
    assert "Materialize: >= 3x Feast's rows/s end to end (warm engine)" not in targets  # not measured: no row
    [correctness] = [t for t in targets.values() if t.target.startswith("Correctness")]
    assert correctness.met is False  # a wrong value in a warm-engine training set counts
    text = render({**document(), **to_jsonable(warm, list(targets.values()))})
    assert "| skewless / Feast | warm engine / Feast |" in text
    row = f"| {report.PIT} | {report.WHOLE_PROCESS_S} | 20.0 / 22.0 / 30.0 | 8.00 / 9.00 / 12.0 | 15.0 / 15.0 / 16.0 |"
    assert row in text
    assert "| 1.47 | 0.60 |" in text  # 22 / 15 and 9 / 15


def test_speedups_are_times_better_than_feasts_median_with_the_spread() -> None:
    found = {(s.case, s.metric, s.system): s for s in report.speedups(measurements())}
    # Rates: skewless over Feast; times and latencies: Feast over skewless. Feast's median is the reference.
    rps = found[(report.HTTP_1, report.RPS_LOAD, report.SKEWLESS)]
    assert (rps.median, rps.worst, rps.best, rps.target) == (3400 / 650, 3000 / 650, 3500 / 650, 5.0)
    p99 = found[(report.HTTP_1, report.P99_SEQ, report.SKEWLESS)]
    assert (p99.median, p99.worst, p99.best) == (10 / 2.5, 10 / 9, 10 / 2)
    pit = found[(report.PIT, report.WHOLE_PROCESS_S, report.SKEWLESS)]
    assert (pit.median, pit.worst, pit.best, pit.target) == (15 / 22, 15 / 30, 15 / 20, 1.0)
    # Nothing to compare with: no Feast value (the client case) or no ratio metric (memory, publishing).
    assert set(found) == {
        (report.HTTP_1, report.RPS_LOAD, report.SKEWLESS),
        (report.HTTP_1, report.P99_SEQ, report.SKEWLESS),
        (report.PIT, report.WHOLE_PROCESS_S, report.SKEWLESS),
    }
    assert [(s.case, s.metric) for s in report.speedups(measurements())] == [
        (report.PIT, report.WHOLE_PROCESS_S),
        (report.HTTP_1, report.RPS_LOAD),
        (report.HTTP_1, report.P99_SEQ),
    ]  # the order of report.SPEED_CASES: the picture reads top to bottom like the table


def test_the_picture_is_drawn_and_linked_from_the_report(tmp_path: Path) -> None:
    results = document()
    name = report.write_picture(results, measurements(), tmp_path / "run.png")
    assert name == "run.png"
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = render(results, picture=name)
    assert "![How many times better than Feast, case by case](run.png)" in text.splitlines()
    nothing = [Measurement(report.PUBLISH, report.KEYS_PER_S, report.SKEWLESS, [1.0])]
    assert report.write_picture(results, nothing, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_the_compiled_floor_targets_are_shares_of_its_req_s() -> None:
    ms = [
        Measurement(report.HTTP_1, report.RPS_LOAD, report.SKEWLESS, [4000.0, 4100.0, 4200.0]),
        Measurement(report.HTTP_1, report.RPS_LOAD, report.SKEWLESS_GRANIAN, [8000.0]),
        Measurement(report.HTTP_1, report.RPS_LOAD, report.COMPILED, [10_000.0, 12_000.0, 20_000.0]),
        Measurement(report.HTTP_100, report.RPS_LOAD, report.SKEWLESS, [1500.0]),
        Measurement(report.HTTP_100, report.RPS_LOAD, report.SKEWLESS_GRANIAN, [3300.0]),
        Measurement(report.HTTP_100, report.RPS_LOAD, report.COMPILED, [4000.0]),
    ]
    targets = {t.target: t for t in evaluate_targets(ms, [])}
    one = targets["HTTP 1 entity: >= 40% of the compiled floor's req/s (issue 24)"]
    assert (one.measured, one.met) == ("34% of the compiled floor", False)  # 4100 / 12000
    hundred = targets["HTTP 100 entities: >= 80% of the compiled floor's req/s (granian) (issue 24)"]
    assert (hundred.measured, hundred.met) == ("82% of the compiled floor", True)  # 3300 / 4000
    assert targets["HTTP 1 entity: >= 40% of the compiled floor's req/s (granian) (issue 24)"].met is True  # 67%
    text = render({**document(), **to_jsonable(ms, list(targets.values()))})
    assert "| skewless / compiled floor | granian / compiled floor |" in text
    assert "skewless / Feast" not in text  # no Feast in this run: no column of ratios to it
