"""Out-of-time metrics: classification (churn, next stage), purchase counts and CLV ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score


def classification(outcome, probability) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), Brier score and expected calibration error."""
    y, p = np.asarray(outcome, dtype=int), np.asarray(probability, dtype=float)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, np.clip(p, 0, 1))),
        "ece": expected_calibration_error(y, p),
    }


def ranking(outcome, score) -> float:
    """ROC-AUC of any score (a baseline need not be a probability)."""
    return float(roc_auc_score(np.asarray(outcome, dtype=int), np.asarray(score, dtype=float)))


def expected_calibration_error(outcome, probability, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over ten equal-width probability bins, weighted by size."""
    y, p = np.asarray(outcome, dtype=float), np.asarray(probability, dtype=float)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    size = np.bincount(which, minlength=bins)
    used = size > 0
    observed = np.bincount(which, weights=y, minlength=bins)[used] / size[used]
    predicted = np.bincount(which, weights=p, minlength=bins)[used] / size[used]
    return float(np.sum(np.abs(observed - predicted) * size[used]) / len(p))


def auc_by_group(outcome, probability, group) -> dict[str, float]:
    """ROC-AUC within each group (e.g. current stage) that has both outcomes."""
    y, p, g = np.asarray(outcome, dtype=int), np.asarray(probability, dtype=float), np.asarray(group)
    return {str(k): float(roc_auc_score(y[g == k], p[g == k])) for k in np.unique(g)
            if len(np.unique(y[g == k])) == 2}


def counts(actual, predicted) -> dict[str, float]:
    """Per-customer mean absolute error and the relative error of the total."""
    a, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    return {"mae": float(np.mean(np.abs(p - a))), "aggregate_error": float((p.sum() - a.sum()) / a.sum())}


def value(actual, predicted, groups: int = 10) -> dict[str, float]:
    """How well predicted value (CLV) ranks and sizes actual holdout spend.

    spearman: rank correlation. gini: normalized Gini, the Gini of actual spend ordered by the
    prediction over the Gini of the perfect order (1 perfect, 0 random, -1 reversed).
    top_decile_capture: share of all actual spend made by the top 10 % by prediction.
    decile_mape: mean |mean predicted - mean actual| / mean actual over the prediction's deciles.
    aggregate_error: relative error of the predicted total.
    """
    a, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    order = np.argsort(-p, kind="stable")
    top = max(1, len(a) // groups)
    deciles = np.array_split(order, groups)
    errors = [abs(p[d].mean() - a[d].mean()) / a[d].mean() for d in deciles if len(d) and a[d].mean() > 0]
    return {
        "spearman": float(spearmanr(a, p).statistic),
        "gini": _gini(a, p) / _gini(a, a),
        "top_decile_capture": float(a[order[:top]].sum() / a.sum()),
        "decile_mape": float(np.mean(errors)),
        "aggregate_error": float((p.sum() - a.sum()) / a.sum()),
    }


def intervals(distribution, actual, level: float) -> pd.DataFrame:
    """Per customer, the central interval at ``level`` from ``distribution`` (a ``FuturePurchases`` or
    ``FutureSpend``) and how it did on the ``actual`` value.

    low, high: the interval; inside: whether the actual value fell in it; stated: the probability the
    distribution gives its own interval, above ``level`` where it has atoms ([0, 0] holds all of
    P(nothing)); pit: the chance that a randomized probability integral transform (uniform between
    P(X < y) and P(X <= y)) lands in the central ``level``, whose mean is ``level`` for calibrated
    distributions, atoms or not.
    """
    y = np.asarray(actual, dtype=float)
    low_level, high_level = (1 - level) / 2, (1 + level) / 2
    low, high = distribution.quantile(low_level), distribution.quantile(high_level)
    below, at = distribution.below(y), distribution.cdf(y)
    width = at - below
    overlap = np.clip(np.minimum(at, high_level) - np.maximum(below, low_level), 0, None)
    pit = np.where(width > 1e-12, overlap / np.maximum(width, 1e-12), (at >= low_level) & (at <= high_level))
    return pd.DataFrame({"low": low, "high": high, "inside": (y >= low) & (y <= high),
                         "stated": distribution.cdf(high) - distribution.below(low), "pit": pit})


def coverage(table: pd.DataFrame) -> dict[str, float]:
    """An ``intervals`` table summed up: coverage (share inside) beside what the intervals stated, coverage
    among intervals that are not one point, and the mean PIT coverage (the level, if calibrated)."""
    spread = table.high > table.low
    return {"coverage": float(table.inside.mean()), "stated": float(table.stated.mean()),
            "coverage_spread": float(table.inside[spread].mean()) if spread.any() else float("nan"),
            "pit": float(table.pit.mean())}


def _gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Gini of ``actual`` ordered by ``predicted``, descending: area between its Lorenz curve and the diagonal."""
    ordered = actual[np.argsort(-predicted, kind="stable")]
    cumulative = np.cumsum(ordered) / ordered.sum()
    return float(np.mean(cumulative - np.arange(1, len(actual) + 1) / len(actual)))
