"""Training contracts on the real components: PostgreSQL as the source, Delta tables, a real redis-server, the HTTP
service in-process.

Expected values come from plain Python over the rows the test wrote (``features_of`` the newest row per card);
the features a definition change breaks are the ones the test edited.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.cli import main
from features.errors import ContractConflictError
from features.store import FeatureStore
from serving_api.app import create_app
from tests.integration.test_push import BASE, Repo, features_of, newest, payment

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CARDS = [1, 2, 3]
TRAINED = ["last_payment:amount_eur", "last_payment:merchant_lower"]


@pytest.fixture
def repo(tmp_path: Path, postgres_url: str, redis_url: str) -> Any:
    made = Repo(tmp_path / "repo", postgres_url, redis_url)
    yield made
    made.store.close()


def trained_set(repo: Repo, tmp_path: Path) -> Path:
    """A training set of TRAINED written with its manifest; returns the manifest's path."""
    output = tmp_path / "train.parquet"
    entities = pd.DataFrame({"card_id": CARDS, "event_timestamp": [BASE + timedelta(days=1)] * len(CARDS)})
    repo.store.get_training_dataset(entities, features=TRAINED, output=str(output))
    return Path(f"{output}.manifest.json")


def expected(repo: Repo, *, factor: float = 1.0) -> dict[str, list[Any]]:
    latest = newest(repo.source)
    rows = [features_of(latest[card]) for card in CARDS]
    return {
        "last_payment__amount_eur": [r[0] * factor for r in rows],
        "last_payment__merchant_lower": [r[1] for r in rows],
    }


def values(answer: dict[str, Any]) -> dict[str, list[Any]]:
    return {column: found["values"] for column, found in answer["features"].items()}


def change_amount_eur(repo: Repo) -> None:
    views = Path(repo.store.config.root) / "definitions" / "views.py"
    views.write_text(views.read_text().replace('expr="amount * fx_rate"', 'expr="amount * fx_rate * 2"'))


def post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/features", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_contract_is_served_its_definitions_side_by_side_after_a_change(
    repo: Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(repo.store.config.root)
    repo.store.materialize(["last_payment"])
    manifest = trained_set(repo, tmp_path)
    assert main(["contract", "register", str(manifest), "--name", "fraud_v7", "--repo", root]) == 0
    assert main(["contract", "register", str(manifest), "--name", "fraud_v7", "--repo", root]) == 0  # a no-op

    client = TestClient(create_app(root))
    under_v7 = {"contract": "fraud_v7", "entities": {"card_id": CARDS}}
    assert values(post(client, under_v7)) == expected(repo)
    python = repo.store.get_online_features({"card_id": CARDS}, trained_with="fraud_v7").to_dict()
    assert values(python) == expected(repo)

    change_amount_eur(repo)
    capsys.readouterr()
    assert main(["plan", "--repo", root]) == 0
    assert "contract 'fraud_v7' keeps being served its trained definitions of last_payment:amount_eur" in (
        capsys.readouterr().out
    )
    repo.store.apply()
    # Applied, not materialized yet: the live snapshot still holds the contracted definition and serves it.
    assert values(post(TestClient(create_app(root)), under_v7)) == expected(repo)

    results = repo.store.materialize(["last_payment"])
    assert sorted(r.view for r in results)[0] == "last_payment"
    assert any(r.view.startswith("last_payment@") for r in results)
    client = TestClient(create_app(root))
    assert values(post(client, under_v7)) == expected(repo)  # the trained definitions, side by side
    plain = post(client, {"features": TRAINED, "entities": {"card_id": CARDS}})
    assert values(plain) == expected(repo, factor=2.0)  # the new ones, live

    # A new contract on the new definitions; runs keep both current.
    new_manifest = trained_set(repo, tmp_path / "v8") if (tmp_path / "v8").mkdir() is None else None
    assert new_manifest is not None
    assert main(["contract", "register", str(new_manifest), "--name", "fraud_v8", "--repo", root]) == 0
    repo.add_source([payment(1, hours=30, amount=1234.5, merchant="NewShop"), payment(3, hours=31, amount=0.25)])
    repo.store.materialize(["last_payment"])
    client = TestClient(create_app(root))
    assert values(post(client, under_v7)) == expected(repo)
    assert values(post(client, {"contract": "fraud_v8", "entities": {"card_id": CARDS}})) == expected(repo, factor=2.0)
    with_python = repo.store.get_online_features({"card_id": CARDS}, trained_with="fraud_v7").to_dict()
    assert values(with_python) == expected(repo)

    # Prune keeps the kept version's keys (and its table: its plan version is protected by the contract).
    capsys.readouterr()
    assert main(["prune", "--json", "--keep-versions", "1", "--repo", root]) == 0
    pruned = json.loads(capsys.readouterr().out)
    kept_keys = [v for v in pruned["online"] if v["view"].startswith("last_payment@")]
    assert kept_keys and not any(v["delete"] for v in kept_keys)
    assert not any(t["delete"] for t in pruned["tables"])

    # A feature the contract does not cover is the caller's error.
    outside = client.post(
        "/v1/features", json={"contract": "fraud_v7", "features": ["last_payment:big"], "entities": {"card_id": [1]}}
    )
    assert outside.status_code == 422 and "does not cover last_payment:big" in outside.json()["error"]

    capsys.readouterr()
    assert main(["contract", "list", "--json", "--repo", root]) == 0
    states = {c["name"]: c["state"] for c in json.loads(capsys.readouterr().out)}
    assert states == {"fraud_v7": "side by side: last_payment:amount_eur", "fraud_v8": "served"}

    assert main(["contract", "retire", "--name", "fraud_v7", "--repo", root]) == 0
    retired = TestClient(create_app(root))
    gone = retired.post("/v1/features", json=under_v7)
    assert gone.status_code == 404 and gone.json()["known"] == ["fraud_v8"]
    # Retired, its kept version is released: prune now deletes the kept snapshot's keys.
    capsys.readouterr()
    assert main(["prune", "--json", "--repo", root]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert [v["delete"] for v in pruned["online"] if v["view"].startswith("last_payment@")] == [True]


def test_without_kept_versions_a_changed_feature_is_refused_never_substituted(repo: Repo, tmp_path: Path) -> None:
    root = Path(repo.store.config.root)
    config = root / "skewless.yaml"
    config.write_text(config.read_text().replace("online:\n", "online:\n  contract_versions: 0\n"))
    repo.store.close()
    repo.store = FeatureStore(root)
    repo.store.materialize(["last_payment"])
    manifest = trained_set(repo, tmp_path)
    assert main(["contract", "register", str(manifest), "--name", "fraud_v7", "--repo", str(root)]) == 0
    change_amount_eur(repo)
    repo.store.apply()
    repo.store.materialize(["last_payment"])
    client = TestClient(create_app(root))

    answer = client.post("/v1/features", json={"contract": "fraud_v7", "entities": {"card_id": CARDS}})
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["changed"] == ["last_payment:amount_eur"]
    assert (body["contract_plan_version"], body["live_plan_version"]) == (1, 2)
    with pytest.raises(ContractConflictError, match="last_payment:amount_eur"):
        repo.store.get_online_features({"card_id": CARDS}, trained_with="fraud_v7")
    # Under the contract, the unchanged feature is still served.
    kept = post(
        client, {"contract": "fraud_v7", "features": ["last_payment:merchant_lower"], "entities": {"card_id": CARDS}}
    )
    assert values(kept) == {"last_payment__merchant_lower": expected(repo)["last_payment__merchant_lower"]}


def test_unknown_tampered_and_foreign_manifests_are_refused(
    repo: Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(repo.store.config.root)
    repo.store.materialize(["last_payment"])
    manifest = trained_set(repo, tmp_path)
    assert main(["contract", "register", str(manifest), "--name", "good", "--repo", root]) == 0

    unknown = TestClient(create_app(root)).post("/v1/features", json={"contract": "nope", "entities": {"card_id": [1]}})
    assert unknown.status_code == 404 and unknown.json()["known"] == ["good"]

    data = json.loads(manifest.read_text())
    tampered = tmp_path / "tampered.manifest.json"
    data["feature_fingerprints"]["last_payment:amount_eur"] = "0" * 32
    tampered.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["contract", "register", str(tampered), "--name", "bad", "--repo", root]) == 1
    assert "the manifest was edited" in capsys.readouterr().out

    foreign = tmp_path / "foreign.manifest.json"
    data = json.loads(manifest.read_text())
    data["plan_fingerprint"] = "f" * 32
    foreign.write_text(json.dumps(data))
    assert main(["contract", "register", str(foreign), "--name", "bad", "--repo", root]) == 1
    assert "another repository" in capsys.readouterr().out

    assert main(["contract", "register", str(manifest), "--name", "good", "--repo", root]) == 0
    other = tmp_path / "other.manifest.json"
    data = json.loads(manifest.read_text())
    del data["feature_fingerprints"]["last_payment:merchant_lower"]
    other.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["contract", "register", str(other), "--name", "good", "--repo", root]) == 1
    assert "already exists with other features" in capsys.readouterr().out
    assert list(repo.store.registry.contracts()) == ["good"]


ON_DEMAND = """

import pandas as pd

from features import OnDemandFeatureView, RequestSource, on_demand_function

order = RequestSource(schema={"qty": Float64})

order_checks = OnDemandFeatureView(
    sources=[order, last_payment],
    features=[Feature("per_item", Float64, expr="last_payment.amount_eur / order.qty")],
)


@on_demand_function(
    sources=[order, last_payment],
    inputs=["order.qty", "last_payment.amount_eur"],
    outputs={"scaled": Float64},
    mode="pandas",
)
def order_shape(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"scaled": frame["last_payment.amount_eur"] * frame["order.qty"]})
"""

REQUEST_TIME = ["last_payment:amount_eur", "order_checks:per_item", "order_shape:scaled"]
QTY = [2.0, 4.0, 0.5]


def request_time_expected(repo: Repo, *, factor: float = 1.0) -> dict[str, list[Any]]:
    eur = expected(repo, factor=factor)["last_payment__amount_eur"]
    return {
        "last_payment__amount_eur": eur,
        "order_checks__per_item": [e / q for e, q in zip(eur, QTY, strict=True)],
        "order_shape__scaled": [e * q for e, q in zip(eur, QTY, strict=True)],
    }


def test_request_time_features_and_functions_are_served_side_by_side(repo: Repo, tmp_path: Path) -> None:
    root = Path(repo.store.config.root)
    views = root / "definitions" / "views.py"
    views.write_text(views.read_text() + ON_DEMAND)
    repo.store.apply()
    repo.store.materialize(["last_payment"])
    output = tmp_path / "train.parquet"
    entities = pd.DataFrame({"card_id": CARDS, "event_timestamp": [BASE + timedelta(days=1)] * len(CARDS), "qty": QTY})
    repo.store.get_training_dataset(entities, features=REQUEST_TIME, output=str(output))
    trained = pd.read_parquet(output)
    assert {c: trained[c].tolist() for c in request_time_expected(repo)} == request_time_expected(repo)
    assert main(["contract", "register", f"{output}.manifest.json", "--name", "m", "--repo", str(root)]) == 0

    change_amount_eur(repo)
    repo.store.apply()
    repo.store.materialize(["last_payment"])
    body = {"contract": "m", "entities": {"card_id": CARDS}, "request_data": {"qty": QTY}}
    answer = post(TestClient(create_app(root)), body)
    assert values(answer) == request_time_expected(repo)
    live = post(
        TestClient(create_app(root)),
        {"features": REQUEST_TIME, "entities": {"card_id": CARDS}, "request_data": {"qty": QTY}},
    )
    assert values(live) == request_time_expected(repo, factor=2.0)

    # The function's source changes: the contract is served the function as it was applied (its module's text
    # kept in the registry), the live plan the new one.
    views.write_text(views.read_text().replace('* frame["order.qty"]})', '* frame["order.qty"] + 1.0})'))
    repo.store.apply()
    repo.store.materialize(["last_payment"])
    under = post(TestClient(create_app(root)), body)
    assert values(under) == request_time_expected(repo)
    now_live = post(
        TestClient(create_app(root)),
        {"features": ["order_shape:scaled"], "entities": {"card_id": CARDS}, "request_data": {"qty": QTY}},
    )
    new_scaled = [s + 1.0 for s in request_time_expected(repo, factor=2.0)["order_shape__scaled"]]
    assert values(now_live) == {"order_shape__scaled": new_scaled}
    python = repo.store.get_online_features({"card_id": CARDS}, trained_with="m", request_data={"qty": QTY}).to_dict()
    assert values(python) == request_time_expected(repo)

    # Without the applied text (a registry from before it was kept), that function is refused, never substituted.
    import sqlalchemy as sa

    with repo.store.registry.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM skewless_function_sources"))
    refused = TestClient(create_app(root)).post("/v1/features", json=body)
    assert refused.status_code == 409, refused.text
    assert refused.json()["changed"] == ["order_shape:scaled"]
    only_expressions = {**body, "features": ["last_payment:amount_eur", "order_checks:per_item"]}
    kept = post(TestClient(create_app(root)), only_expressions)
    assert values(kept) == {k: v for k, v in request_time_expected(repo).items() if not k.startswith("order_shape")}


def test_lookups_under_two_contracts_during_runs_never_get_the_other_version(repo: Repo, tmp_path: Path) -> None:
    root = str(repo.store.config.root)
    repo.store.materialize(["last_payment"])
    assert main(["contract", "register", str(trained_set(repo, tmp_path)), "--name", "v1", "--repo", root]) == 0
    change_amount_eur(repo)
    repo.store.apply()
    repo.store.materialize(["last_payment"])
    (tmp_path / "v2").mkdir()
    assert main(["contract", "register", str(trained_set(repo, tmp_path / "v2")), "--name", "v2", "--repo", root]) == 0

    allowed: dict[str, list[dict[str, list[Any]]]] = {"v1": [expected(repo)], "v2": [expected(repo, factor=2.0)]}
    stop = threading.Event()
    seen: list[tuple[str, dict[str, list[Any]]]] = []
    errors: list[BaseException] = []

    def look_up(name: str) -> None:
        store = FeatureStore(root)
        try:
            while not stop.is_set():
                seen.append((name, values(store.get_online_features({"card_id": CARDS}, trained_with=name).to_dict())))
        except BaseException as exc:  # every error counts
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=look_up, args=(name,)) for name in ("v1", "v2", "v1", "v2")]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(3):
            repo.add_source([payment(card, hours=40 + round_, amount=100.0 * round_ + card) for card in CARDS])
            allowed["v1"].append(expected(repo))
            allowed["v2"].append(expected(repo, factor=2.0))
            repo.store.materialize(["last_payment"])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(seen) > 20
    wrong = [(name, got) for name, got in seen if got not in allowed[name]]
    assert wrong == []
    assert seen[-1][1] == allowed[seen[-1][0]][-1]  # the last run is served under both


@pytest.mark.spark
def test_a_windowed_aggregation_is_served_side_by_side(repo: Repo, tmp_path: Path) -> None:
    root = Path(repo.store.config.root)
    views = root / "definitions" / "views.py"
    views.write_text(views.read_text().replace('windows=["7d"]', 'windows=["unbounded"]'))
    repo.store.apply()
    repo.store.materialize(["spend"])
    output = tmp_path / "train.parquet"
    entities = pd.DataFrame({"card_id": CARDS, "event_timestamp": [BASE + timedelta(days=30)] * len(CARDS)})
    repo.store.get_training_dataset(entities, features=["spend:amount_sum_all"], output=str(output))
    assert main(["contract", "register", f"{output}.manifest.json", "--name", "w", "--repo", str(root)]) == 0

    def sums(keep: Any) -> list[float | None]:  # plain Python over the source rows; an empty window is null
        picked = [[r["amount"] for r in repo.source if r["card_id"] == card and keep(r)] for card in CARDS]
        return [sum(amounts) if amounts else None for amounts in picked]

    views.write_text(views.read_text().replace('windows=["unbounded"]', 'windows=["unbounded"], filter="amount > 20"'))
    repo.store.apply()
    repo.store.materialize(["spend"])
    client = TestClient(create_app(root))
    under = post(client, {"contract": "w", "entities": {"card_id": CARDS}})
    assert values(under) == {"spend__amount_sum_all": sums(lambda r: True)}
    live = post(client, {"features": ["spend:amount_sum_all"], "entities": {"card_id": CARDS}})
    assert values(live) == {"spend__amount_sum_all": sums(lambda r: r["amount"] > 20)}
