"""LightGBM binary classifiers (churn, next stage) with calibrated probabilities and drivers.

Training data is split (seeded, stratified) into a fitting part and a validation part, both from
the training window: boosting stops early on the validation log-loss, and an isotonic regression
(scikit-learn) fitted on the validation scores calibrates them. Isotonic regression is a step
function: it would give every customer on one step the same probability (on CDNOW, 47 % of them
one value), so the calibration map interpolates linearly between the steps' centres (the mean raw
score of each step's validation rows) and, beyond the outer centres, continues along the raw
log-odds (slope 1). It is strictly increasing: customers the classifier tells apart keep their order.

Drivers are path attributions (Saabas; XGBoost's ``approx_contribs``): walking a tree from its
root to the row's leaf, each split moves the expected score from the parent's mean to the child's,
and that move is credited to the split's feature. Per row, the contributions plus the bias (the
trees' root means) add up exactly to the raw score (log-odds). Every leaf's credits are tabulated
at fit, so explaining a row costs one LightGBM leaf lookup and a sum of table rows: ~40x cheaper
than TreeSHAP (``pred_contrib``), with which they largely agree (docs/models.md measures how much).
"""

from __future__ import annotations

from typing import ClassVar, Self

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from features.errors import LifecycleError
from models.trees import BoostedTrees

TAIL_FLOOR = 1e-6  # an outer step of probability 0 or 1 continues from this far inside
FEW_TO_GATHER = 64  # explained with one gather over all trees (more rows: tree by tree, a chunk at a time)


class Classifier(BoostedTrees):
    """A calibrated LightGBM classifier over a feature table (numeric and text columns)."""

    objective: ClassVar[dict[str, object]] = {"objective": "binary"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calibration_: tuple[np.ndarray, np.ndarray] | None = None  # raw-score centres and their probabilities
        self.credits_: np.ndarray | None = None  # per leaf of every tree: its path's credit per feature, bias last
        self.leaf_offsets_: np.ndarray | None = None  # row of each tree's first leaf in ``credits_``

    def fit(self, X: pd.DataFrame, y) -> Self:
        """Fit on ``X`` (one row per customer) and binary labels ``y``."""
        y = np.asarray(y, dtype=int)
        if len(np.unique(y)) < 2 or min(np.bincount(y)) < 10:
            raise LifecycleError(f"cannot train a classifier on {np.bincount(y, minlength=2).tolist()} "
                                 "negatives/positives: each class needs at least 10 customers")
        matrix, valid_rows = self._boost(X, y, stratify=True)
        self.calibration_ = calibration(self.booster_.predict(matrix[valid_rows], raw_score=True), y[valid_rows])
        self.credits_, self.leaf_offsets_ = _path_credits(self.booster_, len(self.features_))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated probability of the positive class per row."""
        return self._probability(self._matrix(X))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per row and feature, the signed contribution to the raw score (log-odds); column ``bias`` last."""
        return pd.DataFrame(self._credits(self._matrix(X)), columns=[*self.features_, "bias"], index=X.index)

    def predict_with_drivers(self, X, top: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated probabilities and each row's ``top`` drivers, largest first: their feature positions
        in ``features_`` and their contributions, each an array of shape (rows, top)."""
        matrix = self._matrix(X)
        credits = self._credits(matrix)[:, :-1]
        order = np.argsort(-np.abs(credits), axis=1, kind="stable")[:, :top]
        return self._probability(matrix), order, np.take_along_axis(credits, order, axis=1)

    def _probability(self, matrix: np.ndarray) -> np.ndarray:
        return calibrated(self._predict(matrix, raw_score=True), *self.calibration_)

    def _credits(self, matrix: np.ndarray, chunk_rows: int = 8192) -> np.ndarray:
        """Path credits per row (features, then bias): the credit rows of the row's leaves, summed over trees."""
        trees = len(self.leaf_offsets_)
        leaves = self._predict(matrix, pred_leaf=True).reshape(len(matrix), trees) + self.leaf_offsets_
        if len(matrix) <= FEW_TO_GATHER:  # one gather: cheaper than a pass per tree for a few rows, not for many
            return self.credits_[leaves].sum(axis=1)
        out = np.zeros((len(matrix), self.credits_.shape[1]))
        for start in range(0, len(matrix), chunk_rows):  # a chunk's sum stays in cache while the trees add up
            part = out[start:start + chunk_rows]
            for tree in leaves[start:start + chunk_rows].T:
                part += self.credits_[tree]
        return out



def calibration(raw: np.ndarray, outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The isotonic steps of ``outcome`` on ``raw``: each step's mean raw score and its probability, in order."""
    levels = IsotonicRegression(y_min=0, y_max=1).fit(raw, outcome).predict(raw)
    values, step = np.unique(levels, return_inverse=True)
    centres = np.bincount(step, weights=raw) / np.bincount(step)
    return centres, values


def calibrated(raw: np.ndarray, centres: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Probabilities of raw scores: linear between the steps' centres, along the raw log-odds beyond them."""
    values = np.clip(values, TAIL_FLOOR, 1 - TAIL_FLOOR)  # the tails start where the interpolation ends
    below = expit(raw - centres[0] + logit(values[0]))
    above = expit(raw - centres[-1] + logit(values[-1]))
    return np.where(raw < centres[0], below, np.where(raw > centres[-1], above, np.interp(raw, centres, values)))


def _path_credits(booster: lgb.Booster, features: int) -> tuple[np.ndarray, np.ndarray]:
    """For every leaf of every tree, the credit each feature earns on the path from the root (bias: the
    root's mean), stacked tree after tree; and the row where each tree's leaves start. A node's mean is
    its leaves' values weighted by their training rows, as TreeSHAP takes it."""
    tables = []
    for tree in booster.dump_model()["tree_info"]:
        means: dict[int, float] = {}
        _mean_and_rows(tree["tree_structure"], means)
        table = np.zeros((tree["num_leaves"], features + 1))
        stack = [(tree["tree_structure"], np.zeros(features + 1))]
        while stack:
            node, credit = stack.pop()
            if "split_feature" not in node:
                table[node.get("leaf_index", 0)] = credit
                continue
            for child in (node["left_child"], node["right_child"]):
                moved = credit.copy()
                moved[node["split_feature"]] += means[id(child)] - means[id(node)]
                stack.append((child, moved))
        table[:, features] = means[id(tree["tree_structure"])]
        tables.append(table)
    offsets = np.cumsum([0] + [len(t) for t in tables[:-1]])
    return np.vstack(tables), offsets


def _mean_and_rows(node: dict, means: dict[int, float]) -> tuple[float, float]:
    """Record the mean of ``node`` and of every node under it (by ``id``); return its mean and training rows."""
    if "split_feature" not in node:
        mean, rows = node["leaf_value"], node.get("leaf_count", 0)
    else:
        (left, left_rows), (right, right_rows) = (_mean_and_rows(node[side], means)
                                                  for side in ("left_child", "right_child"))
        rows = left_rows + right_rows
        mean = (left * left_rows + right * right_rows) / rows if rows else (left + right) / 2
    means[id(node)] = mean
    return mean, rows
