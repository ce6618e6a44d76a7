"""Training contracts on the real components: PostgreSQL as the source, Delta tables, a real redis-server, the HTTP
service in-process.

Expected values come from plain Python over the rows the test wrote (``features_of`` the newest row per card);
the features a definition change breaks are the ones the test edited.
"""

from __future__ import annotations

import json
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
