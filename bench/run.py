"""skewless and Feast side by side, on the same data, in one run (issue 4). Start it with ``bash bench/run.sh``.

    python -m bench.run                        # scale 1.0: 100k users, 2M feature rows, 200k entity rows
    python -m bench.run --scale 0.05 --repeats 2 --load-seconds 3 --name example-small

Generates one workload (bench/workload.py), writes it as Parquet for Feast (duckdb offline store, Redis online
store) and loads the same rows into a PostgreSQL started here for skewless (a generated feature repository
under bench/.work/), then measures, each case ``--repeats`` times: materialization into an empty Redis and onto
filled keys; the point-in-time training set of the entity rows (in-process and whole-process time, peak RSS);
online lookups through each Python client and the raw Redis round trip; HTTP lookups one at a time and under
16 connections against each server with 2 workers and against the floors (bench/floor_app.py in Python,
bench/go_floor/ compiled, built here with ``go build``); and every training set against the pandas oracle
(bench/oracle.py). ``--skip feast`` leaves Feast out (skewless and the floors only); ``--servers uvicorn,granian``
measures ``skewless serve`` under each ASGI server; ``--spark`` makes every skewless materialization run in
Spark (``offline.arrow_materialize_max_rows: 0``), the engine issue 25 measures beside Feast. Every server is
started here on 127.0.0.1, in its own process group, and killed at the end. Writes ``bench/results/<name>.md``
and ``.json`` (name: the date).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import compiled_floor, report  # noqa: E402
from bench.backfill import PeakRss  # noqa: E402
from bench.feast_side import FEATURES, write_repo  # noqa: E402
from bench.http_load import percentile  # noqa: E402
from bench.http_load import run as http_run  # noqa: E402
from bench.oracle import compare, training_set  # noqa: E402
from bench.workload import VIEWS, Workload, generate  # noqa: E402
from tests.servers import free_port, postgres_server, redis_server, wait_for_port  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

FEAST_PY = ROOT / "bench" / ".feast-venv" / "bin" / "python"
FEAST_CLI = ROOT / "bench" / ".feast-venv" / "bin" / "feast"
SKEWLESS_CLI = Path(sys.executable).parent / "skewless"
_T0 = time.monotonic()
LOAD_START = round(os.getloadavg()[0], 1)
WARM_UP_MATERIALIZATIONS = 3  # unmeasured runs through the warm engine first (see start_warm_engine)


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


class Recorder:
    """Collects measurements, one value per repetition."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str, str], report.Measurement] = {}

    def add(self, case: str, metric: str, system: str, value: float) -> None:
        key = (case, metric, system)
        self.items.setdefault(key, report.Measurement(case, metric, system)).values.append(round(value, 6))

    def all(self) -> list[report.Measurement]:
        return list(self.items.values())


# -- processes ------------------------------------------------------------------------------------------------
class RunFailed(RuntimeError):
    """A measured process failed, ran out of time or printed no result; with how long it ran and its peak RSS."""

    def __init__(self, message: str, seconds: float, peak_rss_mb: float) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.peak_rss_mb = peak_rss_mb


def run_measured(cmd: list[str], *, logfile: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in its own process group; whole-process seconds, peak RSS of its tree, and its RESULT.

    Raises :class:`RunFailed` when it fails (a crash, the kernel's OOM killer), times out or prints no RESULT."""
    began = time.perf_counter()
    with open(logfile, "ab") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env or os.environ.copy(), start_new_session=True
        )
        with PeakRss(proc.pid, every=0.1) as rss:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise RunFailed(
                    f"{' '.join(cmd[:4])} ... took more than {timeout:.0f} s; see {logfile}",
                    time.perf_counter() - began,
                    rss.peak / 2**20,
                ) from None
    seconds = time.perf_counter() - began
    peak = rss.peak / 2**20
    if proc.returncode != 0:
        killed = " (killed: out of memory?)" if proc.returncode == -signal.SIGKILL else ""
        raise RunFailed(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}){killed}; see {logfile}", seconds, peak)
    text = out.decode()
    if "RESULT " not in text:
        raise RunFailed(f"{' '.join(cmd[:4])} ... printed no RESULT; see {logfile}", seconds, peak)
    result: dict[str, Any] = json.loads(text[text.rindex("RESULT ") + len("RESULT ") :].splitlines()[0])
    result["whole_seconds"] = seconds
    result["peak_rss_mb"] = peak
    return result


def did_not_finish(system: str, case: str, failed: RunFailed) -> str:
    return (
        f"{system} {case[3:]}: did not finish ({failed}) after {failed.seconds:,.0f} s, "
        f"peak RSS {failed.peak_rss_mb:,.0f} MiB"
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextlib.contextmanager
def server(cmd: list[str], port: int, *, logfile: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """A server in its own process group (so its workers go with it); yields its pid."""
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, cwd=ROOT, env=env or os.environ.copy(), start_new_session=True
        )
        try:
            wait_for_port(port, timeout=120)
            time.sleep(2.0)  # both workers up, not just the first
            yield proc.pid
        finally:
            _kill_group(proc)


# -- data -----------------------------------------------------------------------------------------------------
def start_warm_engine(
    stack: contextlib.ExitStack, sk: list[str], repo: Path, entities: Path, work: Path, logs: Path, timeout: float
) -> PeakRss:
    """Start skewless's warm engine for ``repo`` and run jobs through it unmeasured, so its JIT is warm as in a
    long-lived engine; returns the sampler of the engine's memory, started.

    One materialization is not enough for that: the JVM keeps compiling Spark's planner, Delta and Parquet code
    for a dozen runs (measured: runs 2 to 15 in one session went from 9.3 s to 7.2 s), so three run first."""
    subprocess.run(
        [str(SKEWLESS_CLI), "engine", "start", "--repo", str(repo)], check=True, stdout=subprocess.DEVNULL, timeout=600
    )
    stack.callback(subprocess.run, [str(SKEWLESS_CLI), "engine", "stop", "--repo", str(repo)], check=False, timeout=120)
    info = json.loads((repo / ".skewless" / "engine" / "engine.json").read_text())
    began = time.perf_counter()
    for _ in range(WARM_UP_MATERIALIZATIONS):
        run_measured([*sk, "materialize", "--fresh", "--warm"], logfile=logs / "skewless-warm.log", timeout=timeout)
    run_measured(
        [*sk, "pit", str(entities), str(work / "warm-up.parquet"), "--warm"],
        logfile=logs / "skewless-warm.log",
        timeout=timeout,
    )
    log(
        f"warm engine (pid {info['pid']}) started and warmed up with {WARM_UP_MATERIALIZATIONS} materializations "
        f"and one training set in {time.perf_counter() - began:.0f} s"
    )
    rss = PeakRss(int(info["pid"]))
    rss.__enter__()
    return rss


def write_data(workload: Workload, data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    # Microseconds, not pandas' nanoseconds: Spark cannot read TIMESTAMP(NANOS) Parquet columns.
    options: dict[str, Any] = {"index": False, "coerce_timestamps": "us", "allow_truncated_timestamps": False}
    for name, view in workload.views.items():
        view.frame.to_parquet(data / f"{name}.parquet", **options)
    workload.entities.to_parquet(data / "entities.parquet", **options)


def load_postgres(url: str, workload: Workload) -> None:
    import io

    import psycopg

    sql_types = {"int64": "BIGINT", "float64": "DOUBLE PRECISION", "string": "TEXT"}
    with psycopg.connect(url, autocommit=True) as conn:
        for spec in VIEWS:
            frame = workload.views[spec.name].frame.copy()
            for column in ("event_ts", "created_ts"):  # TIMESTAMP columns hold UTC (skewless's rule for naive)
                frame[column] = frame[column].dt.tz_convert("UTC").dt.tz_localize(None)
            columns = ", ".join(f"{n} {sql_types[t]}" for n, t in spec.features)
            conn.execute(f"DROP TABLE IF EXISTS {spec.name}")
            conn.execute(
                f"CREATE TABLE {spec.name} (user_id BIGINT, event_ts TIMESTAMP, created_ts TIMESTAMP, {columns})"
            )
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S.%f")
            with conn.cursor().copy(f"COPY {spec.name} FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(buffer.getvalue())
            conn.execute(f"ANALYZE {spec.name}")


def write_skewless_repo(
    repo: Path, pg_url: str, redis_url: str, spark: dict[str, str] | None = None, *, arrow_materialize: bool = True
) -> None:
    """The generated feature repository; ``spark``: its ``offline.spark`` settings (default: ``local[2]``);
    ``arrow_materialize=False``: every view materializes in Spark (``offline.arrow_materialize_max_rows: 0``)."""
    spark_lines = "".join(f"    {k}: {v}\n" for k, v in (spark or {"spark.master": "local[2]"}).items())
    (repo / "definitions").mkdir(parents=True, exist_ok=True)
    views = []
    for spec in VIEWS:
        feats = ",\n        ".join(f'Feature("{n}", {t.capitalize()})' for n, t in spec.features)
        views.append(
            f"{spec.name}_rows = SqlSource(connection='bench', table='{spec.name}', timestamp='event_ts', "
            f"created='created_ts')\n\n"
            f"{spec.name} = FeatureView(\n    entities=[user],\n    source={spec.name}_rows,\n"
            f"    ttl=timedelta(seconds={int(spec.ttl.total_seconds())}),\n"
            f"    features=[\n        {feats},\n    ],\n)\n"
        )
    (repo / "definitions" / "users.py").write_text(
        '"""The benchmark workload (generated by bench/run.py)."""\n\nfrom datetime import timedelta\n\n'
        "from features import Entity, Feature, FeatureView, Float64, Int64, SqlSource, String\n\n"
        'user = Entity(join_keys={"user_id": Int64})\n\n' + "\n\n".join(views)
    )
    (repo / "skewless.yaml").write_text(
        f"project: bench\nregistry: sqlite:///{repo / 'registry.db'}\noffline:\n  path: offline\n"
        + ("" if arrow_materialize else "  arrow_materialize_max_rows: 0\n")
        + "  spark:\n"
        f"{spark_lines}online:\n  url: {redis_url}\nconnections:\n  bench: {pg_url}\n"
        "definitions: definitions\n"
    )


def _feast_has_spark() -> bool:
    probe = [str(FEAST_PY), "-c", "import pyspark"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def online_users(workload: Workload, now: datetime, count: int, size: int, seed: int) -> list[list[int]]:
    """Batches of users that have a row in both views recent enough to be served (within TTL of ``now``)."""
    recent = None
    for spec in VIEWS:
        frame = workload.views[spec.name].frame
        fresh = set(frame.loc[frame["event_ts"] >= now - spec.ttl + timedelta(days=1), "user_id"].tolist())
        recent = fresh if recent is None else recent & fresh
    pool = sorted(recent or [])
    rng = random.Random(seed)
    if len(pool) < size:
        pool = pool * (size // max(1, len(pool)) + 1)
    return [rng.sample(pool, size) for _ in range(count)]


# -- HTTP -----------------------------------------------------------------------------------------------------
def http_body(system: str, ids: list[int]) -> dict[str, Any]:
    """The request each server takes for ``ids``: the ten features by name (the floors read the same keys)."""
    if system in (report.REFERENCE, report.COMPILED):
        return {"entities": {"user_id": ids}}
    return {"features": FEATURES, "entities": {"user_id": ids}}


def wrk_load(
    url: str, body: bytes, seconds: float, work: Path, headers: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """(req/s, p99 ms, non-2xx) from wrk with 16 connections for ``seconds``, sending ``headers`` too."""
    script = work / "wrk-post.lua"
    extra = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items())
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"{extra}wrk.body = {json.dumps(body.decode())}\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{max(1, int(seconds))}s", "--timeout", "5s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps, p99, errors = 0.0, 0.0, 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = _wrk_ms(parts[1])
        elif line.strip().startswith("Non-2xx"):
            errors = int(parts[-1])
    return rps, p99, errors


def _wrk_ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def measure_http(
    rec: Recorder, system: str, url: str, bodies: dict[str, list[bytes]], args: argparse.Namespace, work: Path
) -> list[str]:
    notes = []
    for case, batches in bodies.items():
        for _ in range(args.repeats):
            seq = http_run(url, batches[0], connections=1, seconds=min(args.load_seconds, 5.0), max_requests=3000)
            if seq.errors:
                notes.append(f"{system} {case}: {seq.errors} of {seq.requests} sequential requests were not 200")
            rec.add(case, report.P50_SEQ, system, seq.percentile_ms(50))
            rec.add(case, report.P99_SEQ, system, seq.percentile_ms(99))
            if shutil.which("wrk"):
                rps, p99, errors = wrk_load(url, batches[0], args.load_seconds, work)
            else:
                load = http_run(url, batches[0], connections=16, seconds=args.load_seconds, max_requests=200_000)
                rps, p99, errors = load.requests_per_s, load.percentile_ms(99), load.errors
            if errors:
                notes.append(f"{system} {case}: {errors} requests under load were not 200")
            rec.add(case, report.RPS_LOAD, system, rps)
            rec.add(case, report.P99_LOAD, system, p99)
            log(
                f"  {system:9s} {case}: one at a time p50 {seq.percentile_ms(50):.2f} ms p99 "
                f"{seq.percentile_ms(99):.2f} ms; 16 connections {rps:,.0f} req/s p99 {p99:.1f} ms"
            )
    return notes


# -- the run --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """One benchmark run: its options, workload and folders, the servers it started, what it measured so far."""

    args: argparse.Namespace
    skip: set[str]
    now: datetime
    work: Path
    workload: Workload
    expected: pd.DataFrame  # the oracle's training set
    rec: Recorder = dataclasses.field(default_factory=Recorder)
    correctness: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    # Set by start_systems:
    sk_redis: str = ""
    feast_redis: str = ""
    with_spark: bool = False  # Feast's Spark offline store is measured too
    warm: bool = False  # skewless's warm engine is measured too
    mat_start: str = ""  # the window Feast materializes
    mat_end: str = ""

    @property
    def timeout(self) -> float:
        return 600 + 3600 * self.args.scale

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def entities_path(self) -> Path:
        return self.work / "data" / "entities.parquet"

    @property
    def sk_repo(self) -> Path:
        return self.work / "skewless"

    @property
    def feast_repo(self) -> Path:
        return self.work / "feast"

    @property
    def feast_spark_repo(self) -> Path:
        return self.work / "feast-spark"

    @property
    def sk(self) -> list[str]:
        """skewless's side, cold: the jobs run in its own process while the warm engine runs (SKEWLESS_ENGINE=here)."""
        return ["env", "SKEWLESS_ENGINE=here", sys.executable, "-m", "bench.skewless_side", str(self.sk_repo)]

    @property
    def sk_warm(self) -> list[str]:
        return [sys.executable, "-m", "bench.skewless_side", str(self.sk_repo)]

    @property
    def fe(self) -> list[str]:
        return [str(FEAST_PY), "bench/feast_side.py", str(self.feast_repo)]

    @property
    def feast(self) -> bool:
        """Feast is measured (``--skip feast`` leaves it out entirely: no venv needed)."""
        return "feast" not in self.skip

    def checkpoint(self, done: str) -> None:
        """Write the results so far, so a run stopped later still leaves what it measured."""
        partial = [*self.notes, f"partial results: the run had finished {done} when this was written"]
        self.write_results(partial, quiet=True)

    def write_results(self, notes: list[str], *, quiet: bool = False) -> None:
        measurements = self.rec.all()
        targets = report.evaluate_targets(measurements, self.correctness)
        write_results(
            Path(self.args.out), self.args, self.workload, measurements, targets, self.correctness, notes, quiet=quiet
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers_of(args)  # a wrong --servers fails now, not after the other cases
    if "feast" not in skipped(args) and not FEAST_PY.exists():
        print("Feast's venv is missing: run bash bench/run.sh, which creates bench/.feast-venv", file=sys.stderr)
        return 2
    run = prepare(args)
    with contextlib.ExitStack() as stack:
        engine_rss = start_systems(stack, run)
        if "materialize" not in run.skip:
            case_materialize(run)
            case_publish(run)
        else:  # the later cases need the data: skewless's tables (and online keys), Feast's online keys
            run_measured([*run.sk, "materialize", "--fresh"], logfile=run.logs / "skewless.log", timeout=run.timeout)
            if run.feast and not {"client", "http"} <= run.skip:
                run_measured(
                    [*run.fe, "materialize", run.mat_start, run.mat_end],
                    logfile=run.logs / "feast.log",
                    timeout=run.timeout,
                )
        run.checkpoint("case 1")
        if "pit" not in run.skip:
            case_point_in_time(run)
        if engine_rss is not None:
            stop_warm_engine(run, engine_rss)
        run.checkpoint("cases 1-2")
        batches = {
            report.CLIENT_1: online_users(run.workload, run.now, 200, 1, args.seed),
            report.CLIENT_100: online_users(run.workload, run.now, 20, 100, args.seed),
        }
        if "client" not in run.skip:
            case_clients(run, batches)
        run.checkpoint("cases 1-3")
        if "http" not in run.skip:
            case_http(run, batches)
    run.write_results(run.notes)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0: 100k users, 2M feature rows, 200k entity rows")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every case (min / median / max)")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="duration of each HTTP load")
    parser.add_argument("--name", default=None, help="results file name (default: the date)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated cases to skip: materialize,filled (the rerun onto filled keys),pit,client,http,"
        "feast-spark,feast-pit (Feast's duckdb training set, which runs out of memory at --scale 10),"
        "warm (skewless's warm engine),feast (Feast left out entirely: skewless and the floors only)",
    )
    parser.add_argument(
        "--spark", action="store_true", help="skewless materializes in Spark only (Arrow's engine turned off)"
    )
    parser.add_argument(
        "--servers",
        default="uvicorn",
        help="comma-separated ASGI servers to measure `skewless serve` with in the HTTP cases: uvicorn,granian",
    )
    return parser.parse_args(argv)


def skipped(args: argparse.Namespace) -> set[str]:
    return {s.strip() for s in args.skip.split(",") if s.strip()}


def prepare(args: argparse.Namespace) -> Run:
    """The workload, written as Parquet under a new work folder, and the oracle's training set of it."""
    now = datetime.now(UTC)
    end = now.replace(hour=0, minute=0, second=0, microsecond=0)
    work = ROOT / "bench" / ".work" / f"run-{now:%Y%m%d-%H%M%S}"
    (work / "logs").mkdir(parents=True)
    log(f"workload: scale {args.scale}, seed {args.seed}, data up to {end:%Y-%m-%d}; work dir {work}")
    workload = generate(args.scale, args.seed, end=end)
    write_data(workload, work / "data")
    log(
        f"  {workload.users:,} users, {workload.feature_rows:,} feature rows, {len(workload.entities):,} entity rows "
        f"({', '.join(f'{k}: {v}' for k, v in workload.entities['kind'].value_counts().sort_index().items())})"
    )
    expected = training_set(
        workload.entities,
        {name: (v.frame, v.spec.ttl, [f for f, _ in v.spec.features]) for name, v in workload.views.items()},
    )
    log("  oracle training set computed (pandas merge_asof)")
    return Run(args=args, skip=skipped(args), now=now, work=work, workload=workload, expected=expected)


def start_systems(stack: contextlib.ExitStack, run: Run) -> PeakRss | None:
    """PostgreSQL loaded with the workload, one Redis per system, the feature repositories applied, and the warm
    engine started and warmed up (its memory sampler is returned; None without it). ``stack`` stops them."""
    pg_url = stack.enter_context(postgres_server())
    run.sk_redis = stack.enter_context(redis_server())
    if run.feast:
        run.feast_redis = stack.enter_context(redis_server())
    log(f"PostgreSQL at {pg_url}, Redis for skewless at {run.sk_redis}, for Feast at {run.feast_redis or '-'}")
    began = time.perf_counter()
    load_postgres(pg_url, run.workload)
    log(f"  loaded {run.workload.feature_rows:,} rows into PostgreSQL in {time.perf_counter() - began:.1f} s")
    write_skewless_repo(run.sk_repo, pg_url, run.sk_redis, arrow_materialize=not run.args.spark)
    if run.feast:
        start_feast(run)
    else:
        run.notes.append("Feast was not measured (--skip feast)")
    run.warm = "warm" not in run.skip and not {"materialize", "pit"} <= run.skip
    engine_rss = None
    if run.warm:
        engine_rss = start_warm_engine(
            stack, run.sk_warm, run.sk_repo, run.entities_path, run.work, run.logs, run.timeout
        )
    run.mat_start = (run.workload.start - timedelta(days=1)).isoformat()
    run.mat_end = datetime.now(UTC).isoformat()
    return engine_rss


def start_feast(run: Run) -> None:
    """Feast's repositories written (duckdb, and Spark unless skipped or missing) and applied."""
    feast_port = int(run.feast_redis.rsplit(":", 1)[1].split("/")[0])
    write_repo(run.feast_repo, run.work / "data", feast_port)
    run.with_spark = "feast-spark" not in run.skip and _feast_has_spark()
    if run.with_spark:
        write_repo(run.feast_spark_repo, run.work / "data", feast_port, offline="spark")
        run_measured(
            [str(FEAST_PY), "bench/feast_side.py", str(run.feast_spark_repo), "apply"],
            logfile=run.logs / "feast-spark.log",
            timeout=600,
        )
    else:
        run.notes.append("Feast's Spark offline store was not measured (pyspark missing in its venv, or skipped)")
    run_measured([*run.fe, "apply"], logfile=run.logs / "feast.log", timeout=600)


def stop_warm_engine(run: Run, engine_rss: PeakRss) -> None:
    """Record the warm engine's peak memory, and stop it (its memory would weigh on the lookup cases)."""
    engine_rss.__exit__(None, None, None)
    run.rec.add(report.ENGINE, report.PEAK_RSS, report.SKEWLESS_WARM, engine_rss.peak / 2**20)
    subprocess.run([str(SKEWLESS_CLI), "engine", "stop", "--repo", str(run.sk_repo)], check=False)


def flush(url: str) -> None:
    """Empty the Redis database at ``url``."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


# -- (1) materialize ------------------------------------------------------------------------------------------
def case_materialize(run: Run) -> None:
    """Case 1: each system materializes into an empty Redis, then again onto the filled keys."""
    log("case 1: materialize (empty Redis, then onto filled keys)")
    computed_in: dict[str, set[str]] = {}  # system -> the engines its materializations reported
    for i in range(run.args.repeats):
        systems = [
            (report.SKEWLESS, [*run.sk, "materialize", "--fresh"], [*run.sk, "materialize", "--republish"]),
            (
                report.FEAST,
                [*run.fe, "materialize", run.mat_start, run.mat_end],
                [*run.fe, "materialize", run.mat_start, run.mat_end],
            ),
        ]
        if not run.feast:
            systems = [s for s in systems if s[0] != report.FEAST]
        if run.warm:
            systems.insert(
                1,
                (
                    report.SKEWLESS_WARM,
                    [*run.sk_warm, "materialize", "--fresh", "--warm"],
                    [*run.sk_warm, "materialize", "--warm", "--republish"],
                ),
            )
        for system, first, again in systems:
            flush(run.feast_redis if system == report.FEAST else run.sk_redis)
            for case, cmd in ((report.MAT_EMPTY, first), (report.MAT_FILLED, again)):
                if case == report.MAT_FILLED and "filled" in run.skip:
                    continue
                engines = materialize_once(run, i, system, case, cmd)
                if engines is None:
                    break
                if engines:
                    computed_in.setdefault(system, set()).add(engines)
    for system, engines_seen in computed_in.items():
        run.notes.append(
            f"{system} materialized its views in: {'; '.join(sorted(engines_seen))} (offline.arrow.materialize)"
        )


def materialize_once(run: Run, i: int, system: str, case: str, cmd: list[str]) -> str | None:
    """One measured materialization (repetition ``i``); the engines it reports ("" for none), None if it failed."""
    try:
        r = run_measured(cmd, logfile=run.logs / f"{system}.log", timeout=run.timeout)
    except RunFailed as failed:
        run.notes.append(did_not_finish(system, case, failed))
        log(f"  [{i + 1}/{run.args.repeats}] {run.notes[-1]}")
        return None
    run.rec.add(case, report.IN_PROCESS_S, system, r["seconds"])
    run.rec.add(case, report.WHOLE_PROCESS_S, system, r["whole_seconds"])
    run.rec.add(case, report.ROWS_PER_S, system, run.workload.feature_rows / r["whole_seconds"])
    run.rec.add(case, report.PEAK_RSS, system, r["peak_rss_mb"])
    engines = ", ".join(r.get("engines", []))
    log(
        f"  [{i + 1}/{run.args.repeats}] {system:9s} {case[3:]}: {r['seconds']:.1f} s in process, "
        f"{r['whole_seconds']:.1f} s whole, peak {r['peak_rss_mb']:,.0f} MiB"
        + (f" (computed in {engines})" if engines else "")
    )
    return engines


def case_publish(run: Run) -> None:
    """Part of case 1: skewless's Redis publishing alone, in keys per second."""
    for i in range(run.args.repeats):
        try:
            r = run_measured(
                [*run.sk, "publish", str(run.work / "data")], logfile=run.logs / "skewless.log", timeout=run.timeout
            )
        except RunFailed as failed:
            run.notes.append(did_not_finish(report.SKEWLESS, report.PUBLISH, failed))
            break
        run.rec.add(report.PUBLISH, report.KEYS_PER_S, report.SKEWLESS, r["keys_per_s"])
        log(f"  [{i + 1}/{run.args.repeats}] skewless  Redis publishing alone: {r['keys_per_s']:,.0f} keys/s")


# -- (2) point-in-time training sets, each checked against the oracle (6) ------------------------------------
def case_point_in_time(run: Run) -> None:
    """Case 2: each system's point-in-time training set of the entity rows; case 6: each against the oracle."""
    log("case 2: point-in-time training set (and case 6: each one against the oracle)")
    if "feast-pit" in run.skip:
        run.notes.append("Feast's duckdb training set was not measured (skipped: --skip feast-pit)")
    for i in range(run.args.repeats):
        pit_systems: list[tuple[str, list[str], list[str]]] = [(report.SKEWLESS, run.sk, [])]
        if run.feast and "feast-pit" not in run.skip:
            pit_systems.append((report.FEAST, run.fe, []))
        if run.warm:
            pit_systems.insert(1, (report.SKEWLESS_WARM, run.sk_warm, ["--warm"]))
        if run.with_spark:
            feast_spark = [str(FEAST_PY), "bench/feast_side.py", str(run.feast_spark_repo)]
            pit_systems.append((report.FEAST_SPARK, feast_spark, []))
        for system, cmd, flags in pit_systems:
            point_in_time_once(run, i, system, [*cmd, "pit", str(run.entities_path)], flags)


def point_in_time_once(run: Run, i: int, system: str, cmd: list[str], flags: list[str]) -> None:
    """One measured training set (repetition ``i``), compared with the oracle's."""
    out = run.work / f"training-{system}-{i}.parquet"
    try:
        r = run_measured([*cmd, str(out), *flags], logfile=run.logs / f"{system}.log", timeout=run.timeout)
    except RunFailed as failed:
        run.notes.append(did_not_finish(system, report.PIT, failed))
        log(f"  [{i + 1}/{run.args.repeats}] {run.notes[-1]}")
        return
    run.rec.add(report.PIT, report.IN_PROCESS_S, system, r["seconds"])
    run.rec.add(report.PIT, report.WHOLE_PROCESS_S, system, r["whole_seconds"])
    run.rec.add(report.PIT, report.PEAK_RSS, system, r["peak_rss_mb"])
    import pandas as pd

    check = compare(run.expected, pd.read_parquet(out), run.workload.feature_columns())
    run.correctness.append({"system": system, "run": f"point-in-time #{i + 1}", **check})
    log(
        f"  [{i + 1}/{run.args.repeats}] {system:9s} {r['seconds']:.1f} s in process, "
        f"{r['whole_seconds']:.1f} s whole, peak {r['peak_rss_mb']:,.0f} MiB; lost "
        f"{check['rows_lost']}, extra {check['rows_extra']}, wrong values {check['values_wrong']}"
    )


# -- (3) Python clients ---------------------------------------------------------------------------------------
def case_clients(run: Run, batches: dict[str, list[list[int]]]) -> None:
    """Case 3: online lookups through each system's Python client, and the raw Redis round trip."""
    log("case 3: online lookup through the Python client")
    for case, users in batches.items():
        users_file = run.work / f"users-{len(users[0])}.json"
        users_file.write_text(json.dumps(users))
        for i in range(run.args.repeats):
            for system, cmd in ((report.SKEWLESS, run.sk), (report.FEAST, run.fe))[: 2 if run.feast else 1]:
                r = run_measured(
                    [*cmd, "online", str(users_file), "--seconds", str(min(run.args.load_seconds, 5.0))],
                    logfile=run.logs / f"{system}.log",
                    timeout=300,
                )
                run.rec.add(case, report.LATENCY_MS, system, percentile(r["client"], 50) * 1000)
                run.rec.add(case, report.P99_SEQ, system, percentile(r["client"], 99) * 1000)
                if "raw_mget" in r:
                    run.rec.add(case, report.LATENCY_MS, report.REFERENCE, percentile(r["raw_mget"], 50) * 1000)
                    run.rec.add(case, report.P99_SEQ, report.REFERENCE, percentile(r["raw_mget"], 99) * 1000)
                log(
                    f"  [{i + 1}/{run.args.repeats}] {system:9s} {case[3:]}: median "
                    f"{percentile(r['client'], 50) * 1000:.3f} ms over {len(r['client'])} calls"
                    + (f" (raw MGET {percentile(r['raw_mget'], 50) * 1000:.3f} ms)" if "raw_mget" in r else "")
                    + f"; {r['present']} values present in the first answer"
                )


# -- (4) and (5): HTTP against each server and the floor ------------------------------------------------------
def case_http(run: Run, batches: dict[str, list[list[int]]]) -> None:
    """Cases 4 and 5: HTTP lookups one at a time and under 16 connections, against each server and the floor."""
    log("case 4 and 5: HTTP, one request at a time and 16 connections (servers with 2 workers)")
    http_cases = {report.HTTP_1: batches[report.CLIENT_1], report.HTTP_100: batches[report.CLIENT_100]}
    for system, path, command, env in http_servers(run):
        bodies = {
            case: [json.dumps(http_body(system, u)).encode() for u in users[:1]] for case, users in http_cases.items()
        }
        measure_server(run, system, path, command, env, bodies)
        if system == report.FEAST:  # gunicorn restarts a worker every --max-requests (Feast's default: 1000)
            boots = (run.logs / f"{system}-server.log").read_text(errors="replace").count("Booting worker")
            if boots > 2:
                run.notes.append(
                    f"Feast's gunicorn restarted a worker {boots - 2} times during the HTTP cases (its "
                    "default --max-requests 1000); a request cut by a restart counts as an error"
                )


SERVER_SYSTEMS = {"uvicorn": report.SKEWLESS, "granian": report.SKEWLESS_GRANIAN}  # --servers: how each is named


def http_servers(run: Run) -> list[tuple[str, str, str, dict[str, str] | None]]:
    """(system, lookup path, command without its port, environment) of each HTTP server: skewless's (under each
    of ``--servers``), Feast's, and the floors, Python's and the compiled one, which read the live snapshot's keys
    of skewless's Redis straight."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(run.sk_redis)
    prefixes = ",".join(
        f"bench:{spec.name}:v{int(client.hget(f'bench:{spec.name}:_live', 'version') or 0)}:" for spec in VIEWS
    )
    client.close()
    floor_env = {**os.environ, "FLOOR_REDIS_URL": run.sk_redis, "FLOOR_PREFIXES": prefixes}
    servers: list[tuple[str, str, str, dict[str, str] | None]] = [
        (
            SERVER_SYSTEMS[name],
            "/v1/features",
            f"{SKEWLESS_CLI} serve --repo {run.sk_repo} --workers 2 --server {name} --port",
            None,
        )
        for name in servers_of(run.args)
    ]
    if run.feast:
        servers.append(
            (
                report.FEAST,
                "/get-online-features",
                f"{FEAST_CLI} -c {run.feast_repo} serve -h 127.0.0.1 --workers 2 --no-access-log -p",
                None,
            )
        )
    servers.append(
        (
            report.REFERENCE,
            "/v1/features",
            f"{sys.executable} -m bench.floor_app --host 127.0.0.1 --workers 2 --port",
            floor_env,
        )
    )
    binary = compiled_floor.build()
    if binary is None:
        run.notes.append(compiled_floor.NO_GO)
        log(f"  {compiled_floor.NO_GO}")
    else:  # GOMAXPROCS=2: as many threads running Go code as the other servers have workers
        servers.append(
            (report.COMPILED, "/v1/features", f"{binary} --host 127.0.0.1 --port", {**floor_env, "GOMAXPROCS": "2"})
        )
    return servers


def servers_of(args: argparse.Namespace) -> list[str]:
    """The ASGI servers of ``--servers``, checked."""
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVER_SYSTEMS]
    if unknown or not names:
        raise SystemExit(f"--servers: unknown {unknown or 'empty'}; choose among {', '.join(SERVER_SYSTEMS)}")
    return names


def measure_server(
    run: Run, system: str, path: str, command: str, env: dict[str, str] | None, bodies: dict[str, list[bytes]]
) -> None:
    """Start one HTTP server, warm it up, measure every HTTP case against it and its peak memory, stop it."""
    port = free_port()
    with server([*command.split(), str(port)], port, logfile=run.logs / f"{system}-server.log", env=env) as pid:
        url = f"http://127.0.0.1:{port}{path}"
        warm_up = http_run(url, bodies[report.HTTP_1][0], connections=2, seconds=1.0, max_requests=200)
        if warm_up.errors:
            run.notes.append(
                f"{system} server answered {warm_up.errors} of {warm_up.requests} warm-up requests with an error"
            )
        with PeakRss(pid) as rss:
            run.notes += measure_http(run.rec, system, url, bodies, run.args, run.work)
        run.rec.add("4. HTTP server (whole run)", report.PEAK_RSS, system, rss.peak / 2**20)


def write_results(
    out: Path,
    args: argparse.Namespace,
    workload: Workload,
    measurements: list[report.Measurement],
    targets: list[report.Target],
    correctness: list[dict[str, Any]],
    notes: list[str],
    *,
    quiet: bool = False,
) -> None:
    import pyspark

    feast_version = (
        subprocess.run(
            [str(FEAST_PY), "-c", "import feast; print(feast.__version__)"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if FEAST_PY.exists()
        else ""
    )
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    name = args.name or date
    results = {
        "date": date,
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "pyspark": pyspark.__version__,
            "feast": feast_version or "?",
            "load_generator": "wrk -t2 -c16" if shutil.which("wrk") else "bench/http_load.py (16 connections)",
            "load_start": LOAD_START,
            "load_end": round(os.getloadavg()[0], 1),
        },
        "config": {
            "scale": args.scale,
            "seed": args.seed,
            "repeats": args.repeats,
            "load_seconds": args.load_seconds,
            "users": workload.users,
            "feature_rows": workload.feature_rows,
            "entity_rows": len(workload.entities),
            "entity_kinds": {str(k): int(v) for k, v in workload.entities["kind"].value_counts().sort_index().items()},
        },
        **report.to_jsonable(measurements, targets),
        "correctness": correctness,
        "notes": notes,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    picture = report.write_picture(results, measurements, out / f"{name}.png")
    markdown = report.render(results, picture=picture)
    (out / f"{name}.md").write_text(markdown)
    if not quiet:
        print(markdown)
    log(f"wrote {out / name}.md and .json")


if __name__ == "__main__":
    raise SystemExit(main())
