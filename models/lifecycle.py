"""The whole scorer: feature rows in, the design's output records out.

``LifecycleModel`` holds every fitted part (the feature builder's learned state, BG/NBD,
Gamma-Gamma and the two classifiers) and the horizons they were fitted for. BTYD applies to
customers who bought: for prospects (no purchase yet) its outputs are missing, and the
classifiers, trained on everyone known at the time, score them from their engagement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from models.btyd import PurchaseModel, SpendModel, clv, monthly_rate
from models.classifier import Classifier

DAYS_PER_MONTH = 365.25 / 12
NOT_FEATURES = ("customer_id", "as_of", "next_stage")
OUTPUT_COLUMNS = (
    "customer_id", "as_of", "stage", "lapsed", "recency_days", "frequency", "monetary_value", "T",
    "r_score", "f_score", "m_score", "rfm_segment", "p_alive", "expected_purchases", "expected_order_value", "clv",
    "churn_probability", "next_stage", "next_stage_probability", "churn_drivers", "next_stage_drivers",
    "model_version",
)


@dataclass
class Horizons:
    """What the predictions are about: the churn window, the CLV window and the discount rate."""

    churn_days: int = 90
    clv_days: int = 365
    annual_discount_rate: float = 0.10


def btyd_columns(purchases: PurchaseModel, spend: SpendModel, features: pd.DataFrame,
                 horizons: Horizons) -> pd.DataFrame:
    """P(alive), expected purchases, expected order value and CLV per row; missing for non-buyers."""
    buyers = (features["orders"] > 0).to_numpy()
    out = pd.DataFrame(np.nan, index=features.index,
                       columns=["p_alive", "expected_purchases", "expected_order_value", "clv"])
    if buyers.any():
        f, r, t, m = (features.loc[buyers, c].to_numpy(dtype=float)
                      for c in ("frequency", "recency", "T", "monetary_value"))
        out.loc[buyers, "p_alive"] = purchases.p_alive(f, r, t)
        out.loc[buyers, "expected_purchases"] = purchases.expected_purchases(horizons.churn_days, f, r, t)
        out.loc[buyers, "expected_order_value"] = spend.expected_order_value(f, m)
        months = max(1, round(horizons.clv_days / DAYS_PER_MONTH))
        out.loc[buyers, "clv"] = clv(purchases, spend, f, r, t, m, months=months,
                                     monthly_discount=monthly_rate(horizons.annual_discount_rate),
                                     month_length=horizons.clv_days / months)
    return out


def classifier_inputs(features: pd.DataFrame, btyd: pd.DataFrame) -> pd.DataFrame:
    """The classifiers' input: every feature except identifiers, plus the BTYD outputs."""
    return pd.concat([features.drop(columns=[c for c in NOT_FEATURES if c in features.columns]), btyd], axis=1)


@dataclass
class LifecycleModel:
    """Every fitted part of the service's predictions, applied together."""

    builder: FeatureBuilder
    purchases: PurchaseModel
    spend: SpendModel
    churn: Classifier
    next_stage: Classifier
    horizons: Horizons
    version: str | None = None

    def predict(self, features: pd.DataFrame, drivers: int = 3) -> pd.DataFrame:
        """Output records (one per feature row) in the order of ``OUTPUT_COLUMNS``."""
        features = features.reset_index(drop=True)
        btyd = btyd_columns(self.purchases, self.spend, features, self.horizons)
        inputs = classifier_inputs(features, btyd)
        out = pd.concat([features, btyd], axis=1)
        out["churn_probability"], out["churn_drivers"] = self.churn.predict_with_drivers(inputs, drivers)
        climbing = (features["next_stage"].notna()).to_numpy()
        out["next_stage_probability"] = np.nan
        out["next_stage_drivers"] = [[] for _ in range(len(out))]
        if climbing.any():
            probability, reasons = self.next_stage.predict_with_drivers(inputs[climbing], drivers)
            out.loc[climbing, "next_stage_probability"] = probability
            out.loc[climbing, "next_stage_drivers"] = pd.Series(reasons, index=out.index[climbing])
        out["model_version"] = self.version
        return out[list(OUTPUT_COLUMNS)]
