"""Features about merchants, from a daily risk scoring query."""

from datetime import timedelta

from definitions.entities import merchant
from features import Bool, Feature, FeatureView, Float64, Int64, SqlSource, String

merchant_risk_scores = SqlSource(
    connection="payments",
    query="""
        SELECT merchant_id, scored_at, category, chargeback_rate, disputes_30d
        FROM merchant_risk
        WHERE category IS NOT NULL
    """,
    timestamp="scored_at",
)

merchant_risk = FeatureView(
    entities=[merchant],
    source=merchant_risk_scores,
    ttl=timedelta(days=2),
    features=[
        Feature("category", String),
        Feature("chargeback_rate", Float64),
        Feature("disputes_30d", Int64),
        Feature("high_risk", Bool, expr="chargeback_rate > 0.02"),
    ],
)
