"""Plain-Python on-demand functions over HTTP: values against a plain-Python oracle, 422 for bad request data,
500 with the view and function named (never a traceback) when the function fails, and the loader's refusals."""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from features.dtypes import DType
from features.functions import FunctionLoadError, source_fingerprint
from features.lookup import lookup
from features.on_demand import OnDemandFunctionError
from features.plan import ColumnSpec, FeaturePlan, FeatureRefPlan, FunctionPlan, OnDemandViewPlan, RequestSourcePlan
from features.registry import PlanVersion
from online.redis_store import RedisOnlineStore
from serving_api.app import create_app
from serving_api.client import SkewlessClient
from tests.serving import functions
from tests.serving.conftest import PLAN, plan_version

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.redis

MODULE = functions.__name__


def function_view(
    name: str,
    function: Callable[..., Any],
    outputs: dict[str, DType],
    inputs: dict[str, DType],
    *,
    mode: str = "pandas",
    fingerprint: str | None = None,
) -> OnDemandViewPlan:
    specs = tuple(ColumnSpec(n, t) for n, t in inputs.items())
    plan = FunctionPlan(MODULE, function.__qualname__, mode, fingerprint or source_fingerprint(function), specs)
    request = tuple(ColumnSpec(n.split(".")[1], t) for n, t in inputs.items() if n.startswith("req."))
    refs = tuple(FeatureRefPlan(*n.split(".")) for n in inputs if not n.startswith("req."))
    return OnDemandViewPlan(
        name,
        (RequestSourcePlan("req", request, "test"),) if request else (),
        refs,
        tuple(FeaturePlan(o, t, None, f"{name}-{o}", "test") for o, t in outputs.items()),
        "test.py:1",
        plan,
    )


READS = {"req.amount": DType.FLOAT64, "card.limit": DType.FLOAT64}
SHAPE = function_view(
    "shape",
    functions.amount_shape,
    {"ratio": DType.FLOAT64, "log_amount": DType.FLOAT64, "cents": DType.INT64},
    {"req.amount": DType.FLOAT64, "card.limit": DType.FLOAT64},
)
TIER = function_view(
    "tier", functions.shout_tier, {"tier_upper": DType.STRING}, {"card.tier": DType.STRING}, mode="arrow"
)
BOOM = function_view("boom", functions.explode, {"x": DType.FLOAT64}, READS)
WRONG_TYPE = function_view("wrong_type", functions.wrong_type, {"n": DType.INT64}, READS)
WRONG_COLUMNS = function_view("wrong_cols", functions.wrong_columns, {"n": DType.INT64}, READS)
FUNCTION_PLAN = dataclasses.replace(PLAN, on_demand_views=(BOOM, SHAPE, TIER, WRONG_COLUMNS, WRONG_TYPE))


@pytest.fixture
def client(online: RedisOnlineStore) -> Iterator[TestClient]:
    app = create_app(plan_provider=lambda: plan_version(FUNCTION_PLAN), store=online)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, body: Any) -> httpx.Response:
    return client.post("/v1/features", json=body)


def shape_oracle(amount: float | None, limit: float | None) -> dict[str, Any]:
    """tests/serving/functions.amount_shape by hand, with pandas' missing values (NaN) read back as null."""
    ratio = None if amount is None or limit is None else amount / limit
    if ratio is not None and math.isnan(ratio):
        ratio = None
    log_amount = math.log10(amount) if amount is not None and amount > 0 else None
    cents = None if amount is None else round(amount * 100)
    return {"ratio": ratio, "log_amount": log_amount, "cents": cents}


def test_pandas_function_values_types_and_statuses(client: TestClient) -> None:
    # Published: card 1 limit 1000 (fresh), card 2 limit inf (expired), card 3 limit NaN (fresh); 9 unknown.
    cards = [1, 2, 3, 9, 1]
    amounts = [250.0, 50.0, 12.5, None, 0.0]
    limits = [1000.0, None, None, None, 1000.0]  # what the function sees: expired and missing values are null
    answer = post(
        client,
        {"features": ["shape:*"], "entities": {"card_id": cards}, "request_data": {"amount": amounts}},
    )
    assert answer.status_code == 200, answer.text
    features = answer.json()["features"]
    assert list(features) == ["shape__ratio", "shape__log_amount", "shape__cents"]
    for i, (amount, limit) in enumerate(zip(amounts, limits, strict=True)):
        for name, expected in shape_oracle(amount, limit).items():
            got = features[f"shape__{name}"]["values"][i]
            if isinstance(expected, float):
                assert isinstance(got, float) and math.isclose(got, expected, rel_tol=1e-15), (i, name, got)
            else:
                assert got == expected and type(got) is type(expected), (i, name, got, expected)
    # A function's value is as good as the stored inputs it reads: all of them, for every output.
    assert features["shape__cents"]["statuses"] == ["present", "expired", "present", "missing", "present"]


def test_arrow_function(client: TestClient) -> None:
    answer = post(client, {"features": ["tier:tier_upper"], "entities": {"card_id": [1, 2, 3, 9]}})
    assert answer.status_code == 200, answer.text
    column = answer.json()["features"]["tier__tier_upper"]
    # card 2 is expired (its value is null), card 3's tier is null, card 9 has no row.
    assert column["values"] == ["GOLD", None, None, None]
    assert column["statuses"] == ["present", "expired", "present", "missing"]


@pytest.mark.parametrize(
    ("request_data", "message"),
    [
        (None, "request_data lacks the field 'amount' (float64)"),
        ({"amount": ["abc"]}, "request_data field 'amount' is float64: value 0 ('abc', str) is not a number"),
        ({"amount": [1.0, 2.0]}, "request_data field 'amount' has 2 values for 1 entities"),
    ],
)
def test_bad_request_data_is_a_422_naming_the_field(client: TestClient, request_data: Any, message: str) -> None:
    body: dict[str, Any] = {"features": ["shape:ratio"], "entities": {"card_id": [1]}}
    if request_data is not None:
        body["request_data"] = request_data
    answer = post(client, body)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["error"]


BAD = {"features": ["boom:x"], "entities": {"card_id": [1]}, "request_data": {"amount": [1.0]}}


def test_a_raising_function_is_a_500_naming_view_and_function(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="serving_api.app"):
        answer = post(client, BAD)
    assert answer.status_code == 500
    body = answer.json()
    assert body["type"] == "OnDemandFunctionError"
    assert body["view"] == "boom"
    assert body["function"] == f"{MODULE}:explode"
    assert body["exception"] == "ZeroDivisionError"
    assert "the model's favourite number is zero" in body["error"]
    assert "Traceback" not in answer.text and "File " not in answer.text
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)  # the log keeps it
    # The server keeps answering.
    good = post(client, {"features": ["shape:cents"], "entities": {"card_id": [1]}, "request_data": {"amount": [2.5]}})
    assert good.status_code == 200 and good.json()["features"]["shape__cents"]["values"] == [250]


@pytest.mark.parametrize(
    ("view", "fragment", "output"),
    [
        ("wrong_type", "returned output 'n' that cannot be int64", "n"),
        ("wrong_cols", "returned the columns ['m']; its outputs are ['n']", None),
    ],
)
def test_a_function_returning_the_wrong_thing_is_a_500(
    client: TestClient, view: str, fragment: str, output: str | None
) -> None:
    answer = post(client, {"features": [f"{view}:n"], "entities": {"card_id": [1]}, "request_data": {"amount": [1.0]}})
    assert answer.status_code == 500
    body = answer.json()
    assert fragment in body["error"] and body["view"] == view and body.get("output") == output


def test_the_client_raises_a_typed_error(client: TestClient) -> None:
    answer = post(client, BAD)
    replay = httpx.MockTransport(lambda request: httpx.Response(answer.status_code, content=answer.content))
    with SkewlessClient("http://test", transport=replay) as http, pytest.raises(OnDemandFunctionError) as caught:
        http.get_features({"card_id": [1]}, features=["boom:x"], request_data={"amount": [1.0]})
    assert (caught.value.view, caught.value.function, caught.value.exception) == (
        "boom",
        f"{MODULE}:explode",
        "ZeroDivisionError",
    )


def test_lookup_raises_the_typed_error_in_python(online: RedisOnlineStore) -> None:
    with pytest.raises(OnDemandFunctionError, match="raised ZeroDivisionError") as caught:
        lookup(FUNCTION_PLAN, online, [FeatureRefPlan("boom", "x")], {"card_id": [1]}, request_data={"amount": [1.0]})
    assert caught.value.view == "boom"


STALE = dataclasses.replace(
    PLAN,
    on_demand_views=(
        dataclasses.replace(SHAPE, function=dataclasses.replace(SHAPE.function, source_fingerprint="0" * 16)),
    ),  # type: ignore[arg-type]
)


def test_startup_fails_when_a_function_changed_since_the_plan(online: RedisOnlineStore) -> None:
    app = create_app(plan_provider=lambda: plan_version(STALE), store=online)
    with pytest.raises(FunctionLoadError, match="changed since the plan was compiled"), TestClient(app):
        pass


def test_a_refreshed_plan_with_a_changed_function_is_not_served(
    online: RedisOnlineStore, caplog: pytest.LogCaptureFixture
) -> None:
    versions: list[PlanVersion] = [plan_version(FUNCTION_PLAN, 1)]
    app = create_app(plan_provider=lambda: versions[-1], store=online, refresh_seconds=0.0)
    body = {"features": ["shape:cents"], "entities": {"card_id": [1]}, "request_data": {"amount": [1.5]}}
    with TestClient(app, raise_server_exceptions=False) as c:
        assert post(c, body).json()["plan_version"] == 1
        versions.append(plan_version(STALE, 2))
        with caplog.at_level(logging.ERROR, logger="serving_api.app"):
            answer = post(c, body)
            again = post(c, body)
        assert answer.status_code == 200 and answer.json()["plan_version"] == 1
        assert answer.json()["features"]["shape__cents"]["values"] == [150]
        assert again.json()["plan_version"] == 1
        refusals = [r.getMessage() for r in caplog.records if "not serving plan version 2" in r.getMessage()]
        assert len(refusals) == 1 and "changed since the plan was compiled" in refusals[0]
        versions.append(plan_version(FUNCTION_PLAN, 3))
        assert post(c, body).json()["plan_version"] == 3
