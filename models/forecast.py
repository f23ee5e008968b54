"""The base's forecast: total purchases and spend over the CLV horizon, with prediction intervals.

For the whole base of buyers and for each RFM segment and stage. A total is a sum over customers,
so its spread has two parts: each customer's own randomness (the variances of their predictive
distributions, summed: customers are independent given the parameters) and what the data leave
unsure about the parameters, by the delta method: the expected totals' gradients in the
log-parameters (central differences) through each fit's covariance (``log_parameter_covariance``).
The interval is normal with both variances added: a total over many customers is close to normal
(docs/models.md shows its coverage on repeated simulations).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from models.btyd import PurchaseModel, holding
from models.gamma_gamma import SpendModel
from models.lifecycle import Horizons

GROUPINGS = ("rfm_segment", "stage")
STEP = 1e-4  # of the central differences, in log-parameters


def forecast(purchases: PurchaseModel, spend: SpendModel, horizons: Horizons, features: pd.DataFrame) -> pd.DataFrame:
    """One row per group (``all`` buyers, then each RFM segment and stage): its customers, and their total
    purchases and spend over the CLV horizon with ``*_low`` / ``*_high`` at the interval level of ``horizons``.

    ``features`` are the rows the two models were fitted on (the training population at its end).
    """
    buyers = features[features["orders"] > 0].reset_index(drop=True)
    f, r, t, m = (buyers[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    days = horizons.clv_days
    counts = purchases.future_purchases(days, f, r, t)
    money = spend.future_spend(counts, f, m)
    codes, labels = _groups(buyers)

    def totals(values: np.ndarray) -> np.ndarray:
        return np.concatenate([np.bincount(c, weights=values, minlength=len(g)) for c, g in zip(codes, labels,
                                                                                              strict=True)])

    expected, order_value = counts.mean(), spend.expected_order_value(f, m)

    def purchase_totals(model: PurchaseModel) -> np.ndarray:  # purchases, then spend at today's order values
        shifted = model.expected_purchases(days, f, r, t)
        return np.stack([totals(shifted), totals(shifted * order_value)])

    by_purchases = _gradient(purchase_totals, purchases)  # parameters x (purchases, spend) x groups
    by_spend = _gradient(lambda model: totals(expected * model.expected_order_value(f, m)), spend)
    purchase_covariance = purchases.log_parameter_covariance(f, r, t)
    parameter_variance = {
        "purchases": _through(by_purchases[:, 0], purchase_covariance),
        "spend": _through(by_purchases[:, 1], purchase_covariance)
        + _through(by_spend, spend.log_parameter_covariance(f, m))}
    out = pd.DataFrame({"group": [name for name, g in zip(("all", *GROUPINGS), labels, strict=True) for _ in g],
                        "value": [value for g in labels for value in g],
                        "customers": totals(np.ones(len(buyers))).astype(int)})
    z = norm.ppf((1 + horizons.interval) / 2)
    own_variance = {"purchases": counts.variance(), "spend": money.variance()}
    for name, point in (("purchases", expected), ("spend", money.mean())):
        centre = totals(point)
        half = z * np.sqrt(totals(own_variance[name]) + parameter_variance[name])
        out[name], out[f"{name}_low"], out[f"{name}_high"] = centre, np.maximum(centre - half, 0), centre + half
    return out


def _gradient(total_of, model) -> np.ndarray:
    """d totals / d log-parameter: the model's parameters in their order by the shape of ``total_of``'s totals."""
    rows = []
    for name, value in model.params_.items():
        up, down = (holding(model, model.params_ | {name: value * np.exp(side * STEP)}) for side in (1, -1))
        rows.append((total_of(up) - total_of(down)) / (2 * STEP))
    return np.array(rows)


def _through(gradient: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Each group's variance ``g' C g`` by the delta method."""
    return np.einsum("pg,pq,qg->g", gradient, covariance, gradient)


def _groups(buyers: pd.DataFrame) -> tuple[list[np.ndarray], list[list[str]]]:
    """Each grouping's code per customer and its values (``all``: one group)."""
    codes, labels = [np.zeros(len(buyers), dtype=np.int64)], [["all buyers"]]
    for column in GROUPINGS:
        code, values = pd.factorize(buyers[column].astype(str), sort=True)
        codes.append(code)
        labels.append(list(values))
    return codes, labels
