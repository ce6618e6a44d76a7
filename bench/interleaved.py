"""End-to-end req/s of the servers side by side, interleaved: every server runs for the whole measurement, and each
round loads each server in turn (round-robin, the order rotating from round to round), so a shared machine's
drifts fall on all of them alike. wrk, 16 connections; every server with 2 workers (Go: GOMAXPROCS=2) on the same
redis-server and rows (bench/hotpath.py's two views of five features, 1,000 users).

    python bench/interleaved.py --rounds 5 --seconds 5

Servers: ``floor`` (Go's net/http and go-redis doing the one ``MGET``: bench/go_floor/), ``uvicorn`` and
``granian`` (``skewless serve --server ...``), ``uvicorn+auth`` (a bearer token checked on every request),
``uvicorn+metrics`` (``serving.metrics`` on; the other skewless servers have it off). Reported per server and
case (1 and 100 entities): the median req/s and its spread (min-max, % of the median); then the issue's ratios,
each the median over rounds of the round's own ratio (paired): skewless / floor (targets >= 40% for 1 entity, >=
80% for 100), and the costs of authentication (<= 5%) and of /metrics (<= 3%) against plain uvicorn.

Req/s on a 2-core machine is noisy (a round's paired ratio of two identical servers moves by +-10%), too noisy
to settle a 3% cost. So each load also counts CPU time: the server's (every process of its group, from /proc),
redis-server's and wrk's, per request answered. A cost on the hot path shows as the server's CPU per request,
which other processes' load barely moves; its share of the whole stack's CPU per request (server + redis-server
+ wrk) is what it costs in req/s when the stack saturates the machine. ``uvicorn=`` is a second plain uvicorn,
the control: its differences from ``uvicorn`` are the harness's own noise. ``--servers`` picks some of them.

``--baseline CLI`` adds ``baseline``: plain uvicorn served by another checkout's ``skewless`` command (say main's
venv), loaded in the same rounds, so a change of the hot path is measured against the code before it, paired:

    python bench/interleaved.py --servers floor,uvicorn --baseline /work/main/.venv/bin/skewless
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import compiled_floor  # noqa: E402
from bench.hotpath import FEATURES, PLAN, TOKEN, body_of, publish_users  # noqa: E402
from bench.run import SKEWLESS_CLI, log, server, wrk_load  # noqa: E402
from online.redis_layout import ViewKeys  # noqa: E402
from online.redis_store import RedisOnlineStore  # noqa: E402
from serving_api.auth import hash_token  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402
from tests.serving.conftest import write_repo  # noqa: E402

PROJECT = "interleaved"
CASES = (1, 100)


@contextlib.contextmanager
def servers(
    redis_url: str, work: Path, chosen: set[str], baseline: str | None = None
) -> Iterator[dict[str, tuple[str, dict[str, str], int]]]:
    """The chosen servers started: name -> (lookup URL, extra request headers, process group)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    prefixes = ",".join(
        ViewKeys.of(PROJECT, view.online_name).data_prefix
        + client.hget(ViewKeys.of(PROJECT, view.online_name).pointer, "version").decode()  # type: ignore[union-attr]
        + ":"
        for view in PLAN.views
    )
    client.close()
    plain = "  metrics: false\n"
    token = f"  metrics: false\n  tokens:\n    bench:\n      hash: {hash_token(TOKEN)}\n      services: ['*']\n"
    repos = {}
    for name, serving in (("plain", plain), ("auth", token), ("metrics", "  metrics: true\n")):
        (work / name).mkdir()
        repos[name] = write_repo(work / name, redis_url, PROJECT, serving, plan=PLAN)
    commands = {
        "uvicorn": ("plain", "uvicorn"),
        "uvicorn=": ("plain", "uvicorn"),
        "granian": ("plain", "granian"),
        "uvicorn+auth": ("auth", "uvicorn"),
        "uvicorn+metrics": ("metrics", "uvicorn"),
        "baseline": ("plain", "uvicorn"),
    }
    binary = compiled_floor.build() if "floor" in chosen else None
    with contextlib.ExitStack() as stack:
        started: dict[str, tuple[str, dict[str, str], int]] = {}
        if binary is None:
            if "floor" in chosen:
                log(compiled_floor.NO_GO)
        else:
            port = free_port()
            env = {**os.environ, "FLOOR_REDIS_URL": redis_url, "FLOOR_PREFIXES": prefixes, "GOMAXPROCS": "2"}
            command = [str(binary), "--host", "127.0.0.1", "--port", str(port)]
            group = stack.enter_context(server(command, port, logfile=work / "floor.log", env=env))
            started["floor"] = (f"http://127.0.0.1:{port}/v1/features", {}, group)
        for name, (repo, asgi) in commands.items():
            if name not in chosen:
                continue
            port = free_port()
            cli = baseline if name == "baseline" and baseline else str(SKEWLESS_CLI)
            command = [cli, "serve", "--repo", str(repos[repo]), "--port", str(port)]
            command += ["--workers", "2", "--server", asgi]
            group = stack.enter_context(server(command, port, logfile=work / f"{name}.log"))
            headers = {"Authorization": f"Bearer {TOKEN}"} if repo == "auth" else {}
            started[name] = (f"http://127.0.0.1:{port}/v1/features", headers, group)
        yield started


def body(name: str, entities: int) -> bytes:
    """The request of ``entities`` users: the ten features by name (the floor reads the same keys)."""
    if name == "floor":
        return json.dumps({"entities": json.loads(body_of(entities))["entities"]}).encode()
    return body_of(entities)


SERVERS = ("floor", "uvicorn", "uvicorn=", "granian", "uvicorn+auth", "uvicorn+metrics")
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(group: int) -> float:
    """User + system CPU seconds of every live process of a process group (its workers included)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": the name may hold spaces
        except (OSError, IndexError):  # gone meanwhile
            continue
        if int(fields[2]) == group:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (every wrk run so far)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class Load:
    """One load of one server: req/s, and CPU µs per request answered of the server, redis-server and wrk."""

    rps: float
    server_us: float
    redis_us: float
    wrk_us: float

    @property
    def stack_us(self) -> float:
        return self.server_us + self.redis_us + self.wrk_us


def measure(rounds: int, seconds: float, chosen: set[str], baseline: str | None = None) -> dict[str, object]:
    loads: dict[tuple[str, int], list[Load]] = {}
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        import redis as redis_lib

        with RedisOnlineStore(redis_url, project=PROJECT) as store:
            publish_users(store)
        client = redis_lib.Redis.from_url(redis_url)
        redis_group = os.getpgid(int(client.info("server")["process_id"]))
        client.close()
        with servers(redis_url, Path(tmp), chosen, baseline) as started:
            names = list(started)
            for name in names:  # warm-up: the Lua read, the decoders, the JIT of nothing
                url, headers, _ = started[name]
                for entities in CASES:
                    wrk_load(url, body(name, entities), 1, Path(tmp), headers)
            for round_ in range(rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    url, headers, group = started[name]
                    for entities in CASES:
                        before = (cpu_seconds(group), cpu_seconds(redis_group), children_cpu_seconds())
                        got, p99, errors = wrk_load(url, body(name, entities), seconds, Path(tmp), headers)
                        after = (cpu_seconds(group), cpu_seconds(redis_group), children_cpu_seconds())
                        if errors or not got:
                            raise SystemExit(
                                f"{name}, {entities} entities: {errors} answers were not 2xx ({got} req/s)"
                            )
                        answered = got * max(1, int(seconds))
                        per_request = [1e6 * (b - a) / answered for a, b in zip(before, after, strict=True)]
                        load = Load(got, *per_request)
                        loads.setdefault((name, entities), []).append(load)
                        log(
                            json.dumps(
                                {
                                    "round": round_,
                                    "server": name,
                                    "entities": entities,
                                    "rps": got,
                                    "p99_ms": p99,
                                    "cpu_us_per_request": {
                                        "server": round(load.server_us, 1),
                                        "redis": round(load.redis_us, 1),
                                        "wrk": round(load.wrk_us, 1),
                                    },
                                }
                            )
                        )
    return summarize(loads)


def summarize(loads: dict[tuple[str, int], list[Load]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for (name, entities), values in loads.items():
        rps = [load.rps for load in values]
        server_us = [load.server_us for load in values]
        median = statistics.median(rps)
        out[f"{name} {entities}"] = {
            "median_rps": round(median),
            "spread_pct": round(100 * (max(rps) - min(rps)) / median, 1),
            "rps": rps,
            "server_cpu_us_per_request": round(statistics.median(server_us), 1),
            "server_cpu_spread_pct": round(100 * (max(server_us) - min(server_us)) / statistics.median(server_us), 1),
            "stack_cpu_us_per_request": round(statistics.median(load.stack_us for load in values), 1),
        }

    def paired(a: str, b: str, entities: int) -> float | None:
        """The median over rounds of b's req/s as a % of a's in the same round."""
        if (a, entities) not in loads or (b, entities) not in loads:
            return None
        ratios = [y.rps / x.rps for x, y in zip(loads[a, entities], loads[b, entities], strict=True)]
        return round(100 * statistics.median(ratios), 1)

    def cpu_cost(a: str, b: str, entities: int) -> float | None:
        """What b's server adds per request to a's, as a % of a's whole stack CPU per request (server, redis-server
        and wrk): its cost in req/s when the stack saturates the machine. The median over rounds, paired."""
        if (a, entities) not in loads or (b, entities) not in loads:
            return None
        costs = [
            (y.server_us - x.server_us) / x.stack_us
            for x, y in zip(loads[a, entities], loads[b, entities], strict=True)
        ]
        return round(100 * statistics.median(costs), 1)

    for entities in CASES:
        for name in ("uvicorn", "granian", "baseline"):
            ratio = paired("floor", name, entities)
            if ratio is not None:
                out[f"{name} / floor, {entities} entities (%)"] = ratio
        ratio = paired("baseline", "uvicorn", entities)
        if ratio is not None:
            out[f"uvicorn / baseline, {entities} entities (%)"] = ratio
            out[f"uvicorn - baseline in CPU per request, {entities} entities (%)"] = cpu_cost(
                "baseline", "uvicorn", entities
            )
        for name, label in (("uvicorn=", "control"), ("uvicorn+auth", "auth"), ("uvicorn+metrics", "metrics")):
            ratio = paired("uvicorn", name, entities)
            if ratio is not None:
                out[f"{label} cost in req/s, {entities} entities (%)"] = round(100 - ratio, 1)
                out[f"{label} cost in CPU per request, {entities} entities (%)"] = cpu_cost("uvicorn", name, entities)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    out["features"] = len(FEATURES)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"a comma-separated subset of {', '.join(SERVERS)}"
    )
    parser.add_argument("--baseline", help="another checkout's skewless command: adds the server 'baseline'")
    args = parser.parse_args()
    chosen = set(args.servers.split(",")) | ({"baseline"} if args.baseline else set())
    if not chosen <= {*SERVERS, "baseline"}:
        parser.error(f"unknown servers {sorted(chosen - set(SERVERS))}: choose among {', '.join(SERVERS)}")
    print(json.dumps(measure(args.rounds, args.seconds, chosen, args.baseline), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
