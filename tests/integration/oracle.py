"""Independent oracles for the end-to-end tests: plain pandas over the source tables, no skewless code.

The example features are recomputed here by hand from their definitions in definitions/*.py, so a bug in the
expression translator, the Delta merge, the publication or the point-in-time join shows up as a difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa


def read_sources(url: str) -> dict[str, pd.DataFrame]:
    engine = sa.create_engine(url)
    frames = {}
    with engine.connect() as conn:
        for table in ("card_accounts", "payments", "merchant_risk"):
            frame = pd.read_sql_query(f"SELECT * FROM {table}", conn)
            for column in frame.columns:
                if column.endswith("_at"):
                    frame[column] = pd.to_datetime(frame[column], utc=True)
            frames[table] = frame
    engine.dispose()
    return frames


def example_features(sources: dict[str, pd.DataFrame]) -> dict[str, tuple[pd.DataFrame, list[str], str, str | None]]:
    """Per view: (rows with keys, event time, created time and features), keys, event column, created column."""
    accounts = sources["card_accounts"].copy()
    accounts["is_blocked"] = accounts["is_blocked"].astype(bool)
    accounts["limit_utilisation"] = np.where(
        accounts["credit_limit"] > 0, accounts["balance"] / accounts["credit_limit"], 0.0
    )
    payments = sources["payments"].copy()
    payments["amount_eur"] = payments["amount"] * payments["fx_rate"]  # a missing rate gives a missing amount
    payments["is_foreign"] = payments["country"] != payments["home_country"]
    risk = sources["merchant_risk"]
    risk = risk[risk["category"].notna()].copy()
    risk["high_risk"] = risk["chargeback_rate"] > 0.02
    return {
        "card_profile": (
            accounts[
                ["card_id", "updated_at", "ingested_at", "credit_limit", "card_tier", "is_blocked", "limit_utilisation"]
            ],
            ["card_id"],
            "updated_at",
            "ingested_at",
        ),
        "card_last_payment": (
            payments[
                ["card_id", "paid_at", "recorded_at", "amount", "amount_eur", "currency", "is_foreign", "merchant_id"]
            ],
            ["card_id"],
            "paid_at",
            "recorded_at",
        ),
        "merchant_risk": (
            risk[["merchant_id", "scored_at", "category", "chargeback_rate", "disputes_30d", "high_risk"]],
            ["merchant_id"],
            "scored_at",
            None,
        ),
    }


def latest_per_entity(rows: pd.DataFrame, keys: Sequence[str], ts: str, created: str | None) -> pd.DataFrame:
    order = [*keys, ts] + ([created] if created else [])
    return rows.sort_values(order, kind="stable").drop_duplicates(list(keys), keep="last").reset_index(drop=True)


def point_in_time(
    entities: pd.DataFrame,
    rows: pd.DataFrame,
    keys: Sequence[str],
    entity_ts: str,
    ts: str,
    created: str | None,
    ttl: timedelta | None,
    features: Sequence[str],
    prefix: str,
) -> pd.DataFrame:
    """``pd.merge_asof`` per view: latest row at or before the entity time, within the TTL (inclusive),
    ties on event time won by the later created time. Returns one row per entity row, in order."""
    rows = rows.dropna(subset=[*keys, ts])
    order = [ts] + ([created] if created else [])
    # Among rows sharing keys and event time, the later created one wins: keep only it.
    rows = rows.sort_values(order, kind="stable").drop_duplicates([*keys, ts], keep="last")
    left = entities.reset_index(drop=True).assign(_row=lambda f: range(len(f)))
    usable = left[list(keys)].notna().all(axis=1) & left[entity_ts].notna()
    probe = left[usable].copy()
    for key in keys:
        probe[key] = probe[key].astype(rows[key].dtype)
    # Feature columns get their output names first: a feature may share a name with an entity column.
    right = rows[[*keys, ts, *features]].rename(columns={f: f"{prefix}__{f}" for f in features})
    right = right.rename(columns={ts: "_feature_ts"})
    matched = pd.merge_asof(
        probe[["_row", *keys, entity_ts]].sort_values(entity_ts, kind="stable"),
        right.sort_values("_feature_ts", kind="stable"),
        left_on=entity_ts,
        right_on="_feature_ts",
        by=list(keys),
        direction="backward",
        allow_exact_matches=True,
        tolerance=pd.Timedelta(ttl) if ttl is not None else None,
    )
    matched = matched.set_index("_row").reindex(range(len(left)))
    return pd.DataFrame({f"{prefix}__{f}": matched[f"{prefix}__{f}"].to_numpy() for f in features})
