"""Feature services: the named selection of features each model is trained and served with."""

from definitions.cards import card_last_payment, card_profile
from definitions.checks import payment_checks, payment_shape
from definitions.merchants import merchant_risk
from definitions.spend import card_spend, spend_checks
from features import FeatureService

fraud_model = FeatureService(
    features=[
        card_profile,
        card_last_payment.select("amount_eur", "is_foreign"),
        merchant_risk.select("chargeback_rate", "high_risk"),
        payment_checks.select("share_of_limit", "over_available"),
        payment_shape,
        card_spend.select("spend_eur_1d", "count_1h", "foreign_count_7d"),
        spend_checks,
    ],
    description="Features of the card-fraud model, scored when a payment is authorised.",
)
