"""The README is a contract: every code block in it runs as written.

Each fenced block is claimed by one check below, and a block no check claims fails the suite, so a snippet
added to the README without a test cannot land:

- ``# definitions/<file>.py`` blocks are written out as a repository of their own, then planned, applied and
  evaluated (:func:`test_the_definition_files_plan_apply_and_compute`);
- the Python blocks of the ``## Python`` and ``## Pushing fresh values`` sections and every ``curl`` block run,
  in the README's order, on the example repository after the demo (:func:`check_python_and_http_blocks`, called
  by ``tests/integration/test_demo.py``, which has it ready); a ``print(...)  # text`` line must print ``text``;
- the two commands are the scripts CI runs, and the benchmark commands (``bench/run.sh``, ``bench.soak``) parse
  with their own parsers;
- the blocks of ``### Exposing the service``: ``skewless token create`` runs and its entry lets its token in,
  the ``serving:`` YAML loads and scopes its tokens as the prose says (:func:`test_the_exposing_blocks_run`);
- the ``offline:`` YAML of ``### Running on a Spark cluster`` loads and gives the session the settings the prose
  says (:func:`test_the_spark_cluster_block_configures_the_session`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFINITION_FILE = re.compile(r"\A# (definitions/\w+\.py)\n")
README_PORT = "localhost:6566"
PYTHON_SECTIONS = ("Python", "Pushing fresh values")  # Python blocks run on the demo's repository
BENCHMARK_COMMANDS = ("bash bench/run.sh", ".venv/bin/python -m bench.soak")  # each parsed by its own parser
EXPOSING = "Exposing the service"
SPARK_CLUSTER = "Running on a Spark cluster"
PRINTED = re.compile(r"^print\(.*\)  # (.+)$", re.MULTILINE)  # a print and, in its comment, what it prints


@dataclass(frozen=True, slots=True)
class Block:
    heading: str  # the nearest heading above the block
    lang: str
    text: str
    line: int  # where the block starts in README.md

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    heading, fence, lang, body, start = "", None, "", [], 0
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), start=1):
        if fence is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif fence is None and line.startswith("```"):
            fence, lang, body, start = line, line[3:].strip(), [], number
        elif fence is not None and line.startswith("```"):
            blocks.append(Block(heading, lang, "\n".join(body) + "\n", start))
            fence = None
        elif fence is not None:
            body.append(line)
    assert fence is None, f"README.md: the block at line {start} is not closed"
    return blocks


def check_of(block: Block) -> str | None:
    """Which check runs ``block`` (None: none does)."""
    if block.lang == "python" and DEFINITION_FILE.match(block.text):
        return "definition file"
    if block.lang == "python" and block.heading in PYTHON_SECTIONS:
        return "python"
    if block.lang == "bash" and any(line.startswith("curl ") and README_PORT in line for line in _commands(block)):
        return "http"
    if block.lang == "bash" and _commands(block) == ["bash scripts/demo.sh", "bash scripts/test.sh"]:
        return "two commands"
    if block.lang == "bash" and all(line.startswith(BENCHMARK_COMMANDS) for line in _commands(block)):
        return "benchmark"
    if block.heading == EXPOSING and block.lang in ("bash", "yaml"):
        return "exposing"
    if block.heading == SPARK_CLUSTER and block.lang == "yaml":
        return "spark cluster"
    return None


def _commands(block: Block) -> list[str]:
    """The commands of a shell block: comments cut, continuation lines kept with their command."""
    commands: list[str] = []
    for line in block.text.splitlines():
        text = line.split("  #")[0].rstrip()
        if not text or text.startswith("#"):
            continue
        if commands and not line.startswith(("bash ", "curl ", "skewless ", "now=", ".venv/bin/python ")):
            commands[-1] += "\n" + text
        else:
            commands.append(text)
    return commands


def test_every_block_is_run_by_a_check() -> None:
    blocks = readme_blocks()
    unclaimed = [f"line {b.line} ({b.lang}, under '{b.heading}')" for b in blocks if check_of(b) is None]
    assert not unclaimed, "README blocks no test runs (add them to a check in this file): " + "; ".join(unclaimed)
    kinds = {check_of(b) for b in blocks}
    assert kinds == {"definition file", "python", "http", "two commands", "benchmark", "exposing", "spark cluster"}, (
        kinds
    )


def test_the_two_commands_are_what_ci_runs() -> None:
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text().splitlines()
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert (ROOT / script).is_file()
    # scripts/demo.sh runs the command tests/integration/test_demo.py runs.
    assert "skewless demo" in (ROOT / "scripts" / "demo.sh").read_text()


def test_the_benchmark_commands_parse() -> None:
    from bench import run, soak

    commands = [c for b in readme_blocks() if check_of(b) == "benchmark" for c in _commands(b)]
    assert {c.split()[1] if c.startswith("bash ") else c.split()[2] for c in commands} == {"bench/run.sh", "bench.soak"}
    for command in commands:
        # argparse exits (a failure here) on an unknown or malformed option
        if command.startswith("bash bench/run.sh"):
            run.servers_of(run.parse_args(command.split()[2:]))
        else:
            soak.parse_args(command.split()[3:])


def test_the_spark_cluster_block_configures_the_session(tmp_path: Path) -> None:
    """The block loads as a ``skewless.yaml``; the session gets its master and settings, Delta and the JDBC drivers
    as packages, and none of the local-mode tuning (no Spark starts: :func:`session_conf` is what it would get)."""
    import yaml

    from features.config import RepoConfig
    from offline.spark.session import ONE_SHOT_JIT, jvm_packages, local_conf, session_conf

    [block] = [b for b in readme_blocks() if check_of(b) == "spark cluster"]
    config = RepoConfig.from_dict(tmp_path, yaml.safe_load(block.text))
    assert config.arrow_materialize_max_rows == 0
    assert config.resolved_offline_path() == Path("/shared/skewless/offline")
    conf = session_conf(config.resolved_spark_conf())
    assert conf["spark.master"] == "spark://spark-master:7077"
    assert conf["spark.sql.shuffle.partitions"] == "64" and conf["spark.driver.memory"] == "1g"
    assert conf["spark.pyspark.python"] == "/opt/skewless/bin/python"
    assert conf["spark.jars.packages"].split(",") == jvm_packages()
    assert "spark.python.daemon.module" not in conf and ONE_SHOT_JIT not in conf["spark.driver.extraJavaOptions"]
    assert not set(local_conf()) - {"spark.sql.shuffle.partitions"} & set(conf)


def test_the_command_table_lists_every_command() -> None:
    """The README's command table and the parser agree: no command missing from either."""
    from features.cli import build_parser

    listed = set(re.findall(r"^\| `skewless ([a-z-]+)", (ROOT / "README.md").read_text(), re.MULTILINE))
    actions = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands = set(actions[0].choices)  # type: ignore[attr-defined]
    assert listed == commands, f"only in the README: {listed - commands}; only in the parser: {commands - listed}"


def test_the_exposing_blocks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The token command prints a token whose entry, under ``serving.tokens``, lets it in; the YAML block loads
    as written (its hashes from the environment) and grants what the prose says."""
    import shlex

    import yaml

    from features.cli import main
    from features.config import RepoConfig
    from serving_api.auth import Authenticator, hash_token

    blocks = [b for b in readme_blocks() if check_of(b) == "exposing"]
    assert [b.lang for b in blocks] == ["bash", "yaml"], [b.line for b in blocks]
    (command,) = _commands(blocks[0])
    argv = shlex.split(command)
    assert argv[0] == "skewless"
    assert main(argv[1:]) == 0
    printed = capsys.readouterr().out
    token = re.search(r"^(skw_\S+)$", printed, re.MULTILINE)
    entry = re.search(r"^ +(\w+: \{hash: .*\})$", printed, re.MULTILINE)
    assert token and entry, printed
    created = yaml.safe_load(entry.group(1))
    authenticator = Authenticator(created)
    grant = authenticator.grant(f"Bearer {token.group(1)}".encode())
    assert grant is not None and grant.may_look_up("fraud_model") and not grant.may_look_up("other")

    tokens = {name: f"skw_{name}" for name in ("FRAUD_MODEL", "INGEST", "ANALYST")}
    for name, value in tokens.items():
        monkeypatch.setenv(f"{name}_TOKEN_HASH", hash_token(value))
    config = RepoConfig.from_dict(tmp_path, yaml.safe_load(blocks[1].text))
    assert (config.max_body_bytes, config.max_entities, config.max_request_fields) == (1048576, 10000, 100)
    authenticator = Authenticator(config.resolved_serving_tokens())

    def grant_of(name: str) -> Any:
        found = authenticator.grant(f"Bearer {tokens[name]}".encode())
        assert found is not None, name
        return found

    model, ingest, analyst = grant_of("FRAUD_MODEL"), grant_of("INGEST"), grant_of("ANALYST")
    assert model.may_look_up("fraud_model") and not model.may_look_up(None) and not model.may_push("card_profile")
    assert ingest.may_push("card_profile") and not ingest.may_look_up("fraud_model")
    assert analyst.may_look_up(None) and analyst.may_browse and not analyst.may_push("card_profile")
    assert authenticator.grant(b"Bearer skw_unknown") is None


def test_the_definition_files_plan_apply_and_compute(tmp_path: Path) -> None:
    """The tour's files, written as printed next to the example's entities and skewless.yaml, form a repository
    that plans and applies; its on-demand features compute what their definitions say (plain-Python oracle)."""
    repo = tmp_path / "repo"
    (repo / "definitions").mkdir(parents=True)
    shutil.copy(ROOT / "definitions" / "entities.py", repo / "definitions" / "entities.py")
    shutil.copy(ROOT / "skewless.yaml", repo / "skewless.yaml")
    (repo / "definitions" / "__init__.py").write_text("")
    written = []
    for block in readme_blocks():
        match = DEFINITION_FILE.match(block.text)
        if block.lang == "python" and match:
            (repo / match.group(1)).write_text(block.text)
            written.append(match.group(1))
    assert len(written) == len(set(written)) >= 5, written
    script = """
import json, sys
import pyarrow as pa
from definitions._example_data import create_example_data
from features import FeatureStore
from features.functions import FunctionLoader
from features.on_demand import compute

repo = sys.argv[1]
create_example_data(f"sqlite:///{repo}/.skewless/data/payments.db", cards=20, merchants=5, payments=200)
store = FeatureStore(repo)
applied = store.apply()
plan = applied.version.plan
functions = FunctionLoader(f"{repo}/definitions").functions_for(plan)
inputs = {
    "payment.amount": pa.array([25.0, 12.5, None, -3.0]),
    "payment.fx_rate": pa.array([1.0, 0.92, 1.0, 1.0]),
    "card_last_payment.amount_eur": pa.array([50.0, 0.0, 10.0, None]),
    "card_last_payment.amount": pa.array([50.0, 0.0, 10.0, None]),
}
out = {"views": sorted(v.name for v in plan.views), "services": sorted(s.name for s in plan.services)}
for view in plan.on_demand_views:
    names = [f.name for f in view.features]
    columns = compute(view, names, inputs, 4, functions.get(view.name))
    out[view.name] = {name: columns[name].to_pylist() for name in names}
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKEWLESS_", "PAYMENTS_"))}
    env["PYTHONPATH"] = f"{repo}{os.pathsep}{ROOT}"
    done = subprocess.run(
        [sys.executable, "-c", script, str(repo)], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["views"] == ["card_last_payment", "card_spend", "merchant_risk"] and got["services"] == ["fraud_model"]
    # Oracle: the expressions and the function of the README, computed by hand.
    amounts, rates, last = [25.0, 12.5, None, -3.0], [1.0, 0.92, 1.0, 1.0], [50.0, 0.0, 10.0, None]
    # if_else(null, a, b) gives b (SQL's CASE WHEN); arithmetic over a null is null.
    expected_ratio = [
        (None if a is None else a * r / e) if e is not None and e > 0 else 0.0
        for a, r, e in zip(amounts, rates, last, strict=True)
    ]
    assert got["payment_checks"]["vs_last_payment"] == pytest.approx(expected_ratio)
    usable = [a if a is not None and a > 0 else None for a in amounts]
    assert got["payment_shape"]["is_round"] == [None if a is None else a % 1 == 0 for a in usable]
    assert got["payment_shape"]["log10_amount"] == pytest.approx([None if a is None else math.log10(a) for a in usable])


def check_python_and_http_blocks(repo: Path, env: dict[str, str]) -> None:
    """Run the Python blocks of :data:`PYTHON_SECTIONS` and every ``curl`` block on ``repo``, the example
    repository after the demo (its data and tables exist). The curl blocks run against ``skewless serve`` on a
    free port, the one change made to them: the README's port, 6566, may be taken on a test machine."""
    blocks = readme_blocks()
    python = [b for b in blocks if check_of(b) == "python"]
    assert len(python) == len(PYTHON_SECTIONS), [b.line for b in python]
    outputs = []
    for block in python:
        done = subprocess.run(
            [sys.executable, "-c", block.text], cwd=repo, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"README line {block.line}: " + done.stderr[-3000:]
        printed = [line.strip() for line in done.stdout.splitlines()]
        for expected in PRINTED.findall(block.text):  # what the comments say is printed, in order
            assert expected.strip() in printed, f"README line {block.line}: {expected!r} not in {printed}"
            printed = printed[printed.index(expected.strip()) + 1 :]
        outputs.append(done.stdout)
    # The ## Python block prints the shapes of its training set and online answer: two rows each.
    assert re.search(r"^\(2, \d+\) \(2, \d+\)$", outputs[0], re.MULTILINE), outputs[0][-2000:]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "features.cli", "serve", "--repo", str(repo), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "skewless serve did not start"
                time.sleep(0.3)
        for block in (b for b in blocks if check_of(b) == "http"):
            assert README_PORT in block.text, f"README line {block.line}: the curl block uses another port"
            command = block.text.replace(README_PORT, f"127.0.0.1:{port}")
            answer = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
            assert answer.returncode == 0, f"README line {block.line}: {answer.stderr}"
            body = json.loads(answer.stdout)
            assert "error" not in body, f"README line {block.line}: {answer.stdout[:2000]}"
            if "/v1/push" in block.text:
                assert body["rows"] == 1 and body["served"] == 1, answer.stdout[:2000]
                continue
            if "/get-online-features" in block.text:  # Feast's answer: a column per key and feature
                assert body.get("metadata", {}).get("feature_names"), (
                    f"README line {block.line}: {answer.stdout[:2000]}"
                )
                assert all(len(r["values"]) == len(r["statuses"]) == 2 for r in body["results"]), answer.stdout[:2000]
                continue
            assert body.get("features"), f"README line {block.line}: {answer.stdout[:2000]}"
            for column, values in body["features"].items():
                assert len(values["values"]) == 2 and len(values["statuses"]) == 2, column
    finally:
        server.terminate()
        server.wait(timeout=30)
