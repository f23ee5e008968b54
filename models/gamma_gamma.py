"""Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV"): the expected value of a customer's future orders.

Order values are ``Gamma(p, nu)`` with ``nu ~ Gamma(q, gamma)``, independent of the purchase
process. The expected order value of a customer with x repeat purchases of mean m shrinks m
towards the population mean ``p * gamma / (q - 1)``: ``E[M | x, m] = (q - 1) / (p x + q - 1) * p
gamma / (q - 1) + p x / (p x + q - 1) * m``. Customers without a repeat purchase (x = 0), and
repeat buyers whose repeat orders were all free (m = 0, which Gamma-Gamma cannot fit), get that
formula's value: the population mean, or the mean shrunk towards 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Self

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import digamma, gammaln

from features.errors import LifecycleError, NotFittedError
from models.distributions import MIXTURE_ABOVE, FuturePurchases, FutureSpend, SpendMixture
from models.likelihood import (
    MIN_REPEAT_BUYERS_TO_FIT,
    FitFailed,
    log_parameter_covariance,
    maximize_likelihood,
    warn_at_boundary,
)
from models.rows import as_arrays, unique_rows

MAX_SPEND_CORRELATION = 0.3
# Gamma-Gamma's q where customers' mean order values do not differ (the pooled spend model): a customer's own orders
# then weigh p x / (p x + q - 1), about nothing. Gamma-Gamma serves instead only if twice its log-likelihood gain
# over the pooled model is at least POOLED_LR (the 5 % point of the 50:50 mixture of chi2(0) and chi2(1), q's
# boundary test).
POOLED_Q = 1e5
POOLED_LR = 2.71
# Digits of the parameters kept: the amounts' means come from parallel sums whose last bit varies from run to run,
# and the fit carries that noise into the parameters' last digits (1e-13 apart on CDNOW), then into every
# customer's CLV and the trees fitted on it (a learned CLV 7.5 apart). The fit stops at a tolerance of 1e-7: the
# digits beyond 10 are that noise.
DIGITS = 10


class SpendModel:
    """Gamma-Gamma: expected value of a customer's future orders."""

    def __init__(self):
        self.params_: dict[str, float] | None = None
        self.spend_correlation_: float | None = None
        self.pooled_ = False

    def fit(self, frequency, monetary_value, weights=None) -> Self:
        """Fit on repeat buyers with a positive mean repeat spend; checks q > 1 and independence. ``weights``: how
        many customers each row stands for (one each by default).

        Unpenalized, in units of the mean repeat spend (``gamma`` scaled back): the likelihood is then well posed
        wherever q > 1 in any currency, and a penalizer on the parameters' squares would only pull q towards 1 and
        inflate the mean order value (by 78x at 0.1 on a shop of mean 60 and q = 4). Where customers' mean order
        values differ no more than one customer's own orders do (Gamma-Gamma's q runs off to infinity, or its
        likelihood beats the pooled model's by less than ``POOLED_LR`` / 2), the pooled model serves (``pooled_``):
        every order Gamma(p, nu) with the same nu for everyone, Gamma-Gamma's limit q -> infinity, held as
        q = ``POOLED_Q``.
        """
        x, m, w = _usable(frequency, monetary_value, weights)
        if w.sum() < MIN_REPEAT_BUYERS_TO_FIT:
            raise LifecycleError(
                f"only {int(w.sum())} repeat buyers with a positive spend; Gamma-Gamma needs "
                f"{MIN_REPEAT_BUYERS_TO_FIT}")
        self.spend_correlation_ = float(np.cov(x, m, aweights=w)[0, 1] / np.sqrt(
            np.cov(x, aweights=w) * np.cov(m, aweights=w)))
        if self.spend_correlation_ > MAX_SPEND_CORRELATION:
            warnings.warn(
                f"frequency and mean spend correlate at {self.spend_correlation_:.2f} (> {MAX_SPEND_CORRELATION}): "
                "Gamma-Gamma assumes they are independent, so its order values are biased", stacklevel=2)
        unit = np.average(m, weights=w)
        (ux, um), counts, _ = unique_rows(x, m / unit, weights=w)
        pooled = _fit_pooled(ux, um, counts)
        try:  # Gamma-Gamma's gain in log-likelihood over the pooled model, unpenalized
            p, q, gamma = maximize_likelihood("Gamma-Gamma", _value_and_gradient, (ux, um), counts, 0.0, 3)
            fitted = -_value_and_gradient(np.log([p, q, gamma]), ux, um, counts, 0.0)[0]
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
        params = {name: float(f"{value:.{DIGITS}g}") for name, value in (("p", p), ("q", q), ("gamma", gamma * unit))}
        if not self.pooled_:  # the pooled model's q and gamma are as large as they are by construction
            warn_at_boundary("Gamma-Gamma", params)
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
        x, m = as_arrays(frequency, monetary_value)
        weight = p * x / (p * x + q - 1)
        return (1 - weight) * self.population_mean + weight * m

    def log_parameter_covariance(self, frequency, monetary_value, weights=None) -> np.ndarray:
        """The covariance of the log-parameters (p, q, gamma) from the fit's curvature on the data it was fitted to
        (``weights`` as in ``fit``)."""
        x, m, w = _usable(frequency, monetary_value, weights)
        unit = np.average(m, weights=w)
        (ux, um), counts, _ = unique_rows(x, m / unit, weights=w)
        p, q, gamma = self._params()
        return log_parameter_covariance(_value_and_gradient, (ux, um), counts, 0.0, np.log([p, q, gamma / unit]))

    def future_spend(self, purchases: FuturePurchases, frequency, monetary_value) -> FutureSpend:
        """The distribution of each customer's spend over the horizon of ``purchases`` (see ``FutureSpend``)."""
        p, q, gamma = self._params()
        x, m = as_arrays(frequency, monetary_value)
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


def _value_and_gradient(log_params, x, m, weights, penalizer) -> tuple[float, np.ndarray]:
    """lifetimes' Gamma-Gamma objective (``GammaGammaFitter._negative_log_likelihood``: the same value, to the last
    bit) and its gradient in the log-parameters, written out (autograd's tracing cost several times the arithmetic).

    With ``P = p x + q``, each row's log-likelihood has derivatives ``x (psi(P) - psi(p x) + log m + log x -
    log(x m + gamma))`` in p, ``psi(P) - psi(q) + log gamma - log(x m + gamma)`` in q and ``q / gamma - P / (x m +
    gamma)`` in gamma.
    """
    params = np.exp(log_params)
    p, q, v = params
    px = p * x
    shape, log_m, log_x, spent = px + q, np.log(m), np.log(x), np.log(x * m + v)  # lifetimes' terms, as it forms them
    values = (gammaln(shape) - gammaln(px) - gammaln(q) + q * np.log(v) + (px - 1) * log_m + px * log_x
              - shape * spent) * weights
    value = -values.sum() / weights.sum() + penalizer * sum(params ** 2)
    by_row = np.stack([x * (digamma(shape) - digamma(px) + log_m + log_x - spent),
                       digamma(shape) - digamma(q) + np.log(v) - spent,
                       q / v - shape / (x * m + v)])
    return value, params * (-(by_row @ weights) / weights.sum() + 2 * penalizer * params)


@dataclass(frozen=True)
class _Pooled:
    params: tuple[float, float, float]  # as Gamma-Gamma's (p, POOLED_Q, gamma), with the same mean order value
    log_likelihood: float


def _usable(frequency, monetary_value, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows Gamma-Gamma is fitted on (repeat buyers with a positive mean repeat spend) and their weights."""
    x, m = as_arrays(frequency, monetary_value)
    w = np.ones_like(x) if weights is None else as_arrays(weights, x)[0]
    usable = (x > 0) & (m > 0)
    return x[usable], m[usable], w[usable]


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

