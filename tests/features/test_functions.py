"""Plain-Python on-demand functions at plan time: what the plan records, when fingerprints change, errors that
name the file, the line and the choices, the loader's refusal of changed code, and the plan diff."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from features import DefinitionError, FunctionLoadError
from features.config import RepoConfig
from features.diff import diff_plans
from features.functions import FunctionLoader
from features.on_demand import OnDemandFunctionError, compute
from features.plan import Plan
from features.store import FeatureStore
from tests.features.conftest import ENTITIES, VIEWS

Repo = Callable[..., RepoConfig]

FUNCTIONS = """
import math

import pandas as pd

from features import Float64, Int64, OnDemandFeatureView, RequestSource, String, on_demand_function
from repo_defs.views import card_txn

payment = RequestSource(schema={"amount": Float64, "note": String})


@on_demand_function(
    sources=[payment, card_txn],
    inputs=["payment.amount", "card_txn.amount_eur"],
    outputs={"log_amount": Float64, "digits": Int64},
    mode="pandas",
)
def shape(frame):
    amount = frame["payment.amount"]
    return pd.DataFrame(
        {
            "log_amount": amount.map(lambda v: math.log10(v) if v > 0 else None),
            "digits": amount.map(lambda v: len(str(int(v))) if v == v else None).astype("Int64"),
        }
    )
""".replace("Int64, OnDemand", "Int64, OnDemand").replace(
    "RequestSource, on_demand", "RequestSource, String, on_demand"
)


def compile_with(make_repo: Repo, text: str) -> Plan:
    config = make_repo({"entities.py": ENTITIES, "views.py": VIEWS, "functions.py": text})
    return FeatureStore(config=config).compile()


def line_of(text: str, fragment: str) -> int:
    """The line of ``fragment`` in the file as written (make_repo dedents; the leading newline is line 1)."""
    return next(i for i, line in enumerate(text.splitlines(), start=1) if fragment in line)


def test_the_plan_records_the_function(make_repo: Repo) -> None:
    plan = compile_with(make_repo, FUNCTIONS)
    view = plan.on_demand_view("shape")
    assert view.function is not None
    assert (view.function.module, view.function.qualname, view.function.mode) == (
        "repo_defs.functions",
        "shape",
        "pandas",
    )
    assert [(c.name, c.dtype.value) for c in view.function.inputs] == [
        ("payment.amount", "float64"),
        ("card_txn.amount_eur", "float64"),
    ]
    assert [str(r) for r in view.inputs] == ["card_txn:amount_eur"]
    # Only the request fields the function reads are asked of a request.
    assert [(s, f.name) for s, f in view.request_fields()] == [("payment", "amount")]
    assert [(f.name, f.dtype.value, f.expr) for f in view.features] == [
        ("log_amount", "float64", None),
        ("digits", "int64", None),
    ]
    assert view.location == f"repo_defs/functions.py:{line_of(FUNCTIONS, '@on_demand_function')}"
    assert Plan.from_json(plan.to_json()) == plan
    assert "function" in plan.to_dict()["on_demand_views"][0]


def test_default_inputs_are_every_field_of_every_source(make_repo: Repo) -> None:
    text = FUNCTIONS.replace('    inputs=["payment.amount", "card_txn.amount_eur"],\n', "")
    view = compile_with(make_repo, text).on_demand_view("shape")
    assert view.function is not None
    assert list(view.function.input_names) == [
        "payment.amount",
        "payment.note",
        "card_txn.amount",
        "card_txn.amount_eur",
        "card_txn.big",
    ]


def test_editing_the_function_changes_its_fingerprints_moving_it_does_not(make_repo: Repo) -> None:
    first = compile_with(make_repo, FUNCTIONS)
    moved = compile_with(make_repo, FUNCTIONS.replace("\n\n@on_demand", "\n\n\n\n@on_demand"))
    assert moved.fingerprint == first.fingerprint
    edited = compile_with(make_repo, FUNCTIONS.replace("math.log10(v)", "math.log2(v)"))
    assert edited.fingerprint != first.fingerprint
    old, new = first.on_demand_view("shape"), edited.on_demand_view("shape")
    assert old.function is not None and new.function is not None
    assert new.function.source_fingerprint != old.function.source_fingerprint
    assert all(a.fingerprint != b.fingerprint for a, b in zip(old.features, new.features, strict=True))
    # A changed stored input changes every output's fingerprint too.
    config = make_repo(
        {
            "entities.py": ENTITIES,
            "views.py": VIEWS.replace("amount * fx_rate", "amount * 2"),
            "functions.py": FUNCTIONS,
        }
    )
    upstream = FeatureStore(config=config).compile().on_demand_view("shape")
    assert upstream.function == old.function
    assert all(a.fingerprint != b.fingerprint for a, b in zip(old.features, upstream.features, strict=True))


def test_the_plan_diff_lists_function_changes(make_repo: Repo) -> None:
    first = compile_with(make_repo, FUNCTIONS)
    edited = compile_with(
        make_repo, FUNCTIONS.replace("math.log10(v)", "math.log2(v)").replace('mode="pandas"', 'mode="arrow"')
    )
    changes = [(c.kind, c.name, c.change, c.detail) for c in diff_plans(first, edited).changes]
    details = [d for kind, name, change, d in changes if kind == "on-demand view" and name == "shape"]
    assert any("repo_defs.functions:shape source changed" in d for d in details), changes
    assert any("mode pandas -> arrow" in d for d in details), changes
    assert ("feature", "shape:digits", "changed") in [c[:3] for c in changes]
    assert not any(c.breaking for c in diff_plans(first, edited).changes)
    added = diff_plans(Plan((), (), ()), first).changes
    assert any(
        c.kind == "on-demand view" and c.change == "added" and "function repo_defs.functions:shape (pandas)" in c.detail
        for c in added
    )


LAMBDA = """
shape2 = OnDemandFeatureView(sources=[payment], function=lambda frame: frame, outputs={"x": Float64})
"""
NESTED = """
def make():
    def inner(frame):
        return frame
    return inner


shape2 = OnDemandFeatureView(sources=[payment], function=make(), outputs={"x": Float64})
"""


D = "@on_demand_function"
UNKNOWN_INPUT = (
    "unknown input(s) ['card_txn.amount_usd'] of function 'shape' of on-demand view 'shape'; "
    "known: payment.amount, payment.note, card_txn.amount, card_txn.amount_eur"
)


@pytest.mark.parametrize(
    ("old", "new", "at", "message"),
    [
        (
            'mode="pandas"',
            'mode="polars"',
            D,
            "unknown mode 'polars' for function 'shape'; valid choices: pandas, arrow",
        ),
        (
            '"digits": Int64}',
            '"digits": int}',
            D,
            "feature 'digits': unknown dtype <class 'int'>; valid choices: int64",
        ),
        ('"card_txn.amount_eur"]', '"card_txn.amount_usd"]', D, UNKNOWN_INPUT),
        ('"card_txn.amount_eur"]', '"amount_eur"]', D, "inputs must be a non-empty list of '<source>.<field>' names"),
        ("def shape(frame):", "def shape(frame):\n    'doc'", None, None),
    ],
)
def test_bad_functions_name_file_line_and_choices(
    make_repo: Repo, old: str, new: str, at: str | None, message: str | None
) -> None:
    text = FUNCTIONS.replace(old, new)
    assert text != FUNCTIONS
    if message is None:  # the control: a harmless edit compiles
        compile_with(make_repo, text)
        return
    with pytest.raises(DefinitionError) as info:
        compile_with(make_repo, text)
    assert message in str(info.value)
    assert at is not None and f"functions.py:{line_of(text, at)}" in str(info.value)


@pytest.mark.parametrize(("extra", "at"), [(LAMBDA, "shape2 ="), (NESTED, "shape2 =")])
def test_functions_must_be_importable_at_module_level(make_repo: Repo, extra: str, at: str) -> None:
    text = FUNCTIONS + extra
    with pytest.raises(DefinitionError) as info:
        compile_with(make_repo, text)
    assert "must be defined with 'def' at the top level of a definitions module" in str(info.value)
    assert "(not a lambda, a nested function or a method)" in str(info.value)
    assert f"functions.py:{line_of(text, at)}" in str(info.value)


def test_features_and_function_are_exclusive() -> None:
    from features import Feature, Float64, OnDemandFeatureView, RequestSource

    payment = RequestSource(schema={"amount": Float64})
    with pytest.raises(DefinitionError, match=r"either features=.* or function=.*not both"):
        OnDemandFeatureView(
            sources=[payment],
            features=[Feature("x", Float64, expr="payment.amount")],
            function=math.log10,
            outputs={"y": Float64},
        )
    with pytest.raises(DefinitionError, match=r"outputs=, inputs= and mode= go with function="):
        OnDemandFeatureView(sources=[payment], features=[Feature("x", Float64, expr="payment.amount")], mode="arrow")
    with pytest.raises(DefinitionError, match=r"needs outputs="):
        OnDemandFeatureView(sources=[payment], function=math.log10)


def test_the_loader_runs_the_planned_function_and_refuses_changed_code(make_repo: Repo, tmp_path: Path) -> None:
    plan = compile_with(make_repo, FUNCTIONS)
    view = plan.on_demand_view("shape")
    loader = FunctionLoader(tmp_path / "repo_defs")
    function = loader.functions_for(plan)["shape"]
    amounts = [1234.5, 0.25, None, -3.0]
    out = compute(
        view,
        ["log_amount", "digits"],
        {"payment.amount": pa.array(amounts), "card_txn.amount_eur": pa.array([1.0, 2.0, 3.0, 4.0])},
        4,
        function,
    )
    assert out["log_amount"].type == pa.float64() and out["digits"].type == pa.int64()
    expected_log = [math.log10(1234.5), math.log10(0.25), None, None]
    for got, want in zip(out["log_amount"].to_pylist(), expected_log, strict=True):
        assert (got is None and want is None) or math.isclose(got, want, rel_tol=1e-15)
    assert out["digits"].to_pylist() == [4, 1, None, 2]  # int(-3.0) is "-3": two characters

    # The same code, re-imported: accepted. Edited code: refused, naming the view and the function.
    assert FunctionLoader(tmp_path / "repo_defs").functions_for(plan)["shape"].__qualname__ == "shape"
    (tmp_path / "repo_defs" / "functions.py").write_text(FUNCTIONS.replace("math.log10(v)", "math.log2(v)"))
    with pytest.raises(FunctionLoadError) as info:
        FunctionLoader(tmp_path / "repo_defs").functions_for(plan)
    message = str(info.value)
    assert "on-demand function 'repo_defs.functions:shape' of view 'shape' changed since the plan" in message
    assert "skewless apply" in message
    # A function that is gone is refused too.
    (tmp_path / "repo_defs" / "functions.py").write_text(FUNCTIONS.replace("def shape(", "def renamed("))
    with pytest.raises((FunctionLoadError, DefinitionError)):
        FunctionLoader(tmp_path / "repo_defs").functions_for(plan)


REQUEST_ONLY = """
import pandas as pd

from features import Float64, RequestSource, on_demand_function

payment = RequestSource(schema={"amount": Float64})


@on_demand_function(sources=[payment], outputs={"half": Float64})
def halve(frame):
    return pd.DataFrame({"half": frame["payment.amount"] / 2})


@on_demand_function(sources=[payment], outputs={"x": Float64})
def boom(frame):
    raise KeyError("no such merchant")
"""


@pytest.mark.redis
def test_the_facade_runs_functions_and_raises_typed_errors(make_repo: Repo, tmp_path: Path, redis_url: str) -> None:
    make_repo({"entities.py": ENTITIES, "views.py": VIEWS, "functions.py": REQUEST_ONLY})
    yaml = tmp_path / "skewless.yaml"
    yaml.write_text(yaml.read_text() + f"online:\n  url: {redis_url}\n")
    with FeatureStore(tmp_path) as store:
        store.apply()
        answer = store.get_online_features({}, features=["halve:half"], request_data={"amount": [3.0, None]})
        assert answer.to_dict()["features"]["halve__half"]["values"] == [1.5, None]
        with pytest.raises(OnDemandFunctionError) as info:
            store.get_online_features({}, features=["boom:x"], request_data={"amount": [1.0]})
        assert (info.value.view, info.value.function, info.value.exception) == (
            "boom",
            "repo_defs.functions:boom",
            "KeyError",
        )
    # Code edited after 'apply': a new process refuses to run it.
    (tmp_path / "repo_defs" / "functions.py").write_text(REQUEST_ONLY.replace("/ 2", "/ 3"))
    with FeatureStore(tmp_path) as store, pytest.raises(FunctionLoadError, match="changed since the plan"):
        store.get_online_features({}, features=["halve:half"], request_data={"amount": [3.0]})
