"""Features about merchants, from a daily risk scoring query."""

from datetime import timedelta

from definitions.entities import merchant
from features import AllowedValues, Bool, Feature, FeatureView, Float64, Int64, MaxNulls, Range, SqlSource, String

CATEGORIES = ["grocery", "travel", "electronics", "fuel", "restaurants", "gaming", "fashion"]

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
        # A new category is worth a look, not a blocked run: a warning.
        Feature("category", String, checks=[AllowedValues(CATEGORIES, level="warning")]),
        # A rate outside [0, 1] or a missing one is a broken scoring job: the run is not published.
        Feature("chargeback_rate", Float64, checks=[Range(0, 1), MaxNulls(0.0)]),
        Feature("disputes_30d", Int64, checks=[Range(min=0)]),
        Feature("high_risk", Bool, expr="chargeback_rate > 0.02"),
    ],
)
