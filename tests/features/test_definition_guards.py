"""Regression tests of issue 24's definition findings: nothing a definition file does ends discovery quietly,
expressions nest no deeper than every engine can evaluate, ttls and windows are checked at plan time."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any

import pyarrow as pa
import pytest

from features import DefinitionError, Entity, Feature, FeatureView, Int64, SqlSource
from features.cli import main
from features.config import RepoConfig
from features.definitions import Aggregation
from features.dtypes import DType
from features.evaluator import evaluate
from features.expressions import MAX_EXPRESSION_DEPTH, Call, Column, ExpressionError, parse_expression
from features.registry import Registry
from features.store import FeatureStore
from tests.features.conftest import ENTITIES, VIEWS

Repo = Callable[..., RepoConfig]


def _cli(config: RepoConfig, command: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([command, "--repo", str(config.root)])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())  # rich wraps long lines


def _nothing_applied(config: RepoConfig) -> bool:
    registry = Registry(config.resolved_registry_url())
    try:
        return registry.latest() is None
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("import sys\nsys.exit(0)", "this file called sys.exit(0) (SystemExit)"),
        ("raise SystemExit", "this file called sys.exit(None) (SystemExit)"),
        ("def f():\n    return f()\nf()", "importing this file failed: RecursionError"),
        ("raise GeneratorExit('stop')", "importing this file failed: GeneratorExit: stop"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_definition_file_ending_discovery_is_an_error_with_file_and_line(
    make_repo: Repo, capsys: pytest.CaptureFixture[str], statement: str, message: str, command: str
) -> None:
    views = VIEWS + "\n" + statement + "\n"
    # where it ended: the last line of the statement, or the recursive call (the deepest line in the file)
    last = statement.count("\n") if "return f()" not in statement else 1
    line = VIEWS.count("\n") + 2 + last
    config = make_repo({"entities.py": ENTITIES, "views.py": views})
    code, out = _cli(config, command, capsys)
    assert code == 1, out  # a CI job sees the failure (sys.exit(0) made both commands exit 0)
    assert f"views.py:{line}: " in out, out
    assert message in out, out
    assert _nothing_applied(config)


def test_ctrl_c_in_a_definition_file_stays_an_interruption(make_repo: Repo) -> None:
    store = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": VIEWS + "\nraise KeyboardInterrupt\n"}))
    with pytest.raises(KeyboardInterrupt):
        store.compile()


def _sum_of(n: int) -> str:
    return " + ".join(["amount"] * n)


@pytest.mark.parametrize(
    ("expression", "levels"),
    [
        (_sum_of(MAX_EXPRESSION_DEPTH + 1), f"{MAX_EXPRESSION_DEPTH + 1} levels"),  # refused before recursing
        (" or ".join(["amount > 1"] * 3000), "3001 levels"),  # and/or chains nest only in the plan
        ("abs(" * 150 + "amount" + ")" * 150, "151 levels"),
        ("abs(" * 400 + "amount" + ")" * 400, "more than Python can parse"),  # 200 parentheses at most
        (_sum_of(3000), "more than Python can parse"),  # the finding: a RecursionError traceback
        ("-" * 3000 + "amount", "more than Python can parse"),
    ],
)
def test_a_deeply_nested_expression_names_file_line_and_limit(
    make_repo: Repo, capsys: pytest.CaptureFixture[str], expression: str, levels: str
) -> None:
    dtype = "Bool" if " or " in expression else "Float64"
    views = VIEWS.replace('Feature("big", Bool, expr="amount > 100")', f'Feature("big", {dtype}, expr="{expression}")')
    config = make_repo({"entities.py": ENTITIES, "views.py": views})
    code, out = _cli(config, "plan", capsys)
    assert code == 1, out
    assert "views.py:15: feature 'big': expression too deeply nested: " in out, out
    assert levels in out and f"at most {MAX_EXPRESSION_DEPTH}" in out, out
    assert "Traceback" not in out


def test_the_deepest_expression_allowed_evaluates_like_python() -> None:
    # The limit is one engines can reach: a sum of MAX_EXPRESSION_DEPTH terms, evaluated by the serving
    # evaluator, equals the plain-Python sum.
    expr = parse_expression(
        " + ".join(f"c{i % 7}" for i in range(MAX_EXPRESSION_DEPTH)), {f"c{i}": DType.INT64 for i in range(7)}
    )
    values = {f"c{i}": [i, 10 * i, None] for i in range(7)}
    result = evaluate(expr, {k: pa.array(v, pa.int64()) for k, v in values.items()}, 3).to_pylist()
    expected = [sum(values[f"c{i % 7}"][row] for i in range(MAX_EXPRESSION_DEPTH)) for row in range(2)] + [None]
    assert result == expected


def test_the_evaluator_refuses_a_plan_expression_deeper_than_the_parser_allows() -> None:
    # A plan is JSON that could be written by hand: the evaluator never recurses past the parser's limit.
    column = Column(DType.INT64, "a")
    deep = reduce(lambda left, _: Call(DType.INT64, "add", (left, column)), range(5000), column)
    with pytest.raises(ExpressionError, match=f"5001 levels, at most {MAX_EXPRESSION_DEPTH}"):
        evaluate(deep, {"a": pa.array([1], pa.int64())}, 1)


CARD = Entity(join_keys={"id": Int64})
SOURCE = SqlSource(connection="c", table="t", timestamp="ts")


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        (timedelta(microseconds=500), "ttl must be a whole number of seconds, at least 1s"),
        (timedelta(seconds=1, milliseconds=500), "ttl must be a whole number of seconds"),
        (timedelta(days=999_999_999), "ttl 999999999d is beyond the timestamp range; a ttl goes from 1s to 719162d"),
    ],
)
def test_ttls_kept_in_whole_seconds_within_the_timestamp_range(ttl: timedelta, message: str) -> None:
    with pytest.raises(DefinitionError, match=r"test_definition_guards.py:\d+: " + message):
        FeatureView(entities=[CARD], source=SOURCE, features=[Feature("a", Int64)], ttl=ttl)


def test_the_limits_themselves_are_accepted() -> None:
    view = FeatureView(entities=[CARD], source=SOURCE, features=[Feature("a", Int64)], ttl=timedelta(seconds=1))
    assert view.ttl == timedelta(seconds=1)
    windowed = FeatureView(
        entities=[CARD], source=SOURCE, aggregations=[Aggregation("sum", "a", windows=["719162d"])],
        cadence="719162d", ttl=timedelta(days=719162),
    )  # fmt: skip
    assert windowed.cadence_seconds == 719162 * 86400


@pytest.mark.parametrize(
    ("aggregation", "cadence", "message"),
    [
        ('windows=["99999999999999999999d"]', '"1d"', "window: '99999999999999999999d' is beyond the timestamp range"),
        ('windows=["719163d"]', '"1d"', "window: '719163d' is beyond the timestamp range"),
        ("windows=[timedelta(days=999_999_999)]", '"1d"', "window: datetime.timedelta.*is beyond the timestamp range"),
        ('windows=["1d"]', '"99999999999999999999d"', "cadence: '99999999999999999999d' is beyond the timestamp range"),
    ],
)
def test_windows_and_cadences_beyond_the_timestamp_range_fail_at_plan(
    make_repo: Repo, capsys: pytest.CaptureFixture[str], aggregation: str, cadence: str, message: str
) -> None:
    views = (
        VIEWS.replace(
            """    features=[
        Feature("amount", Float64),
        Feature("amount_eur", Float64, expr="amount * fx_rate"),
        Feature("big", Bool, expr="amount > 100"),
    ],""",
            f"""    aggregations=[Aggregation("sum", "amount", {aggregation})],
    cadence={cadence},""",
        )
        .replace("ttl=timedelta(days=1)", "ttl=None")
        .replace("from features import", "from features import Aggregation,")
    )
    views = views.replace('svc = FeatureService(features=[card_txn["amount_eur"]])', "")
    config = make_repo({"entities.py": ENTITIES, "views.py": views})
    code, out = _cli(config, "plan", capsys)
    assert code == 1, out
    line = 8 if message.startswith("cadence") else 12  # the FeatureView's line, or its Aggregation's
    assert f"views.py:{line}: " in out, out
    assert re.search(message, out), out
    assert "from 1s to 719162d (the span from 0001-01-01 to the Unix epoch)" in out, out
    assert _nothing_applied(config)


LONGEST_WINDOW = """
from features import Aggregation, Entity, FeatureView, Int64, SqlSource
card = Entity(join_keys={"card_id": Int64})
txns = SqlSource(connection="main", table="txns", timestamp="ts")
card_txn = FeatureView(entities=[card], source=txns, cadence="1d", ttl=None, online=False,
    aggregations=[Aggregation("sum", "amount", windows=["719162d"])])
"""


@pytest.mark.spark
def test_the_longest_window_materializes_like_plain_python(make_repo: Repo, spark: Any) -> None:
    """The limit is one the engines can compute: a 719162-day window over events from 1975 to 2024."""
    from deltalake import DeltaTable

    from offline.tables import table_path

    config = make_repo({"views.py": LONGEST_WINDOW})
    events = [
        (1, datetime(1975, 1, 1, 6), 100.0),
        (1, datetime(2024, 3, 1, 1), 10.0),
        (2, datetime(2024, 3, 2, 7), 1.0),
    ]
    with sqlite3.connect(config.root / "data.db") as conn:
        conn.execute("DELETE FROM txns")
        conn.executemany(
            "INSERT INTO txns (card_id, ts, amount) VALUES (?, ?, ?)",
            [(c, t.strftime("%Y-%m-%d %H:%M:%S"), a) for c, t, a in events],
        )
    store = FeatureStore(config=config)
    view = store.apply().version.plan.view("card_txn")
    store.materialize(end=datetime(2024, 3, 4, tzinfo=UTC))
    table = DeltaTable(str(table_path(config, view))).to_pyarrow_table().to_pylist()
    assert table, "no values written"
    for row in table:
        tick = row["event_timestamp"].replace(tzinfo=None)
        expected = sum(a for c, t, a in events if c == row["card_id"] and t <= tick)  # the oracle: all so far
        assert row["amount_sum_719162d"] == expected, row
