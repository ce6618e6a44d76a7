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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
def servers(redis_url: str, work: Path) -> Iterator[dict[str, tuple[str, dict[str, str]]]]:
    """Every server started: name -> (lookup URL, extra request headers)."""
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
        "granian": ("plain", "granian"),
        "uvicorn+auth": ("auth", "uvicorn"),
        "uvicorn+metrics": ("metrics", "uvicorn"),
    }
    binary = compiled_floor.build()
    with contextlib.ExitStack() as stack:
        started: dict[str, tuple[str, dict[str, str]]] = {}
        if binary is None:
            log(compiled_floor.NO_GO)
        else:
            port = free_port()
            env = {**os.environ, "FLOOR_REDIS_URL": redis_url, "FLOOR_PREFIXES": prefixes, "GOMAXPROCS": "2"}
            command = [str(binary), "--host", "127.0.0.1", "--port", str(port)]
            stack.enter_context(server(command, port, logfile=work / "floor.log", env=env))
            started["floor"] = (f"http://127.0.0.1:{port}/v1/features", {})
        for name, (repo, asgi) in commands.items():
            port = free_port()
            command = [str(SKEWLESS_CLI), "serve", "--repo", str(repos[repo]), "--port", str(port)]
            command += ["--workers", "2", "--server", asgi]
            stack.enter_context(server(command, port, logfile=work / f"{name}.log"))
            headers = {"Authorization": f"Bearer {TOKEN}"} if repo == "auth" else {}
            started[name] = (f"http://127.0.0.1:{port}/v1/features", headers)
        yield started


def body(name: str, entities: int) -> bytes:
    """The request of ``entities`` users: the ten features by name (the floor reads the same keys)."""
    if name == "floor":
        return json.dumps({"entities": json.loads(body_of(entities))["entities"]}).encode()
    return body_of(entities)


def measure(rounds: int, seconds: float) -> dict[str, object]:
    rps: dict[tuple[str, int], list[float]] = {}
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        with RedisOnlineStore(redis_url, project=PROJECT) as store:
            publish_users(store)
        with servers(redis_url, Path(tmp)) as started:
            names = list(started)
            for name in names:  # warm-up: the Lua read, the decoders, the JIT of nothing
                url, headers = started[name]
                for entities in CASES:
                    wrk_load(url, body(name, entities), 1, Path(tmp), headers)
            for round_ in range(rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    url, headers = started[name]
                    for entities in CASES:
                        got, p99, errors = wrk_load(url, body(name, entities), seconds, Path(tmp), headers)
                        if errors or not got:
                            raise SystemExit(
                                f"{name}, {entities} entities: {errors} answers were not 2xx ({got} req/s)"
                            )
                        rps.setdefault((name, entities), []).append(got)
                        log(
                            json.dumps(
                                {"round": round_, "server": name, "entities": entities, "rps": got, "p99_ms": p99}
                            )
                        )
    return summarize(rps)


def summarize(rps: dict[tuple[str, int], list[float]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for (name, entities), values in rps.items():
        median = statistics.median(values)
        out[f"{name} {entities}"] = {
            "median_rps": round(median),
            "spread_pct": round(100 * (max(values) - min(values)) / median, 1),
            "rps": values,
        }

    def paired(a: str, b: str, entities: int) -> float | None:
        if (a, entities) not in rps or (b, entities) not in rps:
            return None
        ratios = [y / x for x, y in zip(rps[a, entities], rps[b, entities], strict=True)]
        return round(100 * statistics.median(ratios), 1)

    for entities in CASES:
        for name in ("uvicorn", "granian"):
            out[f"{name} / floor, {entities} entities (%)"] = paired("floor", name, entities)
        auth = paired("uvicorn", "uvicorn+auth", entities)
        metrics = paired("uvicorn", "uvicorn+metrics", entities)
        out[f"auth cost, {entities} entities (%)"] = None if auth is None else round(100 - auth, 1)
        out[f"metrics cost, {entities} entities (%)"] = None if metrics is None else round(100 - metrics, 1)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    out["features"] = len(FEATURES)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.rounds, args.seconds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
