"""What a shop acts on, from the predictions: churn risk bands, value tiers and the expected next order.

- Churn risk: ``low`` / ``medium`` / ``high`` by the served churn probability against two thresholds
  (``models.risk.RiskBands``, configurable; defaults 0.4 and 0.7).
- Value tier: ``top 1%``, ``top 5%``, ``top 10%``, ``top 25%``, ``top 50%`` or ``rest`` by the served CLV,
  against edges learned from the training population (the buyers at the end of the data) and stored with
  the model, as the RFM edges are: one customer scored alone gets the tier the whole table would give them.
- Activity status: ``active``, ``at risk``, ``lapsed`` or ``churned`` from the days since the last order in
  the customer's typical gaps (``recency_gaps``), whether it is past the churn window (``lapsed``), the
  purchase model's P(alive) and the churn risk (``activity_status``).
- Next order: the day by which the customer is as likely as not to have ordered again, from the purchase
  model's probability of no purchase within t (``next_order_days``); none for a customer less likely than
  not to order within the CLV horizon (most of them are gone: a date for them would mean nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.errors import LifecycleError
from features.params import ActivityRules

TIER_SHARES = (0.01, 0.05, 0.10, 0.25, 0.50)  # the top shares of buyers by CLV that name a tier
REST = "rest"
TIERS = (*(f"top {share:.0%}" for share in TIER_SHARES), REST)  # the tiers' names, the most valuable first
WAIT_STEPS = 48  # horizons (geometric, 1 day to the CLV horizon) on which the next order's day is found


@dataclass(frozen=True)
class ValueTiers:
    """The CLV at the edge of each top share of ``TIER_SHARES`` among the buyers it was fitted on."""

    edges: tuple[float, ...]

    @classmethod
    def fit(cls, clv) -> ValueTiers:
        """Edges from a population's CLVs (missing ones, the prospects', left out)."""
        values = np.asarray(clv, dtype=float)
        values = values[~np.isnan(values)]
        if not len(values):
            raise LifecycleError("no customer with a CLV to learn value tiers from")
        return cls(tuple(float(v) for v in np.quantile(values, [1 - share for share in TIER_SHARES])))

    def tier(self, clv) -> np.ndarray:
        """Each CLV's tier: the smallest top share whose edge it reaches, else ``rest`` (None where missing)."""
        values = np.asarray(clv, dtype=float)
        names = np.array(TIERS, dtype=object)
        reached = np.full(len(values), len(TIER_SHARES))
        for i, edge in reversed(list(enumerate(self.edges))):
            reached = np.where(values >= edge, i, reached)
        return np.where(np.isnan(values), None, names[reached])


def next_order_days(purchases, frequency, recency, T, horizon_days: float) -> np.ndarray:
    """Days from now to the median of each customer's next purchase: the t with P(no purchase within t) = 1/2,
    found on a geometric grid of horizons up to ``horizon_days`` (linear in log t between its points). NaN
    where P(no purchase within ``horizon_days``) is above 1/2."""
    grid = np.geomspace(1.0, horizon_days, WAIT_STEPS)
    silent = purchases.p_no_purchase(grid, frequency, recency, T).reshape(-1, WAIT_STEPS)
    after = (silent > 0.5).sum(axis=1)  # P(no purchase) falls with t: the first grid point at or below 1/2
    days = np.full(len(silent), np.nan)
    found = after < WAIT_STEPS
    rows, at = np.flatnonzero(found), after[found]
    first = at == 0
    days[rows[first]] = 0.5 / (1 - silent[rows[first], 0])  # within the first day: linear from P = 1 at 0
    rows, at = rows[~first], at[~first]
    above, below = silent[rows, at - 1], silent[rows, at]
    share = (above - 0.5) / np.maximum(above - below, 1e-300)
    days[rows] = np.exp(np.log(grid[at - 1]) + share * (np.log(grid[at]) - np.log(grid[at - 1])))
    return days


def activity_status(recency_gaps, frequency, lapsed, p_alive, high_risk, rules: ActivityRules) -> np.ndarray:
    """Each buyer's status (None for prospects, whose gaps are missing), by the first rule that holds:

    - churned: ``lapsed`` (no purchase in the churn window) and more than ``lapsed_after_gaps`` typical gaps since
      the last order, and either more than ``churned_after_gaps`` or a one-time buyer (``frequency`` 0: no rhythm
      of their own to lapse from);
    - lapsed: ``lapsed`` and more than ``lapsed_after_gaps``;
    - active: not ``lapsed``, at most ``active_within_gaps``, with P(alive) at least ``min_p_alive`` and not at
      high churn risk (``high_risk``: the served churn probability in the high band);
    - at risk: the rest (overdue by the window or by their rhythm, doubted by the purchase model, or unlikely to
      order within the churn horizon).
    """
    gaps, quiet = np.asarray(recency_gaps, dtype=float), np.asarray(lapsed, dtype=bool)
    past = quiet & (gaps > rules.lapsed_after_gaps)
    gone = (gaps > rules.churned_after_gaps) | (np.asarray(frequency, dtype=float) == 0)
    active = (~quiet & (gaps <= rules.active_within_gaps) & (np.asarray(p_alive, dtype=float) >= rules.min_p_alive)
              & ~np.asarray(high_risk, dtype=bool))
    status = np.select([past & gone, past, active], ["churned", "lapsed", "active"], default="at risk")
    return np.where(np.isnan(gaps), None, status.astype(object))
