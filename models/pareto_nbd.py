"""Pareto/NBD (Schmittlein, Morrison & Colombo 1987; Fader & Hardie's 2005 note on its derivations).

While alive, a customer buys at Poisson rate ``lambda ~ Gamma(r, alpha)``; their lifetime is
exponential with rate ``mu ~ Gamma(s, beta)``, so they can leave at any moment, right after the
first order included.

Every expression rests on one integral, the chance of a history that ended in drop-out:
``F(t) = integral from t to infinity of (alpha + u)^-(r + x) (beta + u)^-(s + 1) du``. With
``m, M`` the smaller and larger of alpha and beta and ``c`` the exponent of the factor with
offset ``m``, Pfaff's transformation of the note's expression gives
``F(t) = f(t) (M + t) 2F1(1, c; r + s + x + 1; -(M - m) / (m + t)) / (r + s + x)``, f the integrand:
a 2F1 between 0 and 1, where the note's form (and ``lifetimes``', which returns NaN for a CDNOW
customer with 144 repeat purchases) overflows. Then, with ``K = (alpha + T)^(r + x) (beta + T)^s``:

- likelihood: ``Gamma(r + x) alpha^r beta^s / Gamma(r) [1 / K + s (F(t_x) - F(T))]``;
- P(alive) = ``1 / (1 + s K (F(t_x) - F(T)))``;
- expected purchases in the next t: ``(r + x) (beta + T) / ((alpha + T) (s - 1))
  [1 - ((beta + T) / (beta + T + t))^(s - 1)] P(alive)``.

The distribution of future purchases: given alive and the history, ``lambda ~ Gamma(r + x, alpha
+ T)`` and ``mu ~ Gamma(s, beta + T)``, independent. The k-th purchase of the next t comes at
``S_k``, with ``v = S_k / (alpha + T + S_k) ~ Beta(k, r + x)``, and is made if the customer is still
there, which they are with probability ``g(v) = ((beta + T) / (beta + T + S_k))^s``. So
``P(X >= k | alive) = integral from 0 to z of Beta(v; k, r + x) g(v) dv``, z = t / (alpha + T + t):
Gauss-Legendre in ``y = -log(1 - v)`` over where the density has its mass (y's mean +/- 12 sd, and
to at least 24 / (r + x) above the mean for its exponential right tail; within [0, -log(1 - z)]).

``lifetimes``' ``ParetoNBDFitter`` searches with Nelder-Mead on every customer; here BFGS on the
unique rows. F's derivatives in alpha and beta are integrals of the same kind, ``-(r + x)`` times F
with r one larger and ``-(s + 1)`` times F with s one larger; those in r and s are not (a log in
the integrand), so the gradient takes central differences there. Gauss's continued fraction is
compiled (numba): where drop-out rates hardly differ (s near its cap), u runs to the thousands and
each row takes hundreds of steps, which as numpy steps over the rows made a fit 13x slower (6 s
instead of 0.5 s on 600 rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar

import numba
import numpy as np
from scipy.special import betaln, digamma, expit, gamma, gammaln, hyp2f1, polygamma

from models.btyd import PurchaseModel
from models.likelihood import Objective
from models.rows import FEW_TO_DEDUPLICATE, unique_rows

STEP = 1e-5  # of the central differences, in log-parameters
SCIPY_UP_TO = 2.0  # scipy's hyp2f1(1, c; d; w) is accurate for |w| up to this
FAR, GAP, SERIES_TERMS = 1e3, 0.01, 400  # where _log_far replaces the continued fraction (see there)
NODES, SPREAD, EXPONENTIAL_TAIL = np.polynomial.legendre.leggauss(48), 12.0, 24.0  # the tail's quadrature


class ParetoNBD(PurchaseModel):
    """Pareto/NBD: exponential lifetimes, drop-out at any moment."""

    name = "pareto_nbd"
    label = "Pareto/NBD"
    parameters = ("r", "alpha", "s", "beta")
    time_parameters = ("alpha", "beta")
    # Where customers' drop-out rates barely differ, s and beta run off together (s / beta, the mean rate, fixed) and
    # each step costs more (2F1 of ever larger arguments: a minute per fit at s = 5,000): at s = 100 the rates' spread
    # is 10 % of their mean, the limit already.
    most: ClassVar[dict[str, float]] = {"s": 100.0}

    def _objective(self) -> Objective:
        return _value_and_gradient

    def _log_likelihood(self, params, x, t_x, T):
        return _log_likelihood(params, x, t_x, T)

    def _p_alive(self, params, x, t_x, T):
        r, alpha, s, beta = params
        return expit(-(np.log(s) + (r + x) * np.log(alpha + T) + s * np.log(beta + T)
                       + _log_between(params, x, t_x, T)))

    def _expected_purchases(self, params, t, x, t_x, T):
        r, alpha, s, beta = params
        stretch = np.log1p(t / (beta + T))
        # [1 - e^(-(s - 1) L)] / (s - 1), which tends to L as s -> 1
        lifetime = stretch if abs(s - 1) < 1e-10 else -np.expm1(-(s - 1) * stretch) / (s - 1)
        return (r + x) * (beta + T) / (alpha + T) * lifetime * self._p_alive(params, x, t_x, T)

    def _alive_tail(self, params, t, x, T, k):
        r, alpha, s, beta = params
        shape = r + x
        z = t / (alpha + T + t)
        # In y = -log(1 - v) the density's (1 - v)^(r + x - 1), steep near 1 for few purchases, is smooth;
        # 1 - v ~ Beta(r + x, k), so y has mean psi(r + x + k) - psi(r + x) and variance psi'(r + x) - psi'(r + x + k).
        mean = digamma(shape + k) - digamma(shape)
        sd = np.sqrt(polygamma(1, shape) - polygamma(1, shape + k))
        # Its right tail falls like exp(-(r + x) y): a window of 12 sd is too short for a low-variance exponential.
        low = np.clip(mean - SPREAD * sd, 0, -np.log1p(-z))
        high = np.clip(mean + np.maximum(SPREAD * sd, EXPONENTIAL_TAIL / shape), 0, -np.log1p(-z))
        nodes, weights = NODES
        y = low + (high - low) * (nodes[:, None, None] + 1) / 2  # nodes x rows x counts
        v = -np.expm1(-y)
        # log of Beta(v; k, r + x) dv / dy = v^(k - 1) e^(-(r + x) y) / B(k, r + x) times the chance of staying,
        # g(v) = ((beta + T) e^-y / ((beta + T) e^-y + (alpha + T) v))^s, e^-y taken as 1 - v (where 1 - v is tiny
        # and loses digits, its term is as tiny beside (alpha + T) v); one array pass per operation
        fixed = s * np.log(beta + T) - betaln(k, shape)  # rows x counts
        log_integrand = ((k - 1) * np.log(v) - (shape + s) * y + fixed
                         - s * np.log((beta + T) * (1 - v) + (alpha + T) * v))
        return (high - low) / 2 * np.tensordot(weights, np.exp(log_integrand), axes=1)


def _log_likelihood(params, x, t_x, T, tails=None) -> np.ndarray:
    """Each row's log-likelihood; ``tails``: ``_tails(x, t_x, T)``, found once for rows evaluated at many points."""
    return _mixture(params, x, t_x, T, tails)[0]


def _mixture(params, x, t_x, T, tails=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's log-likelihood, ``log(Gamma(r + x) alpha^r beta^s / Gamma(r)) + log(1 / K + s (F(t_x) - F(T)))``,
    with ``log(1 / K)`` and that log-sum (see the module's docstring)."""
    r, alpha, s, beta = params
    alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
    both = np.logaddexp(alive, np.log(s) + _log_between(params, x, t_x, T, tails))
    return gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta) + both, alive, both


def _value_and_gradient(log_params, x, t_x, T, weights, penalizer) -> tuple[float, np.ndarray]:
    """The fit's objective, -sum(w ll) / sum(w) + penalizer * sum(params^2), and its gradient: exact in alpha and beta
    (F's derivative in alpha is -(r + x) F with r one larger, in beta -(s + 1) F with s one larger), central
    differences in r and s. Seven evaluations of the tails, on the distinct (x, t) pairs found once."""
    tails, total = _tails(x, t_x, T), weights.sum()

    def value(params, ll) -> float:
        return -(weights * ll).sum() / total + penalizer * (params ** 2).sum()

    def objective(point) -> float:
        params = np.exp(point)
        return value(params, _log_likelihood(params, x, t_x, T, tails))

    params = np.exp(log_params)
    r, alpha, s, beta = params
    ll, alive, both = _mixture(params, x, t_x, T, tails)
    stays = np.exp(alive - both)  # the share of 1 / K in the log-sum; s (F(t_x) - F(T)) has the rest
    gone_r = np.exp(np.log(s) + _log_between((r + 1, alpha, s, beta), x, t_x, T, tails) - both)
    gone_s = np.exp(np.log(s) + _log_between((r, alpha, s + 1, beta), x, t_x, T, tails) - both)
    exact = np.array([r / alpha - (r + x) * (stays / (alpha + T) + gone_r),
                      s / beta - s * stays / (beta + T) - (s + 1) * gone_s]) @ weights
    gradient = params * (2 * penalizer * params)
    gradient[[1, 3]] -= params[[1, 3]] * exact / total
    for i in (0, 2):
        step = np.zeros(len(log_params))
        step[i] = STEP
        gradient[i] = (objective(log_params + step) - objective(log_params - step)) / (2 * STEP)
    return value(params, ll), gradient


def _log_tail(params, x, t) -> np.ndarray:
    """log F(t) (see the module's docstring), computed once per distinct (x, t)."""
    return _tail(x, t)(params)


def _tail(x, t) -> Callable[[Sequence[float]], np.ndarray]:
    """log F(t) at each (x, t) as a function of the parameters, evaluated once per distinct pair (found here)."""
    x, t = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(t, dtype=float))
    if x.size <= FEW_TO_DEDUPLICATE:
        return partial(_log_tail_of_each, x=x, t=t)
    (ux, ut), _, inverse = unique_rows(x.ravel(), t.ravel())  # every one-time buyer has (0, 0), for one
    return lambda params: _log_tail_of_each(params, ux, ut)[inverse].reshape(x.shape)


def _tails(x, start, end) -> tuple[Callable, Callable]:
    """``_tail`` at ``start`` and at ``end``."""
    return _tail(x, start), _tail(x, end)


def _log_tail_of_each(params, x, t) -> np.ndarray:
    r, alpha, s, beta = params
    low, high, power = (alpha, beta, r + x) if alpha < beta else (beta, alpha, np.full(x.shape, s + 1.0))
    total = r + s + x
    return (-(r + x) * np.log(alpha + t) - (s + 1) * np.log(beta + t) + np.log(high + t) - np.log(total)
            + log_hyp2f1_one(power, total + 1, -(high - low) / (low + t)))


def _log_between(params, x, start, end, tails=None) -> np.ndarray:
    """log(F(start) - F(end)) for start <= end: -inf where they are equal (``tails``: ``_tails(x, start, end)``)."""
    start_tail, end_tail = tails or _tails(x, start, end)
    first = start_tail(params)
    with np.errstate(divide="ignore"):
        return first + np.log(-np.expm1(np.minimum(end_tail(params) - first, 0.0)))


def log_hyp2f1_one(c, d, w) -> np.ndarray:
    """log 2F1(1, c; d; w) for w <= 0 and d > c > 0: a value in (0, 1], for any size of c, d and |w|.

    scipy's hyp2f1 where it is accurate (|w| <= ``SCIPY_UP_TO``: within 1e-14 of Gauss's fraction
    for c and d - c from 0.01 to 1e5). Beyond, where scipy returns NaN (c of about 100) or wrong
    values (off by up to 57 in the log for c and d - c below 60 and |w| = 5), Gauss's continued
    fraction ``1 / (1 + k1 u / (1 + k2 u / (1 + ...)))``, u = -w, with ``k1 = c / d``,
    ``k(2m) = m (d - c + m - 1) / ((d + 2m - 2) (d + 2m - 1))`` and ``k(2m + 1) = (c + m) (d + m - 1)
    / ((d + 2m - 1) (d + 2m))``: every k is positive, so each step adds positive numbers (no
    cancellation) and the fraction converges for every u >= 0, in about 10 steps for u near 1 and
    60 for u = 40.
    """
    c, d, u = np.broadcast_arrays(c, d, -np.asarray(w, dtype=float))
    shape = u.shape
    c, d, u = (np.array(v, dtype=float).ravel() for v in (c, d, u))
    out = np.full(len(u), np.nan)
    easy = u <= SCIPY_UP_TO
    out[easy] = np.log(hyp2f1(1.0, c[easy], d[easy], -u[easy]))
    far = ~np.isfinite(out) & (u >= FAR) & (d < u / 10)
    out[far] = _log_far(c[far], d[far], u[far])
    hard = ~np.isfinite(out)
    out[hard] = -np.log(_continued_fraction(c[hard], d[hard], u[hard]))
    return out.reshape(shape)


def _log_far(c, d, u) -> np.ndarray:
    """log 2F1(1, c; d; -u) for large u (u >= 1e3, d < u / 10), where the continued fraction needs thousands
    of steps.

    DLMF 15.8.2 with a = 1, b = c (its second 2F1 is then (1 + 1/u)^(d - c - 1) exactly):
    ``(d - 1) / ((c - 1) u) 2F1(1, 2 - d; 2 - c; -1/u) + Gamma(1 - c) Gamma(d) / Gamma(d - c) u^-c
    (1 + 1/u)^(d - c - 1)``, the first 2F1 summed as its series (``_inverse_series``); within 1e-10 of
    mpmath where c is at least ``GAP`` from 1, 2, 3, ... (the two terms' poles). Nearer, a cubic through
    the values at ``n +/- GAP``, ``n +/- 2 GAP``.
    """
    n = np.round(c)
    near = (np.abs(c - n) < GAP) & (n >= 1)
    out = np.empty_like(u)
    out[~near] = _log_far_exact(c[~near], d[~near], u[~near])
    if near.any():
        nodes = np.array([-2, -1, 1, 2]) * GAP
        at = c[near] - n[near]
        values = [_log_far_exact(n[near] + node, d[near], u[near]) for node in nodes]
        weights = [np.prod([(at - other) / (node - other) for other in nodes if other != node], axis=0)
                   for node in nodes]
        out[near] = sum(w * v for w, v in zip(weights, values, strict=True))
    return out


def _log_far_exact(c, d, u) -> np.ndarray:
    first = (d - 1) / ((c - 1) * u) * _inverse_series(c, d, u)
    second = gamma(1 - c) * np.exp(gammaln(d) - gammaln(d - c) - c * np.log(u) + (d - c - 1) * np.log1p(1 / u))
    return np.log(first + second)


def _inverse_series(c, d, u) -> np.ndarray:
    """2F1(1, 2 - d; 2 - c; -1/u) as its series, sum over n of (2 - d)_n / (2 - c)_n (-1/u)^n, to the last bit
    (scipy's hyp2f1 loses every digit here once 2 - c < -2 and d is large)."""
    total, term = np.ones_like(u), np.ones_like(u)
    for n in range(SERIES_TERMS):
        term = term * (2 - d + n) / (2 - c + n) / -u
        total += term
        if not (np.abs(term) > 1e-17 * np.abs(total)).any():
            break
    return total


@numba.njit(cache=True)
def _continued_fraction(c, d, u):
    """1 / 2F1(1, c; d; -u) by the modified Lentz method: 1 + a1 / (1 + a2 / ...), a_j = k_j u.

    Compiled, one row at a time: a row with u in the thousands takes a few hundred steps, and a numpy
    step over the rows still going costs more in overhead than all of its arithmetic.
    """
    out = np.empty(len(u))
    for i in range(len(u)):
        value, front, back, j = 1.0, 1.0, 0.0, 1
        while True:
            m = j // 2
            if j == 1:
                k = c[i] / d[i]
            elif j % 2 == 0:
                k = m * (d[i] - c[i] + m - 1) / ((d[i] + j - 2) * (d[i] + j - 1))
            else:
                k = (c[i] + m) * (d[i] + m - 1) / ((d[i] + j - 2) * (d[i] + j - 1))
            back = 1 / (1 + k * u[i] * back)
            front = 1 + k * u[i] / front
            step = front * back
            value *= step
            if abs(step - 1) <= 1e-15:
                break
            j += 1
        out[i] = value
    return out
