"""Request-time checks of the payment being authorised: computed per request, identically in training."""

from definitions.cards import card_profile
from features import Bool, Feature, Float64, OnDemandFeatureView, RequestSource

# Fields of the payment the model scores: HTTP request_data, or columns of the training entity rows.
payment = RequestSource(
    schema={"amount": Float64, "fx_rate": Float64},
    description="The payment being authorised, in its own currency, with the rate to EUR.",
)

payment_checks = OnDemandFeatureView(
    sources=[payment, card_profile],
    features=[
        Feature("amount_eur", Float64, expr="payment.amount * payment.fx_rate"),
        Feature(
            "share_of_limit",
            Float64,
            expr="if_else(card_profile.credit_limit > 0, "
            "payment.amount * payment.fx_rate / card_profile.credit_limit, 0.0)",
        ),
        Feature(
            "over_available",
            Bool,
            expr="payment.amount * payment.fx_rate > "
            "card_profile.credit_limit * (1.0 - card_profile.limit_utilisation)",
        ),
    ],
    description="How the payment compares with the card's limit and balance.",
)
