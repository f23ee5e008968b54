"""Rolling-origin backtests: the cut dates a run is judged on, and paired comparisons with their noise.

A training run is judged as if the data had ended on each of K cut dates, one churn horizon apart
(the newest is the last day of data); every decision (the purchase model, the churn source, the CLV
source, the gate) compares two candidates on the same customers at every cut date. The difference of
a metric is pooled as its mean over the cut dates; its noise is a bootstrap clustered by customer: each
replicate draws one Poisson(1) weight per customer id, shared by every cut date (the same customer at
several dates is one draw), and recomputes both candidates' metric with those weights. A difference
more than ``Z`` bootstrap standard errors from 0 is beyond noise; anything closer is a tie, which
each decision settles by its own documented rule (docs/models.md). A decision may also ask for a
``margin``: a candidate is then better only if it is better by more than the margin beyond noise (the
difference less ``Z`` standard errors still above it), so a gain too small to matter is a tie too.

A cut date is judged on about ``MOST_JUDGED`` customers at most (``judged_share``; ``training.tables.Sample``: all of
them on smaller shops, else a sample drawn in DuckDB by a hash of the id at one share per run, the same customers in
every table and at every cut date). Judging costs about as much per customer as fitting, and past a few hundred
thousand customers the metrics' noise is far below any difference that matters; the differences' noise below is that
of the sample, so no decision is surer than its customers allow.

On large shops the replicates are drawn on a seeded sample of ``MOST_CUSTOMERS`` customer ids and their
spread scaled by sqrt(sample / all) (the metrics here are smooth means, whose noise falls with the
square root of the customers); the difference itself is always computed on every customer judged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

REPLICATES = 200
Z = 1.96  # a difference beyond Z standard errors is not noise (two-sided 5 %)
MOST_CUSTOMERS = 50_000  # customer ids the replicates are drawn on, at most
MOST_JUDGED = 250_000  # about the most customers a cut date is judged on (``judged_share``)


@dataclass(frozen=True)
class Difference:
    """How much better candidate A did than candidate B, pooled over cut dates (positive: A better)."""

    mean: float
    se: float
    cuts: int
    margin: float = 0.0  # a difference this small is a tie, whatever the noise

    @property
    def verdict(self) -> str:
        """``"better"`` or ``"worse"`` (A than B) by more than the margin beyond noise, else ``"tie"``."""
        noise = Z * self.se
        return "better" if self.mean - noise > self.margin else "worse" if self.mean + noise < -self.margin else "tie"

    def __str__(self) -> str:
        return f"{self.mean:+.4f} +/- {Z * self.se:.4f}" + (f" (margin {self.margin:g})" if self.margin else "")


# A metric of (outcome, score, weights (replicates x rows)) -> one value per replicate, and which way is better.
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def roc_auc(outcome: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted ROC-AUC per row of ``weights``; tied scores count half."""
    order = np.argsort(score, kind="stable")
    s, y, w = score[order], outcome[order].astype(float), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    positive = np.add.reduceat(w * y, starts, axis=1)
    negative = np.add.reduceat(w, starts, axis=1) - positive  # exact where the weights are counts
    below = np.cumsum(negative, axis=1) - negative
    return (positive * (below + 0.5 * negative)).sum(axis=1) / (positive.sum(axis=1) * negative.sum(axis=1))


def brier(outcome: np.ndarray, probability: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean squared error of a probability; lower is better."""
    return weights @ (np.clip(probability, 0, 1) - outcome) ** 2 / weights.sum(axis=1)


def mean(_: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of a per-customer value given as the score (e.g. a log-likelihood); the outcome is ignored."""
    return weights @ values / weights.sum(axis=1)


def absolute_error(actual: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean absolute error; lower is better."""
    return weights @ np.abs(predicted - actual) / weights.sum(axis=1)


def gini(actual: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted normalized Gini of ``actual`` ordered by ``predicted`` (``training.evaluate.value``'s, weighted)."""
    return _lorenz(actual, predicted, weights) / _lorenz(actual, actual, weights)


def _gini_difference(actual: np.ndarray, a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``gini`` of ``a`` minus ``gini`` of ``b``, the perfect order's Lorenz curve (the denominator) drawn once."""
    return (_lorenz(actual, a, weights) - _lorenz(actual, b, weights)) / _lorenz(actual, actual, weights)


def _lorenz(actual: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean gap between the Lorenz curve of ``actual`` ordered by ``predicted`` and the diagonal, a customer of weight
    w counted as w customers in a row (so a weight is exactly a repeated row).

    With P the weights' sum, M the weighted sum of ``actual``, and W_j the weight up to and including row j (in the
    order): P * gap = (P M - sum_j a_j w_j (W_j - (w_j + 1) / 2)) / M - (P + 1) / 2, one running sum of the weights
    (exact, where they are counts) instead of one of each row's rise over the diagonal.
    """
    order = np.argsort(-predicted, kind="stable")
    a, w = actual[order], weights[:, order]
    people, money = w.sum(axis=1), w @ a
    running = np.cumsum(w, axis=1)  # W_j, then w_j (W_j - (w_j + 1) / 2), in place
    running -= w / 2
    running -= 0.5
    running *= w
    below = running @ a
    return ((people * money - below) / money - (people + 1) / 2) / people


def decile_mape(actual: np.ndarray, predicted: np.ndarray, weights: np.ndarray, groups: int = 10) -> np.ndarray:
    """Weighted mean |mean predicted - mean actual| / mean actual over the prediction's deciles (each customer in the
    decile its weight's midpoint falls in, ordered by ``predicted``, highest first); lower is better."""
    order = np.argsort(-predicted, kind="stable")
    a, p, w = actual[order], predicted[order], weights[:, order]
    replicates, rows = w.shape
    # the midpoints' place in deciles never falls along a row: each decile is a run of it, summed in one pass
    place = (np.cumsum(w, axis=1) - w / 2) / w.sum(axis=1, keepdims=True) * groups
    firsts = np.column_stack([np.zeros(replicates, dtype=np.int64),
                              [np.searchsorted(row, np.arange(1, groups)) for row in place]])
    lasts = np.column_stack([firsts[:, 1:], np.full(replicates, rows)])
    empty = firsts == lasts
    starts = np.minimum(firsts + rows * np.arange(replicates)[:, None], replicates * rows - 1).ravel()

    def per_decile(values: np.ndarray) -> np.ndarray:
        sums = np.add.reduceat((w * values).ravel(), starts).reshape(replicates, groups)
        sums[empty] = 0.0
        return sums

    people, spent, sized = per_decile(np.ones_like(a)), per_decile(a), per_decile(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        errors = np.abs(sized - spent) / spent
    return np.nanmean(np.where((people > 0) & (spent > 0), errors, np.nan), axis=1)


LOWER_IS_BETTER = {brier, absolute_error, decile_mape}
# Metrics with a cheaper way to a difference than computing each side whole.
_DIFFERENCES = {gini: _gini_difference}


class Bootstrap:
    """Poisson(1) weights per customer id and replicate, derived from a hash of the id: the same customer gets the
    same weight at every cut date, in every comparison and in every run with the same ``seed``."""

    def __init__(self, replicates: int = REPLICATES, seed: int = 0, most: int = MOST_CUSTOMERS):
        self.replicates, self.most = replicates, most
        self._keys = np.random.default_rng(seed).integers(0, 2**63, replicates, dtype=np.uint64)[:, None]
        self._known = pd.Index([])  # the ids whose weights are drawn already, and their weights (a column each)
        self._drawn = np.empty((replicates, 0), dtype=np.float32)

    def weights(self, ids: np.ndarray) -> np.ndarray:
        """Replicates x customers: each customer's Poisson(1) weight in each replicate."""
        new = pd.Index(pd.unique(np.asarray(ids))).difference(self._known)
        if len(new):
            with np.errstate(over="ignore"):
                mixed = _mix(pd.util.hash_array(new.to_numpy())[None, :] ^ self._keys)
            drawn = np.searchsorted(_POISSON_CDF, (mixed >> np.uint64(11)) / 2.0**53, side="right")
            self._known = self._known.append(new)
            self._drawn = np.hstack([self._drawn, drawn.astype(np.float32)])
        return self._drawn[:, self._known.get_indexer(ids)].astype(float)

    def difference(self, metric: Metric, cuts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                   margin: float = 0.0) -> Difference:
        """``metric`` of candidate A minus candidate B's (flipped when lower is better), pooled over ``cuts``:
        per cut date, (customer ids, outcome, A's score, B's score); ``margin``: the least difference that counts."""
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        delta = _DIFFERENCES.get(metric) or (lambda outcome, a, b, w: metric(outcome, a, w) - metric(outcome, b, w))
        share = min(1.0, self.most / max(len(c[0]) for c in cuts))
        points, replicates = [], []
        for ids, outcome, a, b in cuts:
            ids = np.asarray(ids)
            outcome, a, b = (np.asarray(v, dtype=float) for v in (outcome, a, b))
            ones = np.ones((1, len(outcome)))
            points.append(sign * delta(outcome, a, b, ones)[0])
            inside = _uniform(pd.util.hash_array(ids), _REPLICATED) < share if share < 1 else slice(None)
            w = self.weights(ids[inside])
            with np.errstate(invalid="ignore", divide="ignore"):
                replicates.append(sign * delta(outcome[inside], a[inside], b[inside], w))
        spread = np.nanstd(np.mean(replicates, axis=0), ddof=1) * np.sqrt(share)
        return Difference(float(np.mean(points)), float(spread), len(cuts), margin)


_POISSON_CDF = np.cumsum(np.exp(-1.0) / np.cumprod(np.r_[1.0, np.arange(1.0, 20.0)]))[:-1]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: 64 well-mixed bits from any 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def judged_share(customers: int, most: int = MOST_JUDGED) -> float:
    """The share of a shop's ``customers`` that a cut date is judged on: all of them (1.0) up to ``most``, else about
    ``most`` of them."""
    return min(1.0, most / max(customers, 1))


# Salt of the hash draw of the replicates' sample (drawn inside the judged sample, independently of it).
_REPLICATED = np.uint64(0x9E3779B97F4A7C15)


def _uniform(hashes: np.ndarray, salt: np.uint64) -> np.ndarray:
    """A uniform number in [0, 1) per hash, a different one for each ``salt``."""
    with np.errstate(over="ignore"):
        return (_mix(hashes ^ salt) >> np.uint64(11)) / 2.0**53
