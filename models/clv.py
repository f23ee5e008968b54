"""Customer lifetime value from a purchase model and Gamma-Gamma: the one CLV that the service, the tests and
the benchmarks compute."""

from __future__ import annotations

import numpy as np

from models.btyd import PurchaseModel
from models.gamma_gamma import SpendModel


def monthly_rate(annual_rate: float) -> float:
    """The monthly discount rate equivalent to an annual one."""
    return (1 + annual_rate) ** (1 / 12) - 1


def clv(purchases: PurchaseModel, spend: SpendModel, frequency, recency, T, monetary_value, month_ends,
        monthly_discount: float) -> np.ndarray:
    """Discounted expected cash flow, in monthly steps: ``CLV = sum_k E[M] (E[X(e_k)] - E[X(e_(k-1))]) /
    (1 + d)^k`` over the ends e_1 < ... < e_n of the months (``month_ends``, in the model's time unit; e_0 = 0)
    and the monthly discount rate d. All months of all customers are one vectorised evaluation.

    ``lifetimes``' ``customer_lifetime_value`` is this with months of 30 days (or 4.345 weeks).
    """
    cumulative = purchases.expected_purchases(np.asarray(month_ends, dtype=float), frequency, recency, T)
    return discounted_value(spend.expected_order_value(frequency, monetary_value), cumulative, monthly_discount)


def discounted_value(order_value: np.ndarray, cumulative: np.ndarray, monthly_discount: float) -> np.ndarray:
    """``clv`` from each row's expected order value and its expected purchases by the end of each month
    (``cumulative``, one column per month): for a caller that evaluated the purchases with other horizons."""
    per_month = np.diff(cumulative, axis=1, prepend=0.0)
    return order_value * (per_month @ (1 + monthly_discount) ** -np.arange(1, cumulative.shape[1] + 1))
