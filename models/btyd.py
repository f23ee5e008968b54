"""Buy-till-you-die purchase models: their shared interface (an ABC).

A purchase model (``models.bgnbd``, ``models.mbgnbd``, ``models.pareto_nbd``; by name in
``models.purchase_models``) describes each customer by frequency x (repeat purchases), recency
t_x (age at the last purchase) and age T, in one time unit (days or weeks). While alive, a
customer buys at a Poisson rate ``lambda ~ Gamma(r, alpha)``; the models differ in how customers
drop out. Each gives, per customer: P(alive), expected purchases over any horizon, the probability
of no purchase within a horizon, and its log-likelihood. Fits maximize the likelihood
(``models.likelihood``) on the unique (x, t_x, T) rows with their counts as weights
(``models.rows``), in time scaled to a maximum age of 1 (as ``lifetimes`` does); predictions are
computed once per unique row too.

Prediction intervals (docs/models.md): each model also gives the whole distribution of a
customer's purchases in the next t, ``P(X >= k) = P(alive) P(X >= k | alive)``, from the
posterior of their own rates given their history (``models.distributions.FuturePurchases``);
Gamma-Gamma (``models.gamma_gamma``) turns it into the distribution of their spend.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import partial
from typing import ClassVar, Self

import numpy as np

from features.errors import LifecycleError, NotFittedError
from models.distributions import FuturePurchases
from models.likelihood import (
    MIN_REPEAT_BUYERS_TO_FIT,
    Objective,
    log_parameter_covariance,
    maximize_likelihood,
    warn_at_boundary,
)
from models.rows import FEW_TO_DEDUPLICATE, as_arrays, per_unique, unique_rows

TAIL = 1e-9  # P(X >= k | alive) below this ends a distribution of future purchases
FIRST_BLOCK = 32  # counts in the first block of the tail; each next block doubles, up to 128


class PurchaseModel(ABC):
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

    def fit(self, frequency, recency, T, weights=None) -> Self:
        """Maximum-likelihood fit; raises LifecycleError on too little data or non-convergence.

        ``weights``: how many customers each row stands for (distinct rows with their counts, aggregated where the
        customers are); one each by default.
        """
        x, t_x, age = as_arrays(frequency, recency, T)
        weights = np.ones_like(x) if weights is None else as_arrays(weights, x)[0]
        repeaters = int(weights[x > 0].sum())
        if repeaters < MIN_REPEAT_BUYERS_TO_FIT:
            raise LifecycleError(
                f"only {repeaters} repeat buyers; {self.label} needs at least {MIN_REPEAT_BUYERS_TO_FIT}")
        (ux, ut_x, uage), counts, _ = unique_rows(x, t_x, age, weights=weights)
        scale = 1 / uage.max()
        caps = {self.parameters.index(name): most for name, most in self.most.items()}
        values = maximize_likelihood(self.label, self._objective(), (ux, ut_x * scale, uage * scale), counts,
                                      self.penalizer, len(self.parameters), caps)
        for name, most in self.most.items():
            if values[self.parameters.index(name)] >= most * (1 - 1e-9):
                warnings.warn(f"{self.label}: {name} held at {most:g}, where customers hardly differ in it "
                              "(the likelihood only flattens beyond)", stacklevel=2)
        self.params_ = {name: value / scale if name in self.time_parameters else value
                        for name, value in zip(self.parameters, values, strict=True)}
        warn_at_boundary(self.label, self.params_)
        self.log_likelihood_ = float((counts * self.log_likelihood(ux, ut_x, uage)).sum())
        self.customers_ = int(weights.sum())
        return self

    def log_likelihood(self, frequency, recency, T) -> np.ndarray:
        """Each customer's log-likelihood at the fitted parameters."""
        return self._log_likelihood(self._values(), *as_arrays(frequency, recency, T))

    def p_alive(self, frequency, recency, T) -> np.ndarray:
        """Probability that each customer is still alive (will buy again)."""
        return per_unique(partial(self._p_alive, self._values()), frequency, recency, T)

    def expected_purchases(self, t, frequency, recency, T) -> np.ndarray:
        """Expected purchases in the next ``t`` time units; ``t`` may be a row of horizons (broadcast)."""
        values, horizon = self._values(), np.asarray(t, dtype=float)
        return per_unique(lambda x, t_x, age: self._expected_purchases(values, horizon, x[:, None], t_x[:, None],
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

        return per_unique(silent, frequency, recency, T, squeeze=np.ndim(t) == 0)

    def log_parameter_covariance(self, frequency, recency, T, weights=None) -> np.ndarray:
        """The covariance of the log-parameters (in the order of ``parameters``) from the fit's curvature on the
        data it was fitted to (``frequency``, ``recency``, ``T``, ``weights`` as in ``fit``): what the data leave
        unsure about them."""
        x, t_x, age = as_arrays(frequency, recency, T)
        (ux, ut_x, uage), counts, _ = unique_rows(x, t_x, age, weights=None if weights is None else
                                                  as_arrays(weights, x)[0])
        scale = 1 / uage.max()  # the fit's time unit (the covariance of log-parameters does not depend on it)
        point = np.log([self._values()[i] * (scale if name in self.time_parameters else 1)
                        for i, name in enumerate(self.parameters)])
        return log_parameter_covariance(self._objective(), (ux, ut_x * scale, uage * scale), counts, self.penalizer,
                                         point)

    def future_purchases(self, t: float, frequency, recency, T, p_alive=None) -> FuturePurchases:
        """Each customer's distribution of purchases in the next ``t`` (``p_alive``: theirs, if known already).

        Given alive, it depends on (x, T) alone: it is tabulated once per distinct pair, counts k = 1, 2, ...
        in blocks until every pair's ``P(X >= k | alive)`` is below ``TAIL``. The blocks are the same however
        many customers are scored (a block starts its running products afresh), so one customer alone, a
        chunk and a Spark partition get the same numbers.
        """
        x, t_x, age = as_arrays(frequency, recency, T)
        if len(x) <= FEW_TO_DEDUPLICATE:
            (ux, uage), row = (x, age), np.arange(len(x))
        else:
            (ux, uage), _, row = unique_rows(x, age)
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

    @abstractmethod
    def _objective(self) -> Objective:
        """The optimizer's objective for this model (see ``models.likelihood``)."""

    @abstractmethod
    def _log_likelihood(self, params: Sequence[float], x, t_x, T) -> np.ndarray:
        """Each row's log-likelihood at the parameter values ``params``."""

    @abstractmethod
    def _p_alive(self, params: Sequence[float], x, t_x, T) -> np.ndarray:
        """Each row's P(alive) at ``params``."""

    @abstractmethod
    def _expected_purchases(self, params: Sequence[float], t, x, t_x, T) -> np.ndarray:
        """Each row's expected purchases in the next ``t`` at ``params`` (``t`` broadcast against the rows)."""

    @abstractmethod
    def _alive_tail(self, params: Sequence[float], t: float, x, T, k) -> np.ndarray:
        """P(X >= k | alive) for purchases X in the next t: rows of (x, T) (columns) by a block of consecutive
        counts k >= 1 (a row)."""


def holding(model, params: dict[str, float]):
    """A copy of a fitted model holding other parameter values."""
    twin = copy.copy(model)
    twin.params_ = params
    return twin
