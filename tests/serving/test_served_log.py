"""The served-feature log of a running ``skewless serve`` (real process, real redis-server): what it logs equals what
the HTTP answers said, sampling (rate 0, rate 1, a per-service override), a full queue, the flush on shutdown, and
``kill -9`` losing at most the lookups answered since the last flush. Plus the ``serving.log`` settings' errors."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.config import RepoConfig
from features.errors import ConfigError
from offline import served_log
from online.redis_store import RedisOnlineStore
from tests import servers
from tests.serving.conftest import start_serve, write_repo

NATIVE = "/v1/features"
FEAST = "/get-online-features"
# Requests covering every status and kind of value publish_rows wrote: present, expired (card 2: 30 days old, TTL
# one day), NaN and null (card 3), missing (card 9, merchant "none"), infinity (card 2's limit, expired).
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (NATIVE, {"features": ["card:limit", "card:tier"], "entities": {"card_id": [1, 2, 3, 9]}}),
    (NATIVE, {"feature_service": "fraud", "entities": {"card_id": [1, 3], "merchant": ["acme", "none"]}}),
    (NATIVE, {"features": ["merchant:risk"], "entities": {"merchant": ["acme"]}}),
    (FEAST, {"features": ["card:limit"], "entities": {"card_id": [1, 9]}, "full_feature_names": True}),
]
BAD = (NATIVE, {"features": ["card:nope"], "entities": {"card_id": [1]}})  # 404: not logged


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    repo: Path

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=10)

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops a worker (the lifespan's shutdown runs)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)


@pytest.fixture
def serve(tmp_path: Path, redis_url: str, online: RedisOnlineStore, project: str) -> Iterator[Any]:
    """Starts ``skewless serve`` (one worker) on a repository with the ``serving.log`` lines given."""
    started: list[subprocess.Popen[bytes]] = []

    def start(log_lines: str, name: str = "repo") -> Server:
        repo = tmp_path / name
        repo.mkdir()
        write_repo(repo, redis_url, project, serving="  log:\n" + log_lines)
        port = servers.free_port()
        log = tmp_path / f"{name}.log"
        proc = start_serve(repo, port, log)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        return Server(url, proc, log, repo)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def landed(repo: Path) -> list[dict[str, Any]]:
    """Land the repository's log, then its rows as plain dicts."""
    config = RepoConfig.load(repo)
    served_log.land(config)
    return served_log.read(config).to_pylist()


def expected_rows(path: str, body: dict[str, Any], answer: httpx.Response) -> list[dict[str, Any]]:
    """The log rows a 200 answer implies, built from the answer's JSON alone (the oracle): one per (entity,
    feature), value and status and event time as the answer said them."""
    data = answer.json()
    rid = answer.headers["X-Request-ID"]
    service = body.get("feature_service")
    keys = body["entities"]
    count = len(next(iter(keys.values())))
    entities = [json.dumps({k: keys[k][i] for k in sorted(keys)}, separators=(",", ":")) for i in range(count)]
    if path == FEAST:  # Feast's answer: join keys first, then one result per feature; statuses in Feast's words
        names = data["metadata"]["feature_names"][len(keys) :]
        columns = {
            name: {
                "values": result["values"],
                "statuses": [{"PRESENT": "present", "NOT_FOUND": "missing"}[s] for s in result["statuses"]],
                "event_timestamps": [None if t == "1970-01-01T00:00:00Z" else t for t in result["event_timestamps"]],
            }
            for name, result in zip(names, data["results"][len(keys) :], strict=True)
        }
    else:
        columns = data["features"]
    rows = []
    for feature, column in columns.items():
        for i in range(count):
            stamp = column["event_timestamps"][i]
            rows.append(
                {
                    "request_id": rid,
                    "service": service,
                    "entity_index": i,
                    "entity": entities[i],
                    "view": feature.split("__")[0],
                    "feature": feature,
                    "value": column["values"][i],
                    "status": column["statuses"][i],
                    "event_timestamp": None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00")),
                }
            )
    return rows


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A logged row in the oracle's terms: the value decoded from its JSON text, the columns the oracle knows."""
    out = {key: row[key] for key in ("request_id", "service", "entity_index", "entity", "view", "feature", "status")}
    out["value"] = None if row["value"] is None else json.loads(row["value"])
    out["event_timestamp"] = row["event_timestamp"]
    return out


def by_key(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (r["request_id"], r["feature"], r["entity_index"], json.dumps(r, default=str, sort_keys=True)) for r in rows
    )


def test_the_log_holds_what_every_answer_said(serve: Any) -> None:
    server = serve("    sample_rate: 1\n    flush_seconds: 0.2\n")
    before = datetime.now(UTC)
    expected: list[dict[str, Any]] = []
    for path, body in REQUESTS * 3:
        answer = server.post(path, body)
        assert answer.status_code == 200, answer.text
        expected += expected_rows(path, body, answer)
    assert server.post(*BAD).status_code == 404
    after = datetime.now(UTC)
    server.stop()
    rows = landed(server.repo)
    assert by_key([comparable(r) for r in rows]) == by_key(expected)
    assert all(before <= r["served_at"] <= after and r["day"] == r["served_at"].strftime("%Y-%m-%d") for r in rows)
    assert {r["plan_version"] for r in rows} == {1}
    assert len({r["request_id"] for r in rows}) == len(REQUESTS) * 3
    statuses = {r["status"] for r in rows}
    assert statuses == {"present", "missing", "expired"}, statuses  # the requests reached every status


def test_rate_zero_logs_nothing_and_a_service_rate_overrides_it(serve: Any) -> None:
    server = serve("    sample_rate: 0\n    flush_seconds: 0.2\n    services: {fraud: 1.0, nosuch: 0.5}\n")
    fraud = [r for r in REQUESTS if "feature_service" in r[1]]
    plain = [r for r in REQUESTS if "feature_service" not in r[1]]
    ids = set()
    for _ in range(5):
        for path, body in plain:
            assert server.post(path, body).status_code == 200
        for path, body in fraud:
            answer = server.post(path, body)
            assert answer.status_code == 200
            ids.add(answer.headers["X-Request-ID"])
    server.stop()
    rows = landed(server.repo)
    assert {r["request_id"] for r in rows} == ids
    assert {r["service"] for r in rows} == {"fraud"}
    text = server.log.read_text()
    assert "serving.log.services names feature service(s) the plan does not have: nosuch" in text, text[-2000:]


def test_a_full_queue_drops_lookups_and_every_request_is_still_answered(serve: Any) -> None:
    # No flush before shutdown (an hour's interval): the queue holds 5 lookups, the other 25 are dropped.
    server = serve("    sample_rate: 1\n    flush_seconds: 3600\n    queue_size: 5\n")
    path, body = REQUESTS[0]
    ids = []
    for _ in range(30):
        answer = server.post(path, body)
        assert answer.status_code == 200
        ids.append(answer.headers["X-Request-ID"])
    server.stop()  # the shutdown flushes what is queued
    rows = landed(server.repo)
    assert {r["request_id"] for r in rows} == set(ids[:5])


def test_kill_9_loses_at_most_the_lookups_since_the_last_flush(serve: Any) -> None:
    flush = 0.3
    server = serve(f"    sample_rate: 1\n    flush_seconds: {flush}\n")
    path, body = REQUESTS[1]
    before: list[str] = []
    for _ in range(40):
        answer = server.post(path, body)
        assert answer.status_code == 200
        before.append(answer.headers["X-Request-ID"])
    time.sleep(3 * flush)  # more than one flush interval: a flush ran after the last of these was answered
    after = [server.post(path, body).headers["X-Request-ID"] for _ in range(20)]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    rows = landed(server.repo)
    logged = {r["request_id"] for r in rows}
    assert set(before) <= logged  # every lookup answered before the last flush
    assert logged <= set(before) | set(after)
    per_request: dict[str, int] = {}
    for row in rows:
        per_request[row["request_id"]] = per_request.get(row["request_id"], 0) + 1
    assert set(per_request.values()) == {4}  # whole lookups only: 2 entities x 2 features, none torn


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ({"sample_rate": 1.5}, "serving.log.sample_rate must be a number from 0 to 1"),
        ({"sample_rate": True}, "serving.log.sample_rate must be a number from 0 to 1"),
        ({"services": {"fraud": -0.1}}, "serving.log.services.fraud must be a number from 0 to 1"),
        ({"services": ["fraud"]}, "serving.log.services must map feature service names"),
        ({"flush_seconds": 0}, "serving.log.flush_seconds must be a number of seconds above 0"),
        ({"queue_size": 0}, "serving.log.queue_size must be a whole number of at least 1"),
        ({"retention_days": 1.5}, "serving.log.retention_days must be a whole number of at least 1"),
        ({"rate": 1}, r"unknown key\(s\) in 'serving.log' \['rate'\]; valid choices: \['flush_seconds'"),
        ("on", "'serving.log' must be a mapping of settings"),
    ],
)
def test_bad_log_settings_name_the_key_and_the_valid_values(tmp_path: Path, log: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RepoConfig.from_dict(tmp_path, {"serving": {"log": log}})


def lookup_result(entities: int) -> Any:
    from features.dtypes import DType
    from features.lookup import FeatureValues, LookupResult

    values = FeatureValues(DType.INT64, list(range(entities)), ["present"] * entities, [0] * entities)
    return LookupResult(1, {"card_id": list(range(entities))}, {"card__n": values}, {"card": "v1"}, 1_700_000_000)


def test_the_counters_say_what_was_offered_sampled_out_dropped_written_and_failed() -> None:
    from features.served_log import rows_from_lines
    from serving_api.served_log import ServedLog

    batches: list[Any] = []
    log = ServedLog(batches.append, sample_rate=1.0, services={"off": 0.0}, flush_seconds=3600, queue_size=5)
    result = lookup_result(2)
    for i in range(30):
        log.offer(f"r{i}", None, result)
    for i in range(4):
        log.offer(f"s{i}", "off", result)
    assert (log.offered, log.sampled_out, log.dropped, log.queued) == (34, 4, 25, 5)
    assert log.flush() == 5 and log.written == 5 and log.queued == 0
    assert len(batches[0]) == 5  # a line per lookup
    expanded = rows_from_lines(b"".join(batches[0]))  # what landing makes of it: a row per entity and feature
    assert expanded.column("request_id").to_pylist() == [f"r{i}" for i in range(5) for _ in range(2)]
    assert expanded.column("value").to_pylist() == ["0", "1"] * 5

    def broken(rows: Any) -> None:
        raise OSError("disk full")

    async def serve_while_failing() -> ServedLog:
        failing = ServedLog(broken, sample_rate=1.0, flush_seconds=0.05)
        await failing.start()
        for i in range(3):
            failing.offer(f"r{i}", None, result)  # never raises into the caller
        await asyncio.sleep(0.3)  # flushes failed meanwhile
        assert (failing.failed, failing.written, failing.queued) == (3, 0, 0)
        failing.offer("late", None, result)
        await failing.stop()  # the last flush fails too, and says so without raising
        return failing

    failing = asyncio.run(serve_while_failing())
    assert (failing.failed, failing.written, failing.queued) == (4, 0, 0)
