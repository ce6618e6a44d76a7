"""The example payments database behind ``definitions/``: generated, realistic, reproducible.

``create_example_data(url)`` writes three tables to any SQLAlchemy URL (SQLite by default, PostgreSQL works):

- ``card_accounts``: account snapshots (limit, balance, tier, blocked flag) each time the bank changes them;
- ``payments``: every card payment, with its currency, FX rate and countries;
- ``merchant_risk``: a daily risk score per merchant.

Timestamps are whole seconds in UTC, relative to ``now`` so a fresh demo has fresh values to serve.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

CURRENCIES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.04, "SEK": 0.088}
COUNTRIES = ["FR", "DE", "ES", "IT", "NL", "GB", "US", "CH", "SE"]
CATEGORIES = ["grocery", "travel", "electronics", "fuel", "restaurants", "gaming", "fashion"]
TIERS = ["classic", "gold", "platinum"]

_TABLES = {
    "card_accounts": [
        ("card_id", "BIGINT"),
        ("updated_at", "TIMESTAMP"),
        ("ingested_at", "TIMESTAMP"),
        ("credit_limit", "REAL"),
        ("balance", "REAL"),
        ("card_tier", "TEXT"),
        ("is_blocked", "BOOLEAN"),
    ],
    "payments": [
        ("payment_id", "BIGINT"),
        ("card_id", "BIGINT"),
        ("merchant_id", "BIGINT"),
        ("paid_at", "TIMESTAMP"),
        ("recorded_at", "TIMESTAMP"),
        ("amount", "REAL"),
        ("currency", "TEXT"),
        ("fx_rate", "REAL"),
        ("country", "TEXT"),
        ("home_country", "TEXT"),
    ],
    "merchant_risk": [
        ("merchant_id", "BIGINT"),
        ("scored_at", "TIMESTAMP"),
        ("category", "TEXT"),
        ("chargeback_rate", "REAL"),
        ("disputes_30d", "BIGINT"),
    ],
}


def create_example_data(
    url: str,
    *,
    now: datetime | None = None,
    cards: int = 1_000,
    merchants: int = 200,
    payments: int = 30_000,
    days: int = 30,
    seed: int = 7,
) -> dict[str, int]:
    """(Re)create the example tables at ``url``; returns the row count per table."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(days=days)
    rows = {
        "card_accounts": _card_accounts(rng, cards, start, now),
        "payments": _payments(rng, cards, merchants, payments, start, now),
        "merchant_risk": _merchant_risk(rng, merchants, start, now),
    }
    write_tables(url, rows)
    return {name: len(table) for name, table in rows.items()}


def write_tables(url: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.begin() as conn:
            for table, data in rows.items():
                columns = _TABLES[table]
                ddl = ", ".join(
                    f"{name} {'DOUBLE PRECISION' if t == 'REAL' and not sqlite else t}" for name, t in columns
                )
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
                conn.exec_driver_sql(f"CREATE TABLE {table} ({ddl})")
                marks = ", ".join(["?" if sqlite else "%s"] * len(columns))
                values = [_for_sqlite(r) for r in data] if sqlite else data
                conn.exec_driver_sql(f"INSERT INTO {table} VALUES ({marks})", values)
    finally:
        engine.dispose()


def _for_sqlite(row: Sequence[Any]) -> tuple[Any, ...]:
    # SQLite has no timestamp type: store the text form the JDBC driver and SQLAlchemy both read back.
    return tuple(v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime) else v for v in row)


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def _card_accounts(rng: random.Random, cards: int, start: datetime, now: datetime) -> list[tuple[Any, ...]]:
    rows = []
    for card_id in range(1, cards + 1):
        limit = rng.choice([500.0, 1000.0, 2500.0, 5000.0, 10000.0])
        tier = TIERS[min(2, int(limit // 3000))]
        updated = start + timedelta(seconds=rng.randrange(0, 86_400 * 3))
        while updated < now:
            balance = round(rng.uniform(0, limit * 1.1), 2)
            blocked = rng.random() < 0.02
            ingested = updated + timedelta(minutes=rng.randrange(1, 90))
            rows.append((card_id, _naive(updated), _naive(ingested), limit, balance, tier, blocked))
            if rng.random() < 0.1:  # a correction: same event time, later ingestion, new balance
                rows.append(
                    (
                        card_id,
                        _naive(updated),
                        _naive(ingested + timedelta(hours=2)),
                        limit,
                        round(balance * 0.9, 2),
                        tier,
                        blocked,
                    )
                )
            if rng.random() < 0.15:
                limit = limit * 2
            updated += timedelta(days=rng.uniform(2, 12))
    return rows


def _payments(
    rng: random.Random, cards: int, merchants: int, count: int, start: datetime, now: datetime
) -> list[tuple[Any, ...]]:
    span = int((now - start).total_seconds())
    home = {c: rng.choice(COUNTRIES[:5]) for c in range(1, cards + 1)}
    rows = []
    for payment_id in range(1, count + 1):
        card_id = rng.randint(1, cards)
        paid = start + timedelta(seconds=rng.randrange(span))
        currency = rng.choices(list(CURRENCIES), weights=[70, 12, 8, 5, 5])[0]
        country = home[card_id] if rng.random() < 0.85 else rng.choice(COUNTRIES)
        fx_rate = CURRENCIES[currency] if rng.random() > 0.01 else None  # a few rates missing upstream
        amount = round(rng.lognormvariate(3.2, 1.0), 2)
        recorded = paid + timedelta(seconds=rng.randrange(1, 600))
        rows.append(
            (
                payment_id,
                card_id,
                rng.randint(1, merchants),
                _naive(paid),
                _naive(recorded),
                amount,
                currency,
                fx_rate,
                country,
                home[card_id],
            )
        )
    return rows


def _merchant_risk(rng: random.Random, merchants: int, start: datetime, now: datetime) -> list[tuple[Any, ...]]:
    rows = []
    for merchant_id in range(1, merchants + 1):
        category = rng.choice(CATEGORIES)
        base = rng.betavariate(1.2, 80)
        day = start.replace(hour=2)
        while day < now:
            rate = round(max(0.0, base + rng.gauss(0, 0.003)), 5)
            rows.append((merchant_id, _naive(day), category, rate, rng.randint(0, 12)))
            day += timedelta(days=1)
    return rows
