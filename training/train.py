"""The out-of-time training protocol.

With h the churn horizon and ``end`` the last day of data:
- classifiers are trained on features at t0 = end - 2h with labels from (t0, t0 + h], and
  evaluated on features at t1 = end - h with labels from (t1, end], beside the baselines (recency
  alone and 1 - P(alive) for churn);
- the purchase and value models need no labels to fit, so they are evaluated over the longest
  window that fits the data, up to the CLV horizon: fitted on the first half of the history and
  compared with what customers did in the second (on CDNOW: weeks 1-39, then weeks 40-78, the
  published protocol), beside the baselines (each customer's past purchase rate and spend rate);
- the model that scores at ``end`` is refitted with the classifiers' labels from (t1, end], and
  BG/NBD, Gamma-Gamma and the RFM edges on all the data up to ``end``. RFM scores are always
  relative to the population on the day they describe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.sources import Dataset
from models.btyd import PurchaseModel, SpendModel
from models.classifier import Classifier
from models.lifecycle import Horizons, LifecycleModel, btyd_columns, classifier_inputs
from training import evaluate

# Label columns joined to the features (orders renamed: the features have their own).
_LABELS = ["purchases", "orders_in_window", "spend", "churned", "reached_next_stage"]


@dataclass(frozen=True)
class Windows:
    """The dates of one run of the protocol."""

    first: date
    end: date
    t0: date
    t1: date
    btyd_calibration_end: date

    @property
    def btyd_holdout_days(self) -> int:
        return (self.end - self.btyd_calibration_end).days


def windows(first: date, end: date, horizons: Horizons) -> Windows:
    """The protocol's dates for data from ``first`` to ``end``; refuses too short a history."""
    h = timedelta(days=horizons.churn_days)
    t1, t0 = end - h, end - 2 * h
    if t0 <= first:
        raise LifecycleError(f"the data span {first}..{end}; the out-of-time protocol needs more than "
                             f"two churn horizons ({2 * horizons.churn_days} days)")
    holdout = min(horizons.clv_days, ((end - first).days + 1) // 2)
    return Windows(first, end, t0, t1, end - timedelta(days=holdout))


@dataclass
class TrainingResult:
    """The fitted model and everything measured on the way."""

    model: LifecycleModel
    windows: Windows
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    next_stage_auc_by_stage: dict[str, float] = field(default_factory=dict)


def train(data: Dataset, new_builder: Callable[[], FeatureBuilder], horizons: Horizons,
          seed: int = 0) -> TrainingResult:
    """Run the protocol on validated data; ``new_builder`` makes an unfitted, configured builder."""
    first, last = data.date_range()
    win = windows(first.date(), last.date(), horizons)
    metrics, baselines = _evaluate_btyd(data, new_builder(), win, horizons)

    train_builder = new_builder()
    train_at_t0 = _labelled(data, train_builder, win.t0, horizons, fit=True)
    purchases_t0, spend_t0 = _fit_btyd(train_at_t0)
    churn, next_stage = _fit_classifiers(train_at_t0, purchases_t0, spend_t0, horizons, seed)
    test = _labelled(data, train_builder, win.t1, horizons)
    btyd = btyd_columns(purchases_t0, spend_t0, test, horizons)
    inputs = classifier_inputs(test.drop(columns=_LABELS), btyd)
    churned = test["churned"].to_numpy()
    churn_metrics = evaluate.classification(churned, churn.predict_proba(inputs))
    metrics.update({f"churn_{k}": v for k, v in churn_metrics.items()})
    # A prospect has no recency: rank them as the longest-gone; BTYD's P(alive) does not apply to them.
    baselines["churn_roc_auc_recency"] = evaluate.ranking(churned, test["recency_days"].fillna(1e9))
    baselines["churn_roc_auc_p_alive"] = evaluate.ranking(churned, 1 - btyd["p_alive"].fillna(0))
    climbing = test["next_stage"].notna().to_numpy()
    reached = test.loc[climbing, "reached_next_stage"].astype(int).to_numpy()
    probability = next_stage.predict_proba(inputs[climbing])
    metrics["next_stage_roc_auc"] = evaluate.ranking(reached, probability)
    by_stage = evaluate.auc_by_group(reached, probability, test.loc[climbing, "stage"])

    final = _labelled(data, new_builder(), win.t1, horizons, fit=True)
    churn, next_stage = _fit_classifiers(final, *_fit_btyd(final), horizons, seed)
    # Population-relative state (RFM edges) is learned where the model will score: at the end.
    scoring_builder = new_builder()
    scoring = scoring_builder.fit_transform(data, win.end).df()
    model = LifecycleModel(scoring_builder, *_fit_btyd(scoring), churn, next_stage, horizons)
    return TrainingResult(model, win, metrics, baselines, by_stage)


def _labelled(data: Dataset, builder: FeatureBuilder, as_of: date, horizons: Horizons, fit: bool = False):
    """Features at ``as_of`` joined with their labels over the churn horizon."""
    features = (builder.fit_transform(data, as_of) if fit else builder.transform(data, as_of)).df()
    labels = builder.labels(data, as_of, horizons.churn_days).df().rename(columns={"orders": "orders_in_window"})
    return features.merge(labels[["customer_id", *_LABELS]], on="customer_id", validate="one_to_one")


def _fit_btyd(features: pd.DataFrame) -> tuple[PurchaseModel, SpendModel]:
    buyers = features[features["orders"] > 0]
    purchases = PurchaseModel().fit(buyers["frequency"], buyers["recency"], buyers["T"])
    return purchases, SpendModel().fit(buyers["frequency"], buyers["monetary_value"])


def _fit_classifiers(table: pd.DataFrame, purchases: PurchaseModel, spend: SpendModel, horizons: Horizons,
                     seed: int) -> tuple[Classifier, Classifier]:
    features = table.drop(columns=_LABELS)
    inputs = classifier_inputs(features, btyd_columns(purchases, spend, features, horizons))
    churn = Classifier(seed=seed).fit(inputs, table["churned"])
    climbing = table["next_stage"].notna().to_numpy()
    next_stage = Classifier(seed=seed).fit(inputs[climbing], table.loc[climbing, "reached_next_stage"].astype(int))
    return churn, next_stage


def _evaluate_btyd(data: Dataset, builder: FeatureBuilder, win: Windows,
                   horizons: Horizons) -> tuple[dict[str, float], dict[str, float]]:
    """Fit on the calibration period, compare with the holdout: purchases and value (CLV)."""
    calibration = builder.fit_transform(data, win.btyd_calibration_end).df()
    holdout = builder.labels(data, win.btyd_calibration_end, win.btyd_holdout_days).df()
    table = calibration.merge(holdout[["customer_id", "purchases", "spend"]], on="customer_id")
    table = table[table["orders"] > 0].reset_index(drop=True)
    purchases, spend = _fit_btyd(table)
    f, r, t = (table[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    predicted = purchases.expected_purchases(win.btyd_holdout_days, f, r, t)
    past_rate = f / np.maximum(t, 1) * win.btyd_holdout_days  # repeat purchases per day so far
    value_horizons = Horizons(horizons.churn_days, win.btyd_holdout_days, horizons.annual_discount_rate)
    clv = btyd_columns(purchases, spend, table, value_horizons)["clv"].to_numpy()
    spend_rate = table["total_spend"].to_numpy() / (t + 1) * win.btyd_holdout_days  # spend per day so far
    metrics = {f"holdout_purchases_{k}": v for k, v in evaluate.counts(table["purchases"], predicted).items()}
    metrics |= {f"clv_{k}": v for k, v in evaluate.value(table["spend"], clv).items()}
    baselines = {f"holdout_purchases_{k}_past_rate": v
                 for k, v in evaluate.counts(table["purchases"], past_rate).items()}
    baselines |= {f"clv_{k}_spend_rate": v for k, v in evaluate.value(table["spend"], spend_rate).items()}
    return metrics, baselines
