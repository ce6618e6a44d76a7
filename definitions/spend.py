"""How each card spends over time: windowed aggregations of its payments, and a request-time comparison."""

from datetime import timedelta

from definitions.cards import payments
from definitions.checks import payment
from definitions.entities import card
from features import Aggregation, Feature, FeatureView, Float64, OnDemandFeatureView

# At every hour (the cadence), each window aggregates the payments with tick - window < paid_at <= tick.
card_spend = FeatureView(
    entities=[card],
    source=payments,
    cadence="1h",
    ttl=timedelta(hours=6),  # a missed hourly run goes unnoticed for at most 6 hours, then values expire
    aggregations=[
        Aggregation("sum", "amount * fx_rate", windows=["1h", "1d", "7d", "30d"], name="spend_eur"),
        Aggregation("count", windows=["1h", "1d", "7d"]),
        Aggregation("mean", "amount * fx_rate", windows=["30d"], name="amount_eur_mean"),
        Aggregation("count", windows=["7d"], filter="country != home_country", name="foreign_count"),
        Aggregation("count_distinct", "merchant_id", windows=["7d"]),
    ],
    description="Card spending per window, in EUR, refreshed hourly.",
)

spend_checks = OnDemandFeatureView(
    sources=[payment, card_spend],
    features=[
        Feature(
            "amount_vs_avg_30d",
            Float64,
            expr="payment.amount * payment.fx_rate / card_spend.amount_eur_mean_30d",
            description="The payment in EUR over the card's average payment of the last 30 days.",
        ),
    ],
    description="How the payment compares with the card's recent spending.",
)
