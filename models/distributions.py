"""Customers' distributions of future purchases and spend: one API for both.

Each gives, per customer, ``mean()``, ``variance()``, ``quantile(level)``, ``cdf(x)`` (P(X <= x))
and ``below(x)`` (P(X < x)). ``FuturePurchases`` comes from a purchase model
(``PurchaseModel.future_purchases``), ``FutureSpend`` from Gamma-Gamma on top of it
(``SpendModel.future_spend``); docs/models.md derives and measures both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammainc, gammaincinv, gammaln

MIXTURE_ABOVE = 0.5  # P(spend > 0) above which spend is a mixture over bands of counts (FutureSpend)
BANDS = 8  # of purchase counts in SpendMixture
MOST_STEPS = 60  # of SpendMixture's quantile search
WIDEST_STEP = 2.0  # of that search, in log amount (a factor e^2): Newton's steps, and its steps without a bracket
DIRECT_COUNT = 100_000  # up to this many table cells a quantile counts them all (else a binary search)


@dataclass
class FuturePurchases:
    """Customers' distributions of purchases X in a horizon: ``P(X >= k) = p_alive * tail[row, k - 1]``.

    ``tail`` holds ``P(X >= k | alive)``, k = 1, 2, ..., for each distinct (x, T) (0 where negligible);
    ``row`` is each customer's row of it.
    """

    p_alive: np.ndarray
    tail: np.ndarray
    row: np.ndarray

    def quantile(self, level: float) -> np.ndarray:
        """The smallest m with P(X <= m) >= level, per customer: the count of k with p_alive P(X >= k | alive)
        > 1 - level (for many customers a binary search along each one's decreasing tail)."""
        with np.errstate(divide="ignore"):
            threshold = (1 - level) / self.p_alive
        if len(self.row) * self.tail.shape[1] <= DIRECT_COUNT:  # a few customers: count at once
            return (self.tail[self.row] > threshold[:, None]).sum(axis=1).astype(float)
        low, high = np.zeros(len(self.row), dtype=np.int64), np.full(len(self.row), self.tail.shape[1])
        while (open_ := low < high).any():
            middle = (low + high) // 2
            above = open_ & (self.tail[self.row, np.minimum(middle, self.tail.shape[1] - 1)] > threshold)
            low = np.where(above, middle + 1, low)
            high = np.where(open_ & ~above, middle, high)
        return low.astype(float)

    def cdf(self, counts) -> np.ndarray:
        """P(X <= counts) per customer (counts >= 0)."""
        k = np.asarray(counts, dtype=np.int64) + 1
        inside = k <= self.tail.shape[1]
        tail = np.where(inside, self.tail[self.row, np.minimum(k, self.tail.shape[1]) - 1], 0.0)
        return 1 - self.p_alive * tail

    def below(self, counts) -> np.ndarray:
        """P(X < counts) per customer."""
        counts = np.asarray(counts, dtype=float)
        return np.where(counts > 0, self.cdf(np.maximum(counts - 1, 0)), 0.0)

    def mean(self) -> np.ndarray:
        """E[X] = sum over k of P(X >= k)."""
        return self.p_alive * self.tail.sum(axis=1)[self.row]

    def variance(self) -> np.ndarray:
        """Var[X] = E[X^2] - E[X]^2."""
        return self.second_moment() - self.mean() ** 2

    def second_moment(self) -> np.ndarray:
        """E[X^2] = sum over k of (2k - 1) P(X >= k) (Gamma-Gamma's spend needs it as such)."""
        odd = 2 * np.arange(1, self.tail.shape[1] + 1) - 1
        return self.p_alive * (self.tail @ odd)[self.row]


@dataclass
class SpendMixture:
    """Spend given X >= 1 as a mixture of Gammas, one per band of purchase counts, for some customers
    (``customers``, positions in the batch).

    Given X >= 1 the count distribution depends on (x, T) alone; it is cut into ``BANDS`` bands of consecutive
    counts of about equal probability, and spend given each band (a mixture of BetaPrime(p k, q') over its k,
    times gamma + x m) is the Gamma with its mean and variance. One Gamma for all counts (``FutureSpend``'s)
    cannot follow a count that may be ~50 or may be 3 (a frequent buyer who may stay or leave early); within a
    band the counts are close. Columns: the bands; ``weight`` their probabilities, ``shape`` and ``scale``
    their Gammas' (in money).
    """

    customers: np.ndarray
    weight: np.ndarray
    shape: np.ndarray
    scale: np.ndarray
    log_gamma: np.ndarray  # log Gamma(shape), for the densities

    @classmethod
    def of(cls, purchases: FuturePurchases, customers: np.ndarray, p: float, posterior_q: np.ndarray,
           scale: np.ndarray) -> SpendMixture:
        rows, row = np.unique(purchases.row[customers], return_inverse=True)  # the count table's, per customer
        tail = purchases.tail[rows]
        weight = -np.diff(tail, axis=1, append=0.0) / tail[:, :1]  # P(X = k | X >= 1), k = 1, 2, ...
        band = np.minimum(((np.cumsum(weight, axis=1) - weight / 2) * BANDS).astype(int), BANDS - 1)
        cell = (band + BANDS * np.arange(len(rows))[:, None]).ravel()
        k = np.arange(1.0, tail.shape[1] + 1)

        def per_band(values: np.ndarray) -> np.ndarray:
            return np.bincount(cell, (weight * values).ravel(), minlength=BANDS * len(rows)).reshape(-1, BANDS)[row]

        mass = per_band(np.ones_like(k))
        with np.errstate(divide="ignore", invalid="ignore"):
            count, square = per_band(k) / mass, per_band(k * k) / mass  # E[X | band], E[X^2 | band]
            # spend / (gamma + x m) given the band: its mean and variance, as FutureSpend's given X >= 1
            q1, q2 = posterior_q[:, None] - 1, np.maximum(posterior_q[:, None], 2.05) - 2
            mean = p * count / q1
            variance = (p * p * square + p * count) / (q1 * q2) - mean ** 2
        used = mass > 0
        shape = np.where(used, mean ** 2 / variance, 1.0)
        return cls(customers, mass, shape, np.where(used, scale[:, None] * variance / mean, 1.0), gammaln(shape))

    def cdf(self, amount: np.ndarray) -> np.ndarray:
        """``P(S <= amount | X >= 1)`` for the mixture's customers (``amount`` one per customer)."""
        return self._cdf_and_density(amount, slice(None), density=False)[0]

    def _cdf_and_density(self, amount: np.ndarray, among, density: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``P(S <= amount | X >= 1)`` and (if ``density``) its density in log amount, for the customers ``among``
        the mixture's (``amount`` one per customer there)."""
        weight, shape, scale = self.weight[among], self.shape[among], self.scale[among]
        at = amount[:, None] / scale
        probability = (weight * gammainc(shape, at)).sum(axis=1)
        if not density:
            return probability, np.empty(0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            per_band = weight * np.exp(shape * np.log(at) - at - self.log_gamma[among])  # the Gamma's, times the amount
        return probability, np.nan_to_num(per_band).sum(axis=1)

    def quantile(self, level: np.ndarray, guess: np.ndarray) -> np.ndarray:
        """Per customer, the amount with ``P(S <= amount | X >= 1) = level`` (0 < level < 1), from ``guess``:
        Newton's method in its log, kept inside a bracket that each step narrows (bisection where Newton leaves
        it), to 1e-9 in probability."""
        log_amount = np.log(np.where(np.isfinite(guess) & (guess > 0), guess, 1.0))
        low, high = np.full(len(level), -np.inf), np.full(len(level), np.inf)
        going = np.arange(len(level))
        for _ in range(MOST_STEPS):
            probability, density = self._cdf_and_density(np.exp(log_amount[going]), going)
            error = probability - level[going]
            low[going] = np.where(error < 0, log_amount[going], low[going])
            high[going] = np.where(error >= 0, log_amount[going], high[going])
            with np.errstate(divide="ignore", invalid="ignore"):  # no density far out in a tail: the widest step
                step = log_amount[going] - np.clip(error / density, -WIDEST_STEP, WIDEST_STEP)
            lo, hi = low[going], high[going]
            inside = (step > lo) & (step < hi)
            fallback = np.where(np.isfinite(lo) & np.isfinite(hi), (lo + hi) / 2,
                                np.where(error < 0, lo + WIDEST_STEP, hi - WIDEST_STEP))
            log_amount[going] = np.where(inside, step, fallback)
            going = going[(np.abs(error) > 1e-9) & (hi - lo > 1e-12)]
            if not going.size:
                break
        return np.exp(log_amount)


@dataclass
class FutureSpend:
    """Customers' distributions of spend S over a horizon: nothing with probability ``1 - buys``, else
    (approximately) Gamma(``shape``, ``scale``), or, where a purchase is likely, a mixture of Gammas (``mixture``).

    Given k purchases, Gamma-Gamma makes S / (gamma + x m) a BetaPrime(p k, q + p x) (the order values'
    rate has its posterior given the history); the mixture over k given X >= 1 is matched by the Gamma
    with the same mean and variance. That Gamma's lower tail is too thin where the count given X >= 1 is
    wide (a frequent buyer who may stay or leave early), so where ``buys`` exceeds ``MIXTURE_ABOVE`` (every
    customer whose central interval, at any level, can exclude 0) ``SpendMixture`` serves instead
    (docs/models.md measures both).
    """

    buys: np.ndarray
    shape: np.ndarray
    scale: np.ndarray
    _mean: np.ndarray  # E[S] = E[X] E[order value]
    _variance: np.ndarray  # Var[S], of the mixture itself
    mixture: SpendMixture | None = None

    def mean(self) -> np.ndarray:
        """E[S] per customer."""
        return self._mean

    def variance(self) -> np.ndarray:
        """Var[S] per customer (of the spend's distribution itself, not of the Gamma that approximates it)."""
        return self._variance

    def quantile(self, level: float) -> np.ndarray:
        """The smallest s with P(S <= s) >= level, per customer."""
        nothing = 1 - self.buys
        with np.errstate(divide="ignore", invalid="ignore"):
            given = (level - nothing) / self.buys  # the level given X >= 1
            spent = self.scale * gammaincinv(self.shape, given)
        if self.mixture is not None and 0 < level < 1:
            likely = self.mixture.customers
            spent[likely] = self.mixture.quantile(np.clip(given[likely], 1e-12, 1 - 1e-12), spent[likely])
        return np.where(level <= nothing, 0.0, spent)

    def cdf(self, amount) -> np.ndarray:
        """P(S <= amount) per customer (amount >= 0)."""
        amount = np.broadcast_to(np.asarray(amount, dtype=float), self.buys.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            spent = np.where(self.buys > 0, gammainc(self.shape, amount / self.scale), 1.0)
        if self.mixture is not None:
            likely = self.mixture.customers
            spent[likely] = self.mixture.cdf(amount[likely])
        return 1 - self.buys + self.buys * spent

    def below(self, amount) -> np.ndarray:
        """P(S < amount) per customer: continuous but for the mass at 0."""
        amount = np.asarray(amount, dtype=float)
        return np.where(amount > 0, self.cdf(amount), 0.0)
