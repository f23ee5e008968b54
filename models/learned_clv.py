"""The learned CLV: LightGBM learning, per customer, how far the BTYD model's expected spend is off.

A Tweedie regression (log link; for money that is zero for most customers and heavy-tailed for a
few) of each buyer's spend over the next ``L`` days on the classifiers' inputs (the features and
the BTYD outputs), boosted from the BTYD model's own expected spend over those days: the trees
learn a multiplier on the BTYD prediction, ``exp(raw score)``, from what the purchase history alone
cannot tell (engagement, channel, the shape of the history). The share of that multiplier common to
every customer of the training window (a shop-wide level that moves with the season and the age of
the base, and would not carry to a later window) is taken out: on the training rows, the corrected
total equals the BTYD total, so the level stays the purchase model's and the trees only reorder.
The learned CLV is the BTYD CLV times the multiplier: the customer's own BTYD ratio of CLV over
the served horizon to spend over ``L`` days carries the learned spend to the served horizon.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np
import pandas as pd

from features.errors import LifecycleError
from models.trees import BoostedTrees

SPEND_FLOOR = 0.01  # the smallest BTYD expected spend boosted from (its log is the initial score)
MIN_SPENDERS = 20  # buyers with spend in the label window below which no learned CLV is fitted


class LearnedCLV(BoostedTrees):
    """A per-customer multiplier on the BTYD model's expected spend, learned by Tweedie LightGBM."""

    objective: ClassVar[dict[str, object]] = {"objective": "tweedie", "tweedie_variance_power": 1.5}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.level_ = 0.0  # the log multiplier common to the training window, taken out of every prediction

    def fit(self, X: pd.DataFrame, spend, btyd_spend) -> Self:
        """Fit on ``X`` (one row per buyer), the spend each made over the label window and the BTYD model's
        expected spend for them over that window."""
        y, base = np.asarray(spend, dtype=float), np.maximum(np.asarray(btyd_spend, dtype=float), SPEND_FLOOR)
        if np.count_nonzero(y > 0) < MIN_SPENDERS:
            raise LifecycleError(f"cannot learn CLV from {np.count_nonzero(y > 0)} buyers who spent in the label "
                                 f"window: it needs {MIN_SPENDERS}")
        matrix, _ = self._boost(X, y, stratify=False, init_score=np.log(base))
        correction = np.exp(self._predict(matrix, raw_score=True))
        self.level_ = float(np.log(np.sum(base * correction) / np.sum(base)))
        return self

    def multiplier(self, X) -> np.ndarray:
        """Per row, the factor by which the customer's BTYD spend (and CLV) is multiplied."""
        return np.exp(self._predict(self._matrix(X), raw_score=True) - self.level_)
