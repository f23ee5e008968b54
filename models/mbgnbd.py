"""MBG/NBD (Batislam, Denizel & Filiztekin 2007): BG/NBD with a drop-out chance at the first purchase too.

A customer may leave right after their first order, so a customer without a repeat purchase is
no longer certainly alive: P(alive) falls with the time since that order, like everyone else's.
Likelihood, P(alive) and expected purchases are BG/NBD's with one more drop-out chance (``b + x``
where BG/NBD has ``b + x - 1``; see ``models.bgnbd``). The fit maximizes ``lifetimes``'
``ModifiedBetaGeoFitter`` likelihood with autograd's gradient of it, written out as ``models.bgnbd`` writes
BG/NBD's (bit for bit, tested): the same estimates.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, psi

from models.bgnbd import BGNBD, _sum
from models.likelihood import Objective


class MBGNBD(BGNBD):
    """MBG/NBD: drop-out with probability p after every purchase, the first included."""

    name = "mbgnbd"
    label = "MBG/NBD"
    _first_purchase_chance = 1

    def _objective(self) -> Objective:
        return _value_and_gradient


def _value_and_gradient(log_params, freq, rec, T, weights, penalizer) -> tuple[float, np.ndarray]:
    """``ModifiedBetaGeoFitter._negative_log_likelihood`` and autograd's gradient of it, bit for bit (as
    ``models.bgnbd._value_and_gradient``)."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    r_1, log_alpha = r + freq, np.log(alpha)
    A_1 = gammaln(r_1) - gammaln(r) + r * log_alpha
    a_b, b_x_1, a_b_x_1 = a + b, b + freq + 1, a + b + freq + 1
    A_2 = gammaln(a_b) + gammaln(b_x_1) - gammaln(b) - gammaln(a_b_x_1)
    r_3, alpha_T_3 = r + freq, alpha + T
    log_alpha_T_3, minus_r_3 = np.log(alpha_T_3), -r_3
    A_3 = minus_r_3 * log_alpha_T_3
    b_x, r_4, alpha_T_4, alpha_rec = b + freq, r + freq, alpha + T, alpha + rec
    stretch = np.log(alpha_T_4) - np.log(alpha_rec)
    A_4 = np.log(a) - np.log(b_x) + r_4 * stretch
    gone = np.logaddexp(A_4, 0)
    total = weights.sum()
    value = -(weights * (A_1 + A_2 + A_3 + gone)).sum() / total + penalizer * sum(params ** 2)
    g = weights * -(1.0 / total)  # each row's share of the mean's gradient
    g_A_4 = g * np.exp(A_4 - gone)
    g_stretch = r_4 * g_A_4
    g_sum = _sum(g)
    g_a_b_x_1 = _sum(-g * psi(a_b_x_1))
    g_a_b = g_sum * psi(a_b)
    g_r = (_sum(stretch * g_A_4) + _sum(-(log_alpha_T_3 * g)) + log_alpha * g_sum + _sum(-g) * psi(r)
           + _sum(g * psi(r_1)))
    g_alpha = (_sum(-g_stretch / alpha_rec) + _sum(g_stretch / alpha_T_4) + _sum(minus_r_3 * g / alpha_T_3)
               + r * g_sum / alpha)
    g_a = _sum(g_A_4) / a + g_a_b_x_1 + g_a_b
    g_b = _sum(-g_A_4 / b_x) + g_a_b_x_1 + _sum(-g) * psi(b) + _sum(g * psi(b_x_1)) + g_a_b
    gradient = 2 * penalizer * params + np.array([g_r, g_alpha, g_a, g_b])
    return value, params * gradient
