"""Buy-till-you-die models: the purchase models' shared interface, Gamma-Gamma for order value, CLV.

A purchase model (``models.bgnbd``, ``models.mbgnbd``, ``models.pareto_nbd``; by name in
``models.purchase_models``) describes each customer by frequency x (repeat purchases), recency
t_x (age at the last purchase) and age T, in one time unit (days or weeks). While alive, a
customer buys at a Poisson rate ``lambda ~ Gamma(r, alpha)``; the models differ in how customers
drop out. Each gives, per customer: P(alive), expected purchases over any horizon, the probability
of no purchase within a horizon, and its log-likelihood. Fits maximize the likelihood on the
unique (x, t_x, T) rows with their counts as weights, in time scaled to a maximum age of 1 (as
``lifetimes`` does); predictions are computed once per unique row too.

Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV"): order values are ``Gamma(p, nu)`` with
``nu ~ Gamma(q, gamma)``, independent of the purchase process. The expected order value of a
customer with x repeat purchases of mean m shrinks m towards the population mean
``p * gamma / (q - 1)``: ``E[M | x, m] = (q - 1) / (p x + q - 1) * p gamma / (q - 1)
+ p x / (p x + q - 1) * m``. Customers without a repeat purchase (x = 0), and repeat buyers
whose repeat orders were all free (m = 0, which Gamma-Gamma cannot fit), get that formula's
value: the population mean, or the mean shrunk towards 0.

Prediction intervals (docs/models.md): each model also gives the whole distribution of a
customer's purchases in the next t, ``P(X >= k) = P(alive) P(X >= k | alive)``, from the
posterior of their own rates given their history (``FuturePurchases``); Gamma-Gamma turns it into
the distribution of their spend (``FutureSpend``).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Self

import numpy as np
import pandas as pd
from autograd import value_and_grad
from lifetimes import GammaGammaFitter
from scipy.optimize import minimize, minimize_scalar
from scipy.special import gammainc, gammaincinv, gammaln

from features.errors import LifecycleError, NotFittedError

MIN_REPEAT_BUYERS_TO_FIT = 10  # the least one fit of a purchase or spend model accepts (training asks more)
BOUNDARY = (1e-6, 1e6)  # parameters outside are at the edge of what the data identify
MAX_SPEND_CORRELATION = 0.3
# Gamma-Gamma's q where customers' mean order values do not differ (the pooled spend model): a customer's own orders
# then weigh p x / (p x + q - 1), about nothing. Gamma-Gamma serves instead only if twice its log-likelihood gain
# over the pooled model is at least POOLED_LR (the 5 % point of the 50:50 mixture of chi2(0) and chi2(1), q's
# boundary test).
POOLED_Q = 1e5
POOLED_LR = 2.71
_THREADS = min(len(os.sched_getaffinity(0)), 8)
_ROWS_PER_THREAD = 50_000  # below this a thread costs more than it saves
TAIL = 1e-9  # P(X >= k | alive) below this ends a distribution of future purchases
FIRST_BLOCK = 32  # counts in the first block of the tail; each next block doubles, up to 128
MIXTURE_ABOVE = 0.5  # P(spend > 0) above which spend is a mixture over bands of counts (FutureSpend)
BANDS = 8  # of purchase counts in SpendMixture
MOST_STEPS = 60  # of SpendMixture's quantile search
WIDEST_STEP = 2.0  # of that search, in log amount (a factor e^2): Newton's steps, and its steps without a bracket
DIRECT_COUNT = 100_000  # up to this many table cells a quantile counts them all (else a binary search)
STILL_GRADIENT = 1e-5  # a search stopped early inside BOUNDARY is at the maximum if no gradient entry is larger

class FitFailed(LifecycleError):
    """A fit that found no usable maximum (no convergence, or Gamma-Gamma's q <= 1): a penalizer may help."""


# An objective of the optimizer: (log-parameters, x, t_x, T, weights, penalizer) -> (value, gradient).
Objective = Callable[..., tuple[float, np.ndarray]]


class PurchaseModel:
    """The interface of a BTYD purchase model; subclasses give the likelihood and the conditional expressions.

    Subclasses set ``name`` (the configuration's), ``label`` (for people), ``parameters`` (in the
    order of their internal arrays) and ``time_parameters`` (those measured in units of time), and
    implement ``_objective`` and the ``_log_likelihood``, ``_p_alive`` and ``_expected_purchases``
    expressions of the parameter values.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]]
    time_parameters: ClassVar[tuple[str, ...]]
    most: ClassVar[dict[str, float]] = {}  # shape parameters the search holds at a largest value (see the fit)

    def __init__(self, penalizer: float = 0.0):
        self.penalizer = penalizer
        self.params_: dict[str, float] | None = None
        self.log_likelihood_: float | None = None
        self.customers_ = 0

    def fit(self, frequency, recency, T) -> Self:
        """Maximum-likelihood fit; raises LifecycleError on too little data or non-convergence."""
        x, t_x, age = _as_arrays(frequency, recency, T)
        repeaters = int((x > 0).sum())
        if repeaters < MIN_REPEAT_BUYERS_TO_FIT:
            raise LifecycleError(
                f"only {repeaters} repeat buyers; {self.label} needs at least {MIN_REPEAT_BUYERS_TO_FIT}")
        (ux, ut_x, uage), counts, _ = _unique_rows(x, t_x, age)
        scale = 1 / uage.max()
        caps = {self.parameters.index(name): most for name, most in self.most.items()}
        values = _maximize_likelihood(self.label, self._objective(), (ux, ut_x * scale, uage * scale), counts,
                                      self.penalizer, len(self.parameters), caps)
        for name, most in self.most.items():
            if values[self.parameters.index(name)] >= most * (1 - 1e-9):
                warnings.warn(f"{self.label}: {name} held at {most:g}, where customers hardly differ in it "
                              "(the likelihood only flattens beyond)", stacklevel=2)
        self.params_ = {name: value / scale if name in self.time_parameters else value
                        for name, value in zip(self.parameters, values, strict=True)}
        _warn_at_boundary(self.label, self.params_)
        self.log_likelihood_ = float((counts * self.log_likelihood(ux, ut_x, uage)).sum())
        self.customers_ = len(x)
        return self

    def log_likelihood(self, frequency, recency, T) -> np.ndarray:
        """Each customer's log-likelihood at the fitted parameters."""
        return self._log_likelihood(self._values(), *_as_arrays(frequency, recency, T))

    def p_alive(self, frequency, recency, T) -> np.ndarray:
        """Probability that each customer is still alive (will buy again)."""
        return _per_unique(partial(self._p_alive, self._values()), frequency, recency, T)

    def expected_purchases(self, t, frequency, recency, T) -> np.ndarray:
        """Expected purchases in the next ``t`` time units; ``t`` may be a row of horizons (broadcast)."""
        values, horizon = self._values(), np.asarray(t, dtype=float)
        return _per_unique(lambda x, t_x, age: self._expected_purchases(values, horizon, x[:, None], t_x[:, None],
                                                                        age[:, None]),
                           frequency, recency, T, squeeze=np.ndim(t) == 0)

    def p_no_purchase(self, t, frequency, recency, T) -> np.ndarray:
        """Probability of no purchase in the next ``t`` time units (``t`` may be a row of horizons).

        The likelihood of the same history watched ``t`` longer, over its likelihood now: the chance
        of seeing nothing more, whether the customer is gone or alive and silent.
        """
        values, horizon = self._values(), np.asarray(t, dtype=float)

        def silent(x, t_x, age):
            now = self._log_likelihood(values, x, t_x, age)[:, None]
            later = self._log_likelihood(values, x[:, None], t_x[:, None], age[:, None] + horizon)
            return np.exp(np.minimum(later - now, 0.0))  # a ratio <= 1, whatever the last bits of the two terms

        return _per_unique(silent, frequency, recency, T, squeeze=np.ndim(t) == 0)

    def log_parameter_covariance(self, frequency, recency, T) -> np.ndarray:
        """The covariance of the log-parameters (in the order of ``parameters``) from the fit's curvature on the
        data it was fitted to (``frequency``, ``recency``, ``T``): what the data leave unsure about them."""
        x, t_x, age = _as_arrays(frequency, recency, T)
        (ux, ut_x, uage), counts, _ = _unique_rows(x, t_x, age)
        scale = 1 / uage.max()  # the fit's time unit (the covariance of log-parameters does not depend on it)
        point = np.log([self._values()[i] * (scale if name in self.time_parameters else 1)
                        for i, name in enumerate(self.parameters)])
        return _log_parameter_covariance(self._objective(), (ux, ut_x * scale, uage * scale), counts, self.penalizer,
                                         point)

    def future_purchases(self, t: float, frequency, recency, T, p_alive=None) -> FuturePurchases:
        """Each customer's distribution of purchases in the next ``t`` (``p_alive``: theirs, if known already).

        Given alive, it depends on (x, T) alone: it is tabulated once per distinct pair, counts k = 1, 2, ...
        in blocks until every pair's ``P(X >= k | alive)`` is below ``TAIL``. The blocks are the same however
        many customers are scored (a block starts its running products afresh), so one customer alone, a
        chunk and a Spark partition get the same numbers.
        """
        x, t_x, age = _as_arrays(frequency, recency, T)
        if len(x) <= FEW_TO_DEDUPLICATE:
            (ux, uage), row = (x, age), np.arange(len(x))
        else:
            (ux, uage), _, row = _unique_rows(x, age)
        values, blocks, live, first, size = self._values(), [], np.arange(len(ux)), 1, FIRST_BLOCK
        while live.size:
            block = np.zeros((len(ux), size))
            k = np.arange(first, first + size, dtype=float)
            with np.errstate(divide="ignore", under="ignore"):
                block[live] = self._alive_tail(values, float(t), ux[live, None], uage[live, None], k)
            blocks.append(block)
            live = live[block[live, -1] > TAIL]
            first, size = first + size, min(size * 2, 128)
        tail = np.minimum.accumulate(np.clip(np.hstack(blocks), 0.0, 1.0), axis=1)  # no bump from rounding
        alive = self.p_alive(x, t_x, age) if p_alive is None else np.asarray(p_alive, dtype=float)
        return FuturePurchases(alive, tail, row)

    def _values(self) -> tuple[float, ...]:
        if self.params_ is None:
            raise NotFittedError(type(self).__name__)
        return tuple(self.params_[name] for name in self.parameters)

    def _objective(self) -> Objective:
        raise NotImplementedError

    def _log_likelihood(self, params: Sequence[float], x, t_x, T) -> np.ndarray:
        raise NotImplementedError

    def _p_alive(self, params: Sequence[float], x, t_x, T) -> np.ndarray:
        raise NotImplementedError

    def _expected_purchases(self, params: Sequence[float], t, x, t_x, T) -> np.ndarray:
        raise NotImplementedError

    def _alive_tail(self, params: Sequence[float], t: float, x, T, k) -> np.ndarray:
        """P(X >= k | alive) for purchases X in the next t: rows of (x, T) (columns) by a block of consecutive
        counts k >= 1 (a row)."""
        raise NotImplementedError


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

    def second_moment(self) -> np.ndarray:
        """E[X^2] = sum over k of (2k - 1) P(X >= k)."""
        odd = 2 * np.arange(1, self.tail.shape[1] + 1) - 1
        return self.p_alive * (self.tail @ odd)[self.row]



class SpendModel:
    """Gamma-Gamma: expected value of a customer's future orders."""

    def __init__(self):
        self.params_: dict[str, float] | None = None
        self.spend_correlation_: float | None = None
        self.pooled_ = False

    def fit(self, frequency, monetary_value) -> Self:
        """Fit on repeat buyers with a positive mean repeat spend; checks q > 1 and independence.

        Unpenalized, in units of the mean repeat spend (``gamma`` scaled back): the likelihood is then well posed
        wherever q > 1 in any currency, and a penalizer on the parameters' squares would only pull q towards 1 and
        inflate the mean order value (by 78x at 0.1 on a shop of mean 60 and q = 4). Where customers' mean order
        values differ no more than one customer's own orders do (Gamma-Gamma's q runs off to infinity, or its
        likelihood beats the pooled model's by less than ``POOLED_LR`` / 2), the pooled model serves (``pooled_``):
        every order Gamma(p, nu) with the same nu for everyone, Gamma-Gamma's limit q -> infinity, held as
        q = ``POOLED_Q``.
        """
        x, m = _as_arrays(frequency, monetary_value)
        usable = (x > 0) & (m > 0)
        if usable.sum() < MIN_REPEAT_BUYERS_TO_FIT:
            raise LifecycleError(
                f"only {int(usable.sum())} repeat buyers with a positive spend; Gamma-Gamma needs "
                f"{MIN_REPEAT_BUYERS_TO_FIT}")
        x, m = x[usable], m[usable]
        self.spend_correlation_ = float(np.corrcoef(x, m)[0, 1])
        if self.spend_correlation_ > MAX_SPEND_CORRELATION:
            warnings.warn(
                f"frequency and mean spend correlate at {self.spend_correlation_:.2f} (> {MAX_SPEND_CORRELATION}): "
                "Gamma-Gamma assumes they are independent, so its order values are biased", stacklevel=2)
        unit = m.mean()
        (ux, um), counts, _ = _unique_rows(x, m / unit)
        pooled = _fit_pooled(ux, um, counts)
        try:  # Gamma-Gamma's gain in log-likelihood over the pooled model, unpenalized
            p, q, gamma = _maximize_likelihood("Gamma-Gamma", _GAMMA_GAMMA, (ux, um), counts, 0.0, 3)
            fitted = -GammaGammaFitter._negative_log_likelihood(np.log([p, q, gamma]), ux, um, counts, 0.0)
            self.pooled_ = 2 * (fitted * counts.sum() - pooled.log_likelihood) < POOLED_LR or q > POOLED_Q
        except FitFailed:  # not converging: q running off to infinity
            self.pooled_ = True
        if self.pooled_:
            p, q, gamma = pooled.params
            warnings.warn("Gamma-Gamma: customers' mean order values differ no more than one customer's own orders "
                          "do, so a pooled spend model serves: every customer's expected order value is the shop's "
                          "mean order value", stacklevel=2)
        if q <= 1:
            raise FitFailed(f"Gamma-Gamma q = {q:.3f} <= 1: customers' mean order values are so heavy-tailed that "
                            "their population mean is infinite; check the amounts for a customer or an amount that "
                            "dwarfs the rest")
        params = {"p": p, "q": q, "gamma": float(gamma * unit)}
        if not self.pooled_:  # the pooled model's q and gamma are as large as they are by construction
            _warn_at_boundary("Gamma-Gamma", params)
        self.params_ = params
        return self

    @property
    def population_mean(self) -> float:
        """Expected order value of a customer we know nothing about: p gamma / (q - 1)."""
        p, q, gamma = self._params()
        return p * gamma / (q - 1)

    def expected_order_value(self, frequency, monetary_value) -> np.ndarray:
        """E[M | x, m]: the customer's mean repeat spend shrunk towards the population mean."""
        p, q, _ = self._params()
        x, m = _as_arrays(frequency, monetary_value)
        weight = p * x / (p * x + q - 1)
        return (1 - weight) * self.population_mean + weight * m

    def log_parameter_covariance(self, frequency, monetary_value) -> np.ndarray:
        """The covariance of the log-parameters (p, q, gamma) from the fit's curvature on the data it was fitted to."""
        x, m = _as_arrays(frequency, monetary_value)
        usable = (x > 0) & (m > 0)
        unit = m[usable].mean()
        (ux, um), counts, _ = _unique_rows(x[usable], m[usable] / unit)
        p, q, gamma = self._params()
        return _log_parameter_covariance(_GAMMA_GAMMA, (ux, um), counts, 0.0, np.log([p, q, gamma / unit]))

    def future_spend(self, purchases: FuturePurchases, frequency, monetary_value) -> FutureSpend:
        """The distribution of each customer's spend over the horizon of ``purchases`` (see ``FutureSpend``)."""
        p, q, gamma = self._params()
        x, m = _as_arrays(frequency, monetary_value)
        posterior_q, scale = q + p * x, gamma + x * m  # nu | history ~ Gamma(q + p x, gamma + x m)
        mean_x, square_x = purchases.mean(), purchases.second_moment()
        buys = 1 - purchases.cdf(np.zeros(len(x)))
        # Spend / scale given X = k is BetaPrime(p k, q'); its variance needs q' > 2 (2.05 where it is not).
        q1, q2 = posterior_q - 1, np.maximum(posterior_q, 2.05) - 2
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = p * mean_x / q1 / buys
            square = (p * p * square_x + p * mean_x) / (q1 * q2)  # E[(S / scale)^2]
            variance = square / buys - mean ** 2
            shape = mean ** 2 / variance
        spent = scale * p / q1 * mean_x
        likely = np.flatnonzero(buys > MIXTURE_ABOVE)
        mixture = SpendMixture.of(purchases, likely, p, posterior_q[likely], scale[likely]) if likely.size else None
        return FutureSpend(buys, shape, scale * variance / mean, spent, scale ** 2 * square - spent ** 2, mixture)

    def _params(self) -> tuple[float, float, float]:
        if self.params_ is None:
            raise NotFittedError("SpendModel")
        return self.params_["p"], self.params_["q"], self.params_["gamma"]


_GAMMA_GAMMA = value_and_grad(GammaGammaFitter._negative_log_likelihood)


@dataclass(frozen=True)
class _Pooled:
    params: tuple[float, float, float]  # as Gamma-Gamma's (p, POOLED_Q, gamma), with the same mean order value
    log_likelihood: float


def _fit_pooled(x, m, weights) -> _Pooled:
    """The pooled spend model, every order ~ Gamma(p, nu) with one nu, by maximum likelihood on the repeat buyers'
    means (x m ~ Gamma(p x, nu)): nu = p sum(x) / sum(x m) at each p, p by a bounded search in log p."""
    total, spent = weights @ x, weights @ (x * m)

    def log_likelihood(p: float) -> float:
        nu = p * total / spent
        return float(weights @ (p * x * np.log(nu) + (p * x - 1) * np.log(m) + p * x * np.log(x) - nu * x * m
                                - gammaln(p * x)))

    found = minimize_scalar(lambda log_p: -log_likelihood(np.exp(log_p)), bounds=(-10, 10), method="bounded")
    p = float(np.exp(found.x))
    return _Pooled((p, POOLED_Q, (POOLED_Q - 1) * spent / (p * total)), log_likelihood(p))


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
    mean: np.ndarray  # E[S] = E[X] E[order value]
    variance: np.ndarray  # Var[S], of the mixture itself
    mixture: SpendMixture | None = None

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


def monthly_rate(annual_rate: float) -> float:
    """The monthly discount rate equivalent to an annual one."""
    return (1 + annual_rate) ** (1 / 12) - 1


def clv(purchases: PurchaseModel, spend: SpendModel, frequency, recency, T, monetary_value,
        months: int, monthly_discount: float, month_length: float) -> np.ndarray:
    """Discounted expected cash flow over ``months`` months, in monthly steps.

    ``CLV = sum_k E[M] (E[X(k L)] - E[X((k - 1) L)]) / (1 + d)^k`` for k = 1..months, with the
    month length L in the model's time unit (days: 365.25 / 12; lifetimes uses 4.345 weeks) and
    the monthly discount rate d. All months of all customers are one vectorised evaluation.
    """
    cumulative = purchases.expected_purchases(np.arange(1, months + 1) * month_length, frequency, recency, T)
    return spend.expected_order_value(frequency, monetary_value) * discounted_purchases(cumulative, monthly_discount)


def discounted_purchases(cumulative: np.ndarray, monthly_discount: float) -> np.ndarray:
    """Per row, ``sum_k (E[X(k L)] - E[X((k - 1) L)]) / (1 + d)^k`` from the expected purchases by the end of
    each month k (``cumulative``, one column per month)."""
    per_month = np.diff(cumulative, axis=1, prepend=0.0)
    return per_month @ (1 + monthly_discount) ** -np.arange(1, cumulative.shape[1] + 1)


def _maximize_likelihood(model: str, objective: Objective, columns: tuple[np.ndarray, ...], weights: np.ndarray,
                         penalizer: float, size: int, caps: dict[int, float] | None = None) -> list[float]:
    """BFGS from log-parameters 0.1 to a tolerance of 1e-7, as lifetimes fits; the parameters, exponentiated.

    ``caps`` (parameter index -> largest value): a search that goes beyond one is stopped and finished by
    L-BFGS-B with the parameter bounded there (where the likelihood only flattens and each step costs more).

    ``objective(log_params, *columns, weights, penalizer)`` is -sum(w ll) / sum(w) + penalty with its
    gradient. Large inputs are split into chunks evaluated in parallel threads (numpy and scipy
    release the GIL): the objective is exactly the mean of the chunks' objectives weighted by their
    share of the weights. No Hessian afterwards (lifetimes computes one for standard errors the
    service does not use; on large data it costs as much as the search).
    """
    pieces = max(1, min(_THREADS, len(weights) // _ROWS_PER_THREAD))
    chunks = list(zip(*(np.array_split(c, pieces) for c in (*columns, weights)), strict=True))
    shares = [chunk[-1].sum() / weights.sum() for chunk in chunks]

    def part(log_params: np.ndarray, chunk: tuple, share: float):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # the search probes extreme values
            value, gradient = objective(log_params, *chunk, penalizer)
        return share * value, share * gradient

    with ThreadPoolExecutor(pieces) as pool:
        def total(log_params: np.ndarray):
            values, gradients = zip(*pool.map(partial(part, log_params), chunks, shares), strict=True)
            return sum(values), sum(gradients)

        limit = np.full(size, np.inf)
        for index, most in (caps or {}).items():
            limit[index] = np.log(most)

        def beyond_a_cap(intermediate_result) -> None:
            if (intermediate_result.x > limit).any():
                raise StopIteration

        result = minimize(total, jac=True, x0=np.full(size, 0.1), tol=1e-7, callback=beyond_a_cap if caps else None)
        if (result.x > limit).any():  # on to the maximum with the capped parameters held at most at their caps
            result = minimize(total, jac=True, x0=np.minimum(result.x, limit), method="L-BFGS-B", tol=1e-10,
                              bounds=[(None, None if np.isinf(top) else top) for top in limit])
    # BFGS also stops on "precision loss" when its line search cannot improve on rounding noise: at the
    # maximum if the gradient is that small too (scipy 1.17 stops so on a Gamma-Gamma fit at 2e-7), unless
    # the parameters are drifting off to an edge, where the likelihood flattens out (a penalizer helps).
    inside = np.all((BOUNDARY[0] < np.exp(result.x)) & (np.exp(result.x) < BOUNDARY[1]))
    if not (result.success or (np.abs(result.jac).max() < STILL_GRADIENT and inside)):
        raise FitFailed(f"{model} did not converge: {result.message}")
    return [float(v) for v in np.exp(result.x)]


FEW_TO_DEDUPLICATE = 1000  # rows up to which finding the distinct ones would cost more than it saves


def holding(model, params: dict[str, float]):
    """A copy of a fitted model holding other parameter values."""
    twin = copy.copy(model)
    twin.params_ = params
    return twin


def _log_parameter_covariance(objective: Objective, columns: tuple[np.ndarray, ...], weights: np.ndarray,
                              penalizer: float, point: np.ndarray) -> np.ndarray:
    """H^-1, H the Hessian of the total negative log-likelihood in log-parameters at the maximum ``point``
    (central differences of the objective's gradient; see ``_maximize_likelihood``). Directions the data do
    not identify (eigenvalues ~0) get a large but finite variance."""
    step = 1e-4

    def gradient(at: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return objective(at, *columns, weights, penalizer)[1]

    hessian = np.column_stack([(gradient(point + h) - gradient(point - h)) / (2 * step)
                               for h in step * np.eye(len(point))]) * weights.sum()
    values, vectors = np.linalg.eigh((hessian + hessian.T) / 2)
    return (vectors / np.maximum(values, 1e-9 * values.max())) @ vectors.T


def _as_arrays(*columns) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=float) for c in columns]
    if any(a.shape != arrays[0].shape for a in arrays) or any(np.isnan(a).any() for a in arrays):
        raise LifecycleError("BTYD inputs must be equally long and free of missing values")
    return arrays


def _unique_rows(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The distinct rows of the given columns (sorted), how often each occurs, and each row's index.

    Rows are hashed to 64 bits and the hashes factorized, many times faster than the sort behind
    ``np.unique(axis=0)``; every row is then checked against its representative, and a hash
    collision (never seen, but possible) falls back to the exact sort. The distinct rows come out
    sorted because lifetimes' likelihood evaluates ~1.5x faster on sorted input.
    """
    hashes = pd.util.hash_pandas_object(pd.DataFrame(dict(enumerate(columns))), index=False).to_numpy()
    inverse, _ = pd.factorize(hashes)
    first = np.zeros(inverse.max() + 1, dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(inverse))[::-1]  # the first row of each distinct hash
    levels = [c[first] for c in columns]
    if not all(np.array_equal(level[inverse], c) for level, c in zip(levels, columns, strict=True)):
        unique, inverse, counts = np.unique(np.column_stack(columns), axis=0, return_inverse=True, return_counts=True)
        return list(unique.T), counts, inverse.ravel()
    order = np.lexsort(levels[::-1])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    inverse = rank[inverse]
    return [level[order] for level in levels], np.bincount(inverse), inverse


def _per_unique(function, *columns, squeeze: bool = True) -> np.ndarray:
    """Evaluate ``function`` once per distinct (frequency, recency, T) row and spread the result back
    (a few rows go straight through: finding the distinct ones would cost more than it saves)."""
    arrays = _as_arrays(*columns)
    if len(arrays[0]) <= FEW_TO_DEDUPLICATE:
        unique, inverse = arrays, slice(None)
    else:
        unique, _, inverse = _unique_rows(*arrays)
    values = np.asarray(function(*unique))
    if squeeze and values.ndim == 2:
        values = values[:, 0]
    return values[inverse]


def _warn_at_boundary(model: str, params: dict[str, float]) -> None:
    low, high = BOUNDARY
    edges = {k: v for k, v in params.items() if not low < v < high}
    if edges:
        shown = ", ".join(f"{k} ({v:.3g})" for k, v in edges.items())
        warnings.warn(f"{model}: {shown} at the edge of what the data identify (read as about 0 or very large, "
                      "not as estimates)", stacklevel=3)
