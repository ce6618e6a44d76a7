"""Backfill benchmark of windowed aggregations: a full backfill, then incremental one-day runs.

    python -m bench.backfill                         # 10M transactions, 100k cards, 60 days (the issue's case)
    python -m bench.backfill --transactions 200000 --cards 5000 --days 20 --repeats 2   # a quick look

Generates card transactions (seeded) into a PostgreSQL started on a free loopback port, declares sum, count and
mean of the amount over 1h, 1d, 7d and 30d windows at a daily cadence, and measures with local Spark (2 cores):
the full backfill over every day (wall time, source rows read, value rows written, peak memory of the whole
process tree, JVM included), then ``--repeats`` incremental runs that each add one new day of transactions
(time, rows read). Writes ``bench/results/backfill-<date>.md`` and ``.json``. No Redis: the online publication
is measured by the serving benchmark, this one measures the Spark side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2024, 1, 1)

DEFINITIONS = """
from features import Aggregation, Entity, FeatureView, Int64, SqlSource

card = Entity(join_keys={"card_id": Int64})
transactions = SqlSource(connection="bench", table="transactions", timestamp="ts")

card_windows = FeatureView(
    entities=[card],
    source=transactions,
    cadence="1d",
    online=False,
    aggregations=[
        Aggregation("sum", "amount", windows=["1h", "1d", "7d", "30d"]),
        Aggregation("count", windows=["1h", "1d", "7d", "30d"]),
        Aggregation("mean", "amount", windows=["1h", "1d", "7d", "30d"]),
    ],
)
"""


@dataclass
class Run:
    kind: str
    seconds: float
    rows_read: int
    rows_written: int
    peak_rss_mb: float
    load_avg: float  # the machine's mean 1-minute load average during the run: 2.0 fills the 2 cores


class PeakRss:
    """Samples the resident memory of a process (default: this one) and all its descendants (the Spark JVM)
    every ``every`` seconds, and the machine's load average (other work on the machine slows a run: reports say how much
    there was)."""

    def __init__(self, pid: int | None = None, every: float = 0.2) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.every = every
        self.peak = 0
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, tree_rss(self.pid))
            self.loads.append(os.getloadavg()[0])

    @property
    def load(self) -> float:
        return statistics.mean(self.loads) if self.loads else os.getloadavg()[0]


def process_table() -> tuple[dict[int, list[int]], dict[int, int]]:
    """One pass over /proc: the children of each process, and the bytes each holds resident."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    return children, rss


def tree_rss(root: int, table: tuple[dict[int, list[int]], dict[int, int]] | None = None) -> int:
    """Bytes resident in ``root`` and its descendants, from /proc (or from a :func:`process_table` already read)."""
    children, rss = table if table is not None else process_table()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def generate_day(rng: np.random.Generator, day: int, count: int, cards: int) -> bytes:
    """CSV of ``count`` transactions on ``day`` (0-based): card, time, amount (5% null)."""
    busy = rng.zipf(1.3, count) % cards + 1  # a few busy cards...
    card_ids = np.where(rng.random(count) < 0.2, busy, rng.integers(1, cards + 1, count))  # ...and everyone else
    seconds = rng.integers(0, 86_400, count)
    amounts = np.round(rng.gamma(2.0, 30.0, count), 2)
    base = np.datetime64(START + timedelta(days=day), "s")
    stamps = (base + seconds.astype("timedelta64[s]")).astype(str)
    text = np.char.add(np.char.add(card_ids.astype(str), ","), np.char.replace(stamps, "T", " "))
    amount_text = np.where(rng.random(count) < 0.05, "", amounts.astype(str))
    lines = np.char.add(np.char.add(text, ","), amount_text)
    return ("\n".join(lines.tolist()) + "\n").encode()


def load_days(url: str, days: range, per_day: int, cards: int, seed: int, *, create: bool) -> int:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if create:
            conn.execute("DROP TABLE IF EXISTS transactions")
            conn.execute("CREATE TABLE transactions (card_id BIGINT, ts TIMESTAMP, amount DOUBLE PRECISION)")
        for day in days:
            rng = np.random.default_rng([seed, day])
            data = generate_day(rng, day, per_day, cards)
            with conn.cursor().copy("COPY transactions FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(data)
        if create:
            conn.execute("CREATE INDEX ON transactions (ts)")
        conn.execute("ANALYZE transactions")
    return per_day * len(days)


@contextmanager
def postgres() -> Iterator[str]:
    sys.path.insert(0, str(ROOT))
    from tests.servers import postgres_server

    with postgres_server() as url:
        yield url


def measure(store: object, kind: str, end: datetime) -> Run:
    began = time.perf_counter()
    with PeakRss() as rss:
        [result] = store.materialize(end=end)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - began
    run = Run(kind, seconds, result.rows_read, result.rows_written_offline, rss.peak / 2**20, rss.load)
    print(f"  {kind}: {seconds:.1f} s, {run.rows_read:,} rows read, {run.rows_written:,} written, "
          f"peak {run.peak_rss_mb:,.0f} MiB, load {run.load_avg:.1f}", flush=True)  # fmt: skip
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="incremental one-day runs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)

    from features.store import FeatureStore
    from offline.spark.session import get_spark

    per_day = args.transactions // args.days
    work = ROOT / "bench" / ".work" / f"backfill-{uuid.uuid4().hex[:8]}"
    (work / "definitions").mkdir(parents=True)
    (work / "definitions" / "cards.py").write_text(DEFINITIONS)
    with postgres() as url:
        print(f"generating {per_day * args.days:,} transactions for {args.cards:,} cards over {args.days} days")
        began = time.perf_counter()
        load_days(url, range(args.days), per_day, args.cards, args.seed, create=True)
        print(f"  loaded into PostgreSQL in {time.perf_counter() - began:.0f} s", flush=True)
        (work / "skewless.yaml").write_text(
            f"project: backfill\nregistry: sqlite:///{work / 'registry.db'}\noffline:\n  path: offline\n"
            f"connections:\n  bench: {url}\n"
        )
        store = FeatureStore(work)
        store.apply()
        get_spark(store.config)  # start the JVM outside the timings
        runs = [measure(store, "full backfill", START + timedelta(days=args.days))]
        for i in range(args.repeats):
            day = args.days + i
            load_days(url, range(day, day + 1), per_day, args.cards, args.seed, create=False)
            runs.append(measure(store, "incremental day", START + timedelta(days=day + 1)))
        store.close()
    write_results(Path(args.out), args, runs)
    return 0


def write_results(out: Path, args: argparse.Namespace, runs: list[Run]) -> None:
    import pyspark

    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    machine = {
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
    }
    config = {k: getattr(args, k) for k in ("transactions", "cards", "days", "repeats", "seed")}
    (out / f"backfill-{stamp}.json").write_text(
        json.dumps({"machine": machine, "config": config, "runs": [asdict(r) for r in runs]}, indent=2) + "\n"
    )
    full = runs[0]
    incremental = runs[1:]
    lines = [
        f"# Backfill benchmark, {stamp}",
        "",
        f"{config['transactions']:,} transactions, {config['cards']:,} cards, {config['days']} days; sum, count and "
        "mean of the amount over 1h, 1d, 7d, 30d at a daily cadence (12 features); local Spark, "
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, pyspark {machine['pyspark']}. Peak memory is the "
        "resident memory of the Python process and the Spark JVM together. Load is the machine's mean 1-minute "
        "load average during the run (2.0 keeps both cores busy; more means other work competed for them).",
        "",
        "| run | wall time (s) | source rows read | value rows written | peak RSS (MiB) | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| full backfill | {full.seconds:.1f} | {full.rows_read:,} | {full.rows_written:,} "
        f"| {full.peak_rss_mb:,.0f} | {full.load_avg:.1f} |",
    ]
    if incremental:
        times = [r.seconds for r in incremental]
        reads = [r.rows_read for r in incremental]
        lines.append(
            f"| incremental day (min / median / max of {len(times)}) | {min(times):.1f} / "
            f"{statistics.median(times):.1f} / {max(times):.1f} | {int(statistics.median(reads)):,} | "
            f"{int(statistics.median(r.rows_written for r in incremental)):,} | "
            f"{max(r.peak_rss_mb for r in incremental):,.0f} | {statistics.mean(r.load_avg for r in incremental):.1f} |"
        )
    (out / f"backfill-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
