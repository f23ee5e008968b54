"""BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

While alive, a customer buys at Poisson rate ``lambda ~ Gamma(r, alpha)``; after each repeat
purchase they drop out with probability ``p ~ Beta(a, b)``. Nobody drops out before a repeat
purchase, so every customer without one has P(alive) = 1: the model's own assumption, not a fact
about them (MBG/NBD and Pareto/NBD do without it).

With ``b~ = b - 1`` (``b`` for MBG/NBD) and ``z = t / (alpha + T + t)``, the expected purchases in
the next t are ``(a + b~ + x) / (a - 1) [1 - (1 - z)^(a - 1) 2F1(a + b~ - r, a - 1; a + b~ + x; z)]
P(alive)``: the papers' expression after Euler's transformation of its 2F1, whose parameters then no
longer grow with x (the papers' form overflows for customers with hundreds of purchases).

The fit maximizes ``lifetimes``' own likelihood with autograd's gradient of it, written out
(``_value_and_gradient``): the same floating-point operations, in the same order, as autograd's backward
pass over ``BetaGeoFitter._negative_log_likelihood``, so the same value and gradient to the last bit
(tested at many points) and the same estimates, without autograd's tracing (several times the arithmetic).
tests/test_btyd.py guards them against the published CDNOW numbers.

The distribution of future purchases: given alive and the history, ``lambda ~ Gamma(r + x, alpha
+ T)`` and ``p ~ Beta(a, b~ + 1 + x)``, independent. The next t holds N ~ NB(r + x, (alpha + T) /
(alpha + T + t)) arrivals, and the k-th is made if N >= k and the customer stayed after the k - 1
before it: ``P(X >= k | alive) = I_z(k, r + x) B(a, b~ + x + k) / B(a, b~ + x + 1)``, with I the
regularized incomplete beta function.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import betainc, betaln, expit, gammaln, hyp2f1, psi

from models.btyd import PurchaseModel
from models.likelihood import Objective


class BGNBD(PurchaseModel):
    """BG/NBD: drop-out with probability p after each repeat purchase."""

    name = "bgnbd"
    label = "BG/NBD"
    parameters = ("r", "alpha", "a", "b")
    time_parameters = ("alpha",)
    # Drop-out chances before the x-th repeat purchase: x for BG/NBD, x + 1 for MBG/NBD (also at the first).
    _first_purchase_chance: ClassVar[int] = 0
    # Where customers' drop-out probabilities barely differ, a and b run off together (a / (a + b), the mean, fixed)
    # and the likelihood only flattens; beyond a of about 1,000 the expected purchases' 2F1 loses every digit (NaN for
    # every customer of a yearly shop whose fit went to a = 3e5, b = 1.2e6). With a at 100 the probabilities' spread is
    # at most 10 % of their mean: as alike as the data can tell (b, free, still sets the mean).
    most: ClassVar[dict[str, float]] = {"a": 100.0}

    def _objective(self) -> Objective:
        return _value_and_gradient

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


def _sum(values: np.ndarray) -> np.float64:
    """A row array's contribution to a parameter, summed as autograd sums it (``np.sum`` along axis 0)."""
    return np.sum(values, axis=0)


def _value_and_gradient(log_params, freq, rec, T, weights, penalizer) -> tuple[float, np.ndarray]:
    """``BetaGeoFitter._negative_log_likelihood`` and autograd's gradient of it in the log-parameters, bit for bit:
    lifetimes' forward expressions, then each node's share of the gradient as autograd's backward pass forms it, and
    each parameter's shares added in the order that pass adds them (the later use first)."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    r_1, log_alpha = r + freq, np.log(alpha)
    A_1 = gammaln(r_1) - gammaln(r) + r * log_alpha
    a_b, b_x, a_b_x = a + b, b + freq, a + b + freq
    A_2 = gammaln(a_b) + gammaln(b_x) - gammaln(b) - gammaln(a_b_x)
    r_3, alpha_T = r + freq, alpha + T
    log_alpha_T, minus_r_3 = np.log(alpha_T), -r_3
    A_3 = minus_r_3 * log_alpha_T
    b_1 = b + np.maximum(freq, 1) - 1
    r_4, rec_alpha = r + freq, rec + alpha
    log_rec_alpha = np.log(rec_alpha)
    A_4 = np.log(a) - np.log(b_1) - r_4 * log_rec_alpha
    top = np.maximum(A_3, A_4)
    e_3, e_4, repeat = np.exp(A_3 - top), np.exp(A_4 - top), freq > 0
    inside = e_3 + e_4 * repeat
    total = weights.sum()
    value = -(weights * (A_1 + A_2 + np.log(inside) + top)).sum() / total + penalizer * sum(params ** 2)
    g = weights * -(1.0 / total)  # each row's share of the mean's gradient
    g_e_3 = e_3 * (g / inside)
    g_e_4 = e_4 * (repeat * (g / inside))
    g_top = g + -g_e_4 + -g_e_3
    g_A_4 = g_e_4 + g_top * ((top == A_4) / (1.0 + (A_4 == A_3)))
    g_A_3 = g_e_3 + g_top * ((top == A_3) / (1.0 + (A_3 == A_4)))
    g_sum = _sum(g)
    g_a_b_x = _sum(-g * psi(a_b_x))
    g_a_b = g_sum * psi(a_b)
    g_r = (_sum(log_rec_alpha * -g_A_4) + _sum(-(log_alpha_T * g_A_3)) + log_alpha * g_sum
           + _sum(-g) * psi(r) + _sum(g * psi(r_1)))
    g_alpha = _sum(r_4 * -g_A_4 / rec_alpha) + _sum(minus_r_3 * g_A_3 / alpha_T) + r * g_sum / alpha
    g_a = _sum(g_A_4) / a + g_a_b_x + g_a_b
    g_b = _sum(-g_A_4 / b_1) + g_a_b_x + _sum(-g) * psi(b) + _sum(g * psi(b_x)) + g_a_b
    gradient = 2 * penalizer * params + np.array([g_r, g_alpha, g_a, g_b])
    return value, params * gradient
