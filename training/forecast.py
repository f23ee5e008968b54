"""The base's forecast: total purchases and spend over the CLV horizon, with prediction intervals.

For the whole base of buyers and for each RFM segment and stage. A total is a sum over customers,
so its spread has two parts: each customer's own randomness (the variances of their predictive
distributions, summed: customers are independent given the parameters) and what the data leave
unsure about the parameters (the spread of the expected total over parameters drawn from the fits'
asymptotic normal, ``parameter_draws``). The interval is normal with both variances added: a
total over many customers is close to normal (docs/models.md shows its coverage on repeated
simulations).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from models.btyd import PurchaseModel, SpendModel
from models.lifecycle import Horizons

GROUPINGS = ("rfm_segment", "stage")
DRAWS = 100


def forecast(purchases: PurchaseModel, spend: SpendModel, horizons: Horizons, features: pd.DataFrame,
             draws: int = DRAWS, seed: int = 0) -> pd.DataFrame:
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

    drawn_purchases, drawn_spend = [], []
    for drawn_model, drawn_values in zip(purchases.parameter_draws(draws, f, r, t, seed),
                                         spend.parameter_draws(draws, f, m, seed + 1), strict=True):
        expected = drawn_model.expected_purchases(days, f, r, t)
        drawn_purchases.append(totals(expected))
        drawn_spend.append(totals(expected * drawn_values.expected_order_value(f, m)))
    out = pd.DataFrame({"group": [name for name, g in zip(("all", *GROUPINGS), labels, strict=True) for _ in g],
                        "value": [value for g in labels for value in g],
                        "customers": totals(np.ones(len(buyers))).astype(int)})
    z = norm.ppf((1 + horizons.interval) / 2)
    own_variance = {"purchases": counts.second_moment() - counts.mean() ** 2, "spend": money.variance}
    for name, point, drawn in (("purchases", counts.mean(), drawn_purchases), ("spend", money.mean, drawn_spend)):
        centre = totals(point)
        half = z * np.sqrt(totals(own_variance[name]) + np.var(drawn, axis=0))
        out[name], out[f"{name}_low"], out[f"{name}_high"] = centre, np.maximum(centre - half, 0), centre + half
    return out


def _groups(buyers: pd.DataFrame) -> tuple[list[np.ndarray], list[list[str]]]:
    """Each grouping's code per customer and its values (``all``: one group)."""
    codes, labels = [np.zeros(len(buyers), dtype=np.int64)], [["all buyers"]]
    for column in GROUPINGS:
        code, values = pd.factorize(buyers[column].astype(str), sort=True)
        codes.append(code)
        labels.append(list(values))
    return codes, labels
