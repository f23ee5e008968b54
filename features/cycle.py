"""The shop's purchase cycle, and the churn horizon that fits it.

Churn is "no order in the next h days" and a customer is lapsed after h days without one, so h must
cover the time a customer who is still there usually takes to order again: 90 days call every
customer of a shop that sells once a year a churner. With ``churn_horizon_days = "auto"`` (the
default) h is derived from the order log:

- the **purchase cycle** is the ``CYCLE_QUANTILE`` (75th percentile) of the gaps between repeat
  buyers' consecutive purchase days, up to the day training ends;
- h is that, rounded to the nearest ``STEP`` (30) days, within [``SHORTEST``, ``LONGEST``] = [30, 365];
- and at most a third of the history (rounded down to 30 days; at least 30), so that the out-of-time
  protocol, which needs more than two horizons, fits with room to spare. A history that caps h below
  the cycle says so: most customers will not order within h whoever they are.

CDNOW's 75th-percentile gap is 94 days: h = 90, the value it always had. A configured horizon
under half the cycle gets a one-line warning (``PurchaseCycle.warning``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from features.build import orders_sql
from features.sources import Dataset

CYCLE_QUANTILE = 0.75
MOST_CUSTOMERS = 250_000  # the cycle is measured on about this many customers at most (``purchase_cycle``)
STEP, SHORTEST, LONGEST = 30, 30, 365
HISTORY_SHARE = 3  # the horizon is at most the history over this
FALLBACK = 90  # the horizon of a shop without repeat buyers, where no cycle can be seen


@dataclass(frozen=True)
class PurchaseCycle:
    """The gaps between repeat buyers' purchase days up to a day, and the history they come from."""

    gap_days: float | None  # the CYCLE_QUANTILE gap; None without any repeat purchase
    gaps: int  # the gaps it was measured on
    history_days: int
    sampled: bool = False  # measured on a sample of the customers (a large shop)

    @property
    def churn_horizon(self) -> int:
        """The churn horizon that fits the cycle (see the module's docstring)."""
        cap = max(SHORTEST, self.history_days // HISTORY_SHARE // STEP * STEP)
        fits = FALLBACK if self.gap_days is None else STEP * round(self.gap_days / STEP)
        return min(max(SHORTEST, min(fits, LONGEST)), cap)

    def describe(self, horizon: int) -> str:
        """Where ``horizon`` (this cycle's, or a configured one) comes from, in a line."""
        if self.gap_days is None:
            return f"{horizon} days (no repeat purchase yet to measure the purchase cycle)"
        among = " of a sample of customers" if self.sampled else ""
        cycle = (f"the purchase cycle (75 % of {self.gaps:,} gaps between repeat purchases{among} are at most "
                 f"{self.gap_days:.0f} days)")
        if horizon != self.churn_horizon:
            return f"{horizon} days, as configured; {cycle} would give {self.churn_horizon}"
        if horizon < STEP * round(self.gap_days / STEP):
            return (f"{horizon} days, capped at a third of the {self.history_days}-day history: "
                    f"{cycle} is longer, so most customers will not order within it whoever they are")
        return f"{horizon} days, from {cycle}"

    def warning(self, configured: int) -> str | None:
        """One line when a configured horizon is under half the purchase cycle, else None."""
        if self.gap_days is None or configured >= self.gap_days / 2:
            return None
        return (f"churn_horizon_days = {configured} is far shorter than the shop's purchase cycle (75 % of gaps "
                f"between repeat purchases are at most {self.gap_days:.0f} days): most customers who are still "
                f"there will look like churners; set it to \"auto\" or about {self.churn_horizon}")


def purchase_cycle(data: Dataset, as_of: date) -> PurchaseCycle:
    """The shop's purchase cycle from its valid orders on or before ``as_of``.

    On a shop of more than ``MOST_CUSTOMERS`` customers, from the orders of about that many, drawn by a hash of the
    id (the same customers every time): the quantile of a few hundred thousand gaps is within a day of everyone's,
    and the horizon is rounded to 30 days; sorting every customer's purchase days cost as much as a third of the
    whole feature build (10M orders: 3 s of 7.5 s).
    """
    orders = orders_sql(as_of)
    customers, history = data.con.execute(
        f"SELECT approx_count_distinct(customer_id), DATE '{as_of}' - min(day) + 1 FROM ({orders})").fetchall()[0]
    share = min(1.0, MOST_CUSTOMERS / max(customers, 1))
    sample = "" if share == 1 else f"WHERE hash(customer_id) < {int(share * 2**64)}::UBIGINT"
    gap, gaps = data.con.execute(
        f"WITH days AS (SELECT DISTINCT customer_id, day FROM ({orders}) {sample}), "
        "gaps AS (SELECT day - lag(day) OVER (PARTITION BY customer_id ORDER BY day) AS gap FROM days) "
        f"SELECT quantile_cont(gap, {CYCLE_QUANTILE}), count(gap) FROM gaps").fetchall()[0]
    return PurchaseCycle(None if gap is None else float(gap), int(gaps), int(history or 0), share < 1)
