"""The whole scorer: feature rows in, the design's output records out.

``LifecycleModel`` holds every fitted part (the feature builder's learned state, the purchase
model, Gamma-Gamma, the two classifiers, the learned CLV), the horizons they were fitted for,
which of the churn classifier and the purchase model serves buyers' churn probability, which CLV
is served, and the profile of the features they were fitted on (for drift checks). BTYD applies
to customers who bought: for prospects (no purchase yet) its outputs, and so the CLVs, are
missing, and the classifiers, trained on everyone known at the time, score them from their
engagement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.build import FeatureBuilder
from models.actions import ValueTiers, activity_status, next_order_days
from models.btyd import PurchaseModel
from models.classifier import Classifier
from models.clv import discounted_value, monthly_rate
from models.drift import FeatureProfile
from models.gamma_gamma import SpendModel
from models.learned_clv import LearnedCLV
from models.risk import RiskBands

DAYS_PER_MONTH = 365.25 / 12
# Raised when this code can no longer use a model an older release fitted (2: three purchase models,
# the churn source, interpolated calibration; 3: purchases and spend over the CLV horizon with their
# intervals; 4: the learned CLV beside the BTYD one; 5: value tiers, risk bands, next orders; 6: activity status,
# the typical gap; 7: a twin per cut date, the track record and the decisions; 8: the weaknesses and the churn
# horizon derived from the shop); a model records the format it was fitted in.
MODEL_FORMAT = 8
FEW_DRIVER_ROWS = 64  # drivers of up to this many rows are joined in Python, of more by Arrow
Columns = Mapping[str, Any]  # feature columns by name: a DataFrame, or arrays (cheapest for a few rows)
NOT_FEATURES = ("customer_id", "as_of", "next_stage", "evidence", "typical_gap_days")  # record fields, not inputs
OUTPUT_COLUMNS = (
    "customer_id", "as_of", "evidence", "stage", "activity_status", "lapsed", "recency_days", "frequency",
    "monetary_value", "T", "r_score", "f_score", "m_score", "rfm_segment", "total_spend", "mean_days_between",
    "typical_gap_days", "next_order_date", "p_alive",
    "expected_purchases", "expected_order_value", "clv", "clv_btyd", "clv_learned", "total_clv", "value_tier",
    "clv_purchases", "clv_purchases_low", "clv_purchases_high", "clv_spend", "clv_spend_low", "clv_spend_high",
    "churn_probability", "churn_risk", "btyd_churn_probability", "next_stage", "next_stage_probability",
    "churn_drivers", "next_stage_drivers",
    "model_version",
)


@dataclass
class Horizons:
    """What the predictions are about: the churn window, the CLV window, the discount rate, the level of
    the prediction intervals and the churn probabilities that make a customer medium or high risk."""

    churn_days: int = 90
    clv_days: int = 365
    annual_discount_rate: float = 0.10
    interval: float = 0.8
    risk_bands: RiskBands = field(default_factory=RiskBands)

    @property
    def clv_month_ends(self) -> np.ndarray:
        """The CLV horizon in whole months (at least one, of equal length): the end of each, in days."""
        months = max(1, round(self.clv_days / DAYS_PER_MONTH))
        return np.arange(1, months + 1) * (self.clv_days / months)

    @property
    def interval_levels(self) -> tuple[float, float]:
        """The quantiles that bound the central interval: (0.1, 0.9) for 80 %."""
        return (1 - self.interval) / 2, (1 + self.interval) / 2


BTYD_COLUMNS = ("p_alive", "expected_purchases", "expected_order_value", "clv", "btyd_churn_probability",
                "clv_purchases", "clv_purchases_low", "clv_purchases_high", "clv_spend", "clv_spend_low",
                "clv_spend_high")


def btyd_columns(purchases: PurchaseModel, spend: SpendModel, features: Columns,
                 horizons: Horizons) -> dict[str, np.ndarray]:
    """Per row, missing for non-buyers: P(alive), expected purchases (over the churn horizon), expected order
    value, CLV, the purchase model's probability of no purchase over the churn horizon, and purchases and
    (undiscounted) spend over the CLV horizon with the bounds of their prediction intervals."""
    buyers = np.asarray(features["orders"], dtype=float) > 0
    out = {name: np.full(len(buyers), np.nan) for name in BTYD_COLUMNS}
    if buyers.any():
        f, r, t, m = (np.asarray(features[name], dtype=float)[buyers] for name in ("frequency", "recency", "T",
                                                                                  "monetary_value"))
        out["p_alive"][buyers] = alive = purchases.p_alive(f, r, t)
        # one evaluation for the churn horizon and the end of every month of the CLV horizon
        cumulative = purchases.expected_purchases(np.r_[horizons.churn_days, horizons.clv_month_ends], f, r, t)
        out["expected_purchases"][buyers] = cumulative[:, 0]
        out["expected_order_value"][buyers] = value = spend.expected_order_value(f, m)
        out["clv"][buyers] = discounted_value(value, cumulative[:, 1:], monthly_rate(horizons.annual_discount_rate))
        counts = purchases.future_purchases(horizons.clv_days, f, r, t, p_alive=alive)
        money = spend.future_spend(counts, f, m)
        low, high = horizons.interval_levels
        for name, distribution in (("clv_purchases", counts), ("clv_spend", money)):
            out[name][buyers], out[f"{name}_low"][buyers] = distribution.mean(), distribution.quantile(low)
            out[f"{name}_high"][buyers] = distribution.quantile(high)
        out["btyd_churn_probability"][buyers] = purchases.p_no_purchase(horizons.churn_days, f, r, t)
    return out


def classifier_inputs(features: Columns, btyd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The classifiers' input by column: every feature except identifiers, plus the BTYD outputs."""
    return {name: features[name] for name in features if name not in NOT_FEATURES} | dict(btyd)


@dataclass
class LifecycleModel:
    """Every fitted part of the service's predictions, applied together."""

    builder: FeatureBuilder
    purchases: PurchaseModel
    spend: SpendModel
    churn: Classifier
    next_stage: Classifier
    horizons: Horizons
    # The features of the population it was fitted on, to measure drift against (None in models
    # registered before drift checks existed: they report no drift).
    profile: FeatureProfile | None = None
    version: str | None = None
    # Which serves buyers' churn_probability: the classifier, or (when it did not beat it out of time)
    # the purchase model's P(no purchase); prospects always get the classifier's.
    churn_source: str = "classifier"
    # The learned CLV (None when the history was too short to learn one) and which CLV is served as ``clv``:
    # "btyd" or "learned" (both are in every record, as ``clv_btyd`` and ``clv_learned``).
    learned_clv: LearnedCLV | None = None
    clv_source: str = "btyd"
    # The served CLV's edges of the top 1 %, 5 %, ... of the buyers it was fitted on (None until learned).
    value_tiers: ValueTiers | None = None
    # How what serves did out of time, one row per cut date (newest first; training.judging.TRACK_RECORD), and each
    # choice of the training run with its evidence in a line.
    track_record: list[dict[str, Any]] = field(default_factory=list)
    decisions: dict[str, str] = field(default_factory=dict)
    # Why it is weak (it did not beat the simple baselines out of time, or ranks near chance): empty if it is not.
    weaknesses: list[str] = field(default_factory=list)
    currency: str | None = None  # the ISO code of every amount it was fitted on and predicts (None: not given)
    model_format: int = field(default_factory=lambda: MODEL_FORMAT)

    @property
    def quality(self) -> str:
        """``"weak"`` when the run learned little (``weaknesses``), else ``"ok"``."""
        return "weak" if self.weaknesses else "ok"

    def predict(self, features: pd.DataFrame, drivers: int = 3) -> pd.DataFrame:
        """Output records (one per feature row) in the order of ``OUTPUT_COLUMNS``; each row's ``drivers``
        largest contributions per classifier as JSON text (a type every MLflow flavour and Spark carries)."""
        return pd.DataFrame(self.predict_columns(features.reset_index(drop=True), drivers))

    def predict_columns(self, features: Columns, drivers: int = 3) -> dict[str, Any]:
        """``predict`` by column: feature columns by name in (a DataFrame, or arrays), output columns out.
        Without pandas in between, the fixed cost of a call (what a one-customer request pays) is small."""
        rows = len(features["customer_id"])
        btyd = btyd_columns(self.purchases, self.spend, features, self.horizons)
        inputs = classifier_inputs(features, btyd)
        churn, order, credit = self.churn.predict_with_drivers(inputs, drivers)
        churn_drivers = drivers_json(self.churn.features_, order, credit)
        if self.churn_source == "btyd":  # buyers get the purchase model's probability, which has no drivers
            scored = ~np.isnan(btyd["btyd_churn_probability"])
            churn = np.where(scored, btyd["btyd_churn_probability"], churn)
            churn_drivers = np.where(scored, "[]", churn_drivers).astype(object)
        climbing = np.asarray(pd.notna(features["next_stage"]), dtype=bool)
        probability, reasons = np.full(rows, np.nan), np.full(rows, "[]", dtype=object)
        if climbing.any():
            some = inputs if climbing.all() else {name: np.asarray(v)[climbing] for name, v in inputs.items()}
            probability[climbing], next_order, next_credit = self.next_stage.predict_with_drivers(some, drivers)
            reasons[climbing] = drivers_json(self.next_stage.features_, next_order, next_credit)
        clv, learned = self.served_clv(features, btyd)
        risk = np.where(np.asarray(features["evidence"]) == "none", None, self.horizons.risk_bands.band(churn))
        out = {name: features[name] for name in OUTPUT_COLUMNS if name in features} | btyd | {
            "clv": clv, "clv_btyd": btyd["clv"], "clv_learned": learned,
            "total_clv": np.asarray(features["total_spend"], dtype=float) + clv,
            "value_tier": self.value_tiers.tier(clv) if self.value_tiers else np.full(rows, None, dtype=object),
            "next_order_date": self.next_order_date(features), "churn_probability": churn,
            "churn_risk": risk, "next_stage_probability": probability,
            "activity_status": activity_status(features["recency_gaps"], features["frequency"], features["lapsed"],
                                               btyd["p_alive"], risk == "high", self.builder.activity),
            "churn_drivers": churn_drivers, "next_stage_drivers": reasons,
            "model_version": np.full(rows, self.version, dtype=object)}
        return {name: out[name] for name in OUTPUT_COLUMNS}

    def served_clv(self, features: Columns, btyd: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
        """Per row, the CLV served as ``clv`` and the learned one (NaN without one); ``btyd`` is ``btyd_columns`` of
        ``features`` where the caller has it."""
        if btyd is None:
            btyd = btyd_columns(self.purchases, self.spend, features, self.horizons)
        learned = (btyd["clv"] * self.learned_clv.multiplier(classifier_inputs(features, btyd)) if self.learned_clv
                   else np.full(len(btyd["clv"]), np.nan))
        return (learned if self.clv_source == "learned" else btyd["clv"]), learned

    def next_order_date(self, features: Columns) -> np.ndarray:
        """Per row, the day by which the customer is as likely as not to have ordered again (``next_order_days``
        within the CLV horizon); none for prospects and for customers less likely than not to order in it."""
        buyers = np.asarray(features["orders"], dtype=float) > 0
        wait = np.full(len(buyers), np.nan)
        if buyers.any():
            f, r, t = (np.asarray(features[name], dtype=float)[buyers] for name in ("frequency", "recency", "T"))
            wait[buyers] = next_order_days(self.purchases, f, r, t, self.horizons.clv_days)
        days = np.where(np.isnan(wait), 0, np.round(wait)).astype("timedelta64[D]")
        dates = np.asarray(features["as_of"], dtype="datetime64[D]") + days
        # in microseconds, as the feature table's dates come: a unit pandas, Arrow and Parquet all keep
        return np.where(np.isnan(wait), np.datetime64("NaT"), dates).astype("datetime64[us]")


def model_format(fitted: object) -> int:
    """The format a fitted model or twin was saved in (1: before formats were recorded)."""
    return vars(fitted).get("model_format", 1)


def drivers_json(names: list[str], order: np.ndarray, credit: np.ndarray) -> np.ndarray:
    """Per row, ``[{"feature": names[order[i, k]], "contribution": credit[i, k]}, ...]`` as JSON text. Many rows
    are built column-wise by Arrow (a Python loop would dominate scoring millions of rows); a few (an API
    request's) are joined in Python, cheaper than Arrow's calls. Both write the numbers as Arrow's cast does."""
    rows, top = order.shape
    if top == 0:
        return np.full(rows, "[]", dtype=object)
    quoted = [json.dumps(name) for name in names]
    if rows <= FEW_DRIVER_ROWS:
        numbers = pc.cast(pa.array(credit.ravel()), pa.string()).to_pylist()
        pairs = [f'{{"feature": {quoted[j]}, "contribution": {c}}}' for j, c in zip(order.ravel().tolist(), numbers,
                                                                                     strict=True)]
        return np.array(["[" + ", ".join(pairs[i * top:(i + 1) * top]) + "]" for i in range(rows)], dtype=object)
    names_array, pieces = pa.array(quoted), ["["]
    for k in range(top):
        pieces += ["{" if k == 0 else ", {", '"feature": ', names_array.take(pa.array(order[:, k])),
                   ', "contribution": ', pc.cast(pa.array(credit[:, k]), pa.string()), "}"]
    pieces.append("]")
    text = pc.binary_join_element_wise(*(pa.scalar(p) if isinstance(p, str) else p for p in pieces), "")
    return text.to_numpy(zero_copy_only=False)
