"""BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

While alive, a customer buys at Poisson rate ``lambda ~ Gamma(r, alpha)``; after each repeat
purchase they drop out with probability ``p ~ Beta(a, b)``. Nobody drops out before a repeat
purchase, so every customer without one has P(alive) = 1: the model's own assumption, not a fact
about them (MBG/NBD and Pareto/NBD do without it).

With ``b~ = b - 1`` (``b`` for MBG/NBD) and ``z = t / (alpha + T + t)``, the expected purchases in
the next t are ``(a + b~ + x) / (a - 1) [1 - (1 - z)^(a - 1) 2F1(a + b~ - r, a - 1; a + b~ + x; z)]
P(alive)``: the papers' expression after Euler's transformation of its 2F1, whose parameters then no
longer grow with x (the papers' form overflows for customers with hundreds of purchases).

The fit maximizes ``lifetimes``' own likelihood with its gradient (autograd): the same estimates
as ``BetaGeoFitter``, which tests/test_btyd.py guards against the published CDNOW numbers.

The distribution of future purchases: given alive and the history, ``lambda ~ Gamma(r + x, alpha
+ T)`` and ``p ~ Beta(a, b~ + 1 + x)``, independent. The next t holds N ~ NB(r + x, (alpha + T) /
(alpha + T + t)) arrivals, and the k-th is made if N >= k and the customer stayed after the k - 1
before it: ``P(X >= k | alive) = I_z(k, r + x) B(a, b~ + x + k) / B(a, b~ + x + 1)``, with I the
regularized incomplete beta function.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from autograd import value_and_grad
from lifetimes import BetaGeoFitter
from scipy.special import betainc, betaln, expit, gammaln, hyp2f1

from models.btyd import PurchaseModel
from models.likelihood import Objective


class BGNBD(PurchaseModel):
    """BG/NBD: drop-out with probability p after each repeat purchase."""

    name = "bgnbd"
    label = "BG/NBD"
    parameters = ("r", "alpha", "a", "b")
    time_parameters = ("alpha",)
    _fitter: ClassVar[type] = BetaGeoFitter
    # Drop-out chances before the x-th repeat purchase: x for BG/NBD, x + 1 for MBG/NBD (also at the first).
    _first_purchase_chance: ClassVar[int] = 0
    # Where customers' drop-out probabilities barely differ, a and b run off together (a / (a + b), the mean, fixed)
    # and the likelihood only flattens; beyond a of about 1,000 the expected purchases' 2F1 loses every digit (NaN for
    # every customer of a yearly shop whose fit went to a = 3e5, b = 1.2e6). With a at 100 the probabilities' spread is
    # at most 10 % of their mean: as alike as the data can tell (b, free, still sets the mean).
    most: ClassVar[dict[str, float]] = {"a": 100.0}

    def _objective(self) -> Objective:
        return value_and_grad(self._fitter._negative_log_likelihood)

    def _log_likelihood(self, params, x, t_x, T):
        r, alpha, a, b = params
        k = self._first_purchase_chance
        common = (gammaln(r + x) - gammaln(r) + r * np.log(alpha)
                  + gammaln(a + b) + gammaln(b + x + k) - gammaln(b) - gammaln(a + b + x + k))
        return common - (r + x) * np.log(alpha + T) + np.logaddexp(0, self._log_gone_odds(params, x, t_x, T))

    def _log_gone_odds(self, params, x, t_x, T):
        """log of P(gone) / P(alive) given the history (-inf where the model rules dropping out out)."""
        r, alpha, a, b = params
        k = self._first_purchase_chance
        with np.errstate(divide="ignore"):
            odds = np.log(a) - np.log(np.maximum(b + x + k - 1, 1e-300)) + (r + x) * (np.log(alpha + T)
                                                                                    - np.log(alpha + t_x))
        return odds if k else np.where(x > 0, odds, -np.inf)

    def _p_alive(self, params, x, t_x, T):
        return expit(-self._log_gone_odds(params, x, t_x, T))

    def _expected_purchases(self, params, t, x, t_x, T):
        r, alpha, a, b = params
        b_ = b + self._first_purchase_chance - 1
        z = t / (alpha + T + t)
        hyp = hyp2f1(a + b_ - r, a - 1, a + b_ + x, z)
        return (a + b_ + x) / (a - 1) * (1 - (1 - z) ** (a - 1) * hyp) * self._p_alive(params, x, t_x, T)

    def _alive_tail(self, params, t, x, T, k):
        r, alpha, a, b = params
        stays = b + self._first_purchase_chance + x  # the posterior's b: one more per drop-out chance survived
        shape, z, first, steps = r + x, t / (alpha + T + t), k[0], k[:-1]
        one = np.ones_like(shape + z)
        # P(N >= k): the incomplete beta at the block's first count, then less P(N = k) for each k (a running
        # product); the Beta factor likewise, each term the last times (b' + k - 1) / (a + b' + k - 1).
        mass = np.exp(gammaln(shape + first) - gammaln(shape) - gammaln(first + 1) + shape * np.log1p(-z)
                      + first * np.log(z)) * np.cumprod(np.hstack([one, (shape + steps) / (steps + 1) * z]), axis=1)
        arrivals = betainc(first, shape, z) - np.hstack([0 * one, np.cumsum(mass[:, :-1], axis=1)])
        staying = np.exp(betaln(a, stays + first - 1) - betaln(a, stays)) * np.cumprod(
            np.hstack([one, (stays + steps - 1) / (a + stays + steps - 1)]), axis=1)
        return np.maximum(arrivals, 0) * staying
