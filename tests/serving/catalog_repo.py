"""The example repository as the catalog tests see it: its data in PostgreSQL (so the Arrow engine runs every
job, no Spark), a real Redis online, the stored views that need no Spark materialized in two windows (two
runs, two Delta versions each), and a training set written to a file."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from definitions._example_data import create_example_data
from features.store import FeatureStore
from tests.servers import fresh_database

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ("card_profile", "card_last_payment", "merchant_risk")  # card_spend is windowed: Spark's
NOW = datetime(2024, 6, 1, tzinfo=UTC)
SPLIT = NOW - timedelta(days=3)  # the first run reads up to here, the second the rest


def build_repo(path: Path, postgres_url: str, redis_url: str) -> FeatureStore:
    """The repository, applied and materialized; its training set is ``<path>/training.parquet``."""
    database = fresh_database(postgres_url, f"cat_{uuid.uuid4().hex[:10]}")
    create_example_data(database, now=NOW, cards=40, merchants=8, payments=400, days=10)
    shutil.copytree(ROOT / "definitions", path / "definitions", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "skewless.yaml").write_text(
        f"project: ui_{uuid.uuid4().hex[:8]}\n"
        f"registry: {database}\n"
        "offline:\n  path: offline\n"
        f"online:\n  url: {redis_url}\n"
        f"connections:\n  payments: {database}\n"
    )
    store = FeatureStore(path)
    store.apply()
    store.materialize(list(VIEWS), end=SPLIT)
    store.materialize(list(VIEWS), start=SPLIT, end=NOW + timedelta(days=1))
    entities = pd.DataFrame(
        {
            "card_id": [1, 2, 3, 4],
            "merchant_id": [1, 2, 3, 4],
            "event_timestamp": pd.to_datetime([NOW - timedelta(days=d) for d in range(4)], utc=True),
        }
    )
    store.get_training_dataset(
        entities,
        features=["card_profile:credit_limit", "card_profile:card_tier", "merchant_risk:chargeback_rate"],
        output=str(path / "training.parquet"),
    )
    return store
