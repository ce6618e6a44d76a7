"""Rewrite tests/golden/definitions_plan.json from definitions/ (review the diff before committing)."""

import tempfile
from pathlib import Path

from definitions._example_data import create_example_data
from features.config import RepoConfig
from features.store import FeatureStore

root = Path(__file__).resolve().parents[1]
with tempfile.TemporaryDirectory() as tmp:
    url = f"sqlite:///{tmp}/payments.db"
    create_example_data(url, cards=5, merchants=3, payments=20)
    plan = FeatureStore(config=RepoConfig.from_dict(root, {"connections": {"payments": url}})).compile()
    (root / "tests" / "golden" / "definitions_plan.json").write_text(plan.to_json())
    print(f"wrote tests/golden/definitions_plan.json (plan fingerprint {plan.fingerprint})")
