"""Features about cards and their latest payments."""

from datetime import timedelta

from definitions.entities import card
from features import Bool, Feature, FeatureView, Float64, Int64, SqlSource, String

# Snapshots of the card account, one row each time the bank changes it.
card_accounts = SqlSource(
    connection="payments",
    table="card_accounts",
    timestamp="updated_at",
    created="ingested_at",
    description="Card account snapshots from the core banking system.",
)

card_profile = FeatureView(
    entities=[card],
    source=card_accounts,
    ttl=timedelta(days=90),
    features=[
        Feature("credit_limit", Float64, description="Credit limit in EUR."),
        Feature("card_tier", String),
        Feature("is_blocked", Bool),
        Feature("limit_utilisation", Float64, expr="if_else(credit_limit > 0, balance / credit_limit, 0.0)"),
    ],
    description="The card account as the bank last saw it.",
)

# Every payment, as written by the payment switch.
payments = SqlSource(
    connection="payments",
    table="payments",
    timestamp="paid_at",
    created="recorded_at",
)

card_last_payment = FeatureView(
    entities=[card],
    source=payments,
    ttl=timedelta(days=7),
    features=[
        Feature("amount", Float64, description="Amount in the payment currency."),
        Feature("amount_eur", Float64, expr="amount * fx_rate"),
        Feature("currency", String),
        Feature("is_foreign", Bool, expr="country != home_country"),
        Feature("merchant_id", Int64),
    ],
    description="The card's most recent payment.",
)
