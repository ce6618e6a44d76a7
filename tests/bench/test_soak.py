"""The soak's arithmetic on made-up runs: requests cut into minutes by when they were due, the memory growth
after the warm-up, and the verdicts of the report (no servers, no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak
from bench.http_load import Timed


def made_up_run() -> Timed:
    """Minute 1: 100 requests of 2 ms; minute 2: 100 of 4 ms, the last one an error of 900 ms."""
    timed = Timed(rate=100 / 60)
    for k in range(200):
        timed.due_s.append(k * 0.6)
        timed.latencies_s.append(0.002 if k < 100 else 0.004)
        timed.ok.append(True)
    timed.latencies_s[-1], timed.ok[-1] = 0.9, False
    return timed


def test_requests_and_memory_are_cut_into_minutes() -> None:
    rss = [(t, 100.0 + t / 10) for t in range(1, 121)]  # a sample a second at 1 .. 120 s: 100.1 .. 112.0 MiB
    minutes = soak.per_minute(made_up_run(), rss, materialized_at=[10.0, 70.0, 100.0], minutes=2)
    assert [(m.minute, m.requests, m.errors) for m in minutes] == [(1, 100, 0), (2, 100, 1)]
    assert [(m.p50_ms, m.p99_ms) for m in minutes] == [(2.0, 2.0), (4.0, 4.0)]  # nearest rank: 99th of 100
    assert [m.rss_mb for m in minutes] == [105.9, 111.9]  # the last sample before each minute ends (59 s, 119 s)
    assert [m.materializations for m in minutes] == [1, 2]


def test_rss_growth_compares_the_end_with_the_end_of_the_warm_up() -> None:
    flat = [(float(t), 200.0) for t in range(600)]
    assert soak.rss_growth(flat, warm_up_s=60) == 0.0
    growing = [(float(t), 200.0 if t < 60 else 220.0) for t in range(600)]
    assert soak.rss_growth(growing, warm_up_s=60) == pytest.approx(0.1)  # 220 / 200 - 1
    assert soak.rss_growth(flat[:50], warm_up_s=60) is None  # ended before the warm-up did


def results(errors: int, growth: float | None) -> dict[str, object]:
    return {
        "date": "2026-12-06 03:00 UTC",
        "config": {"minutes": 2, "scale": 1.0, "load": 0.8, "server": "uvicorn", "materialize_every_min": 2.0,
                   "warm_up_min": 1.0},
        "machine": {"cores": 2, "load_start": 1.0, "load_end": 1.5},
        "rate": 1000.0, "max_rps": 1250.0, "requests": 120_000, "errors": errors, "rss_growth": growth,
        "minutes": [{"minute": 1, "requests": 60_000, "errors": errors, "p50_ms": 1.0, "p99_ms": 5.0, "rss_mb": 300.0,
                     "materializations": 0}],
        "materializations": [{"at_s": 120.0, "seconds": 7.5, "ok": True}],
        "rss_samples": [[0.0, 300.0], [60.0, 301.0]],
    }  # fmt: skip


def test_the_report_marks_the_targets(tmp_path: Path) -> None:
    good = {t: met for t, _, met in soak.verdicts(results(0, 0.02))}
    assert good == {
        "0 errors": True,
        "every request sent (the rate kept)": True,
        "server RSS growth after warm-up <= 5%": True,
        "every materialization during the soak succeeded": True,
    }
    bad = {t: met for t, _, met in soak.verdicts(results(3, 0.08))}
    assert bad["0 errors"] is False and bad["server RSS growth after warm-up <= 5%"] is False
    assert soak.verdicts(results(0, None))[2][2] is None
    text = soak.render(results(3, 0.08), picture="x.png")
    assert "| 1 | 60,000 | 3 | 1.00 | 5.00 | 300.0 | 0 |" in text
    assert "| server RSS growth after warm-up <= 5% | +8.0% | **no** |" in text
    assert soak.plot(results(0, 0.0), tmp_path / "soak.png").stat().st_size > 0
