"""Request-time checks of the payment being authorised: computed per request, identically in training.

``payment_checks`` are typed expressions; ``payment_shape`` is a plain pandas function, for what an
expression cannot say (logarithms, digit counts).
"""

import numpy as np
import pandas as pd

from definitions.cards import card_profile
from features import Bool, Feature, Float64, Int64, OnDemandFeatureView, RequestSource, on_demand_function

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


def _digits(value: float) -> int:
    """Digits of the whole part of a positive amount: 0.5 -> 1, 99.99 -> 2, 1000.0 -> 4."""
    return len(str(int(value)))


@on_demand_function(
    sources=[payment, card_profile],
    inputs=["payment.amount", "card_profile.credit_limit"],
    outputs={"is_round": Bool, "log10_amount": Float64, "digits": Int64, "digits_below_limit": Int64},
    mode="pandas",
)
def payment_shape(frame: pd.DataFrame) -> pd.DataFrame:
    """The shape of the amount, as card testers probe it: round amounts, order of magnitude, digit counts.

    A missing, non-positive or infinite amount (or limit) gives nulls.
    """
    amount = frame["payment.amount"].astype("float64")
    limit = frame["card_profile.credit_limit"].astype("float64")
    usable = amount.where(np.isfinite(amount) & (amount > 0))
    usable_limit = limit.where(np.isfinite(limit) & (limit > 0))
    digits = usable.map(_digits, na_action="ignore").astype("Int64")
    return pd.DataFrame(
        {
            "is_round": (usable % 1 == 0).astype("boolean").mask(usable.isna()),
            "log10_amount": np.log10(usable),
            "digits": digits,
            "digits_below_limit": usable_limit.map(_digits, na_action="ignore").astype("Int64") - digits,
        }
    )
