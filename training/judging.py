"""How a run is judged out of time: the evaluation twin (the models fitted before a cut date's windows), what it is
scored on and its metrics beside the simple baselines, and the track record of what serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.sources import Dataset
from models.btyd import PurchaseModel
from models.classifier import Classifier
from models.gamma_gamma import SpendModel
from models.learned_clv import LearnedCLV
from models.lifecycle import MODEL_FORMAT, Horizons, btyd_columns, classifier_inputs
from training import evaluate
from training.base import Base
from training.choices import CLV_SOURCES
from training.tables import LABELS, Sample, holdout_table, in_customer_order, labelled, value_table
from training.windows import Windows

# The track record of what serves, per cut date: churn beside recency alone, the CLV beside the past spend rate, and
# how often the holdout's purchases and spend fell in their prediction intervals (beside what the intervals stated).
TRACK_RECORD = ("churn_roc_auc", "churn_roc_auc_recency", "churn_brier", "clv_gini", "clv_gini_spend_rate",
                "clv_decile_mape", "clv_decile_mape_spend_rate", "holdout_purchases_interval_coverage",
                "holdout_purchases_interval_stated", "holdout_spend_interval_coverage",
                "holdout_spend_interval_stated")
# The newest cut date's out-of-time evaluation as `lifecycle train` shows it: (label, metric, baseline, the baseline's
# metric), the metrics as ``judge`` names them.
EVALUATION_TABLE = (
    ("churn ROC-AUC", "churn_roc_auc", "recency alone", "churn_roc_auc_recency"),
    ("classifier ROC-AUC, buyers", "churn_buyers_classifier_roc_auc", "P(no purchase)", "churn_buyers_roc_auc_btyd"),
    ("classifier Brier, buyers", "churn_buyers_classifier_brier", "P(no purchase)", "churn_buyers_brier_btyd"),
    ("churn PR-AUC", "churn_pr_auc", "", ""),
    ("churn Brier", "churn_brier", "", ""),
    ("churn ECE", "churn_ece", "", ""),
    ("next-stage ROC-AUC", "next_stage_roc_auc", "", ""),
    ("holdout purchases MAE", "holdout_purchases_mae", "past purchase rate", "holdout_purchases_mae_past_rate"),
    ("holdout purchases total error", "holdout_purchases_aggregate_error", "past purchase rate",
     "holdout_purchases_aggregate_error_past_rate"),
    ("purchases in their interval", "holdout_purchases_interval_coverage", "stated by the intervals",
     "holdout_purchases_interval_stated"),
    ("purchases interval, PIT coverage", "holdout_purchases_interval_pit", "", ""),
    ("spend in its interval", "holdout_spend_interval_coverage", "stated by the intervals",
     "holdout_spend_interval_stated"),
    ("spend interval, PIT coverage", "holdout_spend_interval_pit", "", ""),
)


@dataclass(frozen=True)
class EvaluationTwin:
    """The models a training run is judged by, all fitted strictly before its evaluation windows (built whole, once
    fitted; the run's choice of sources is a copy with ``dataclasses.replace``).

    Classifiers (and the BTYD models and feature builder behind their inputs) are fitted at t0
    with labels up to t1; the holdout BTYD models at the calibration end. A newer run's windows
    start no earlier, so the promotion gate can score an older champion's twin on the newest
    window without it having seen any of it.
    """

    builder: FeatureBuilder
    purchases: PurchaseModel
    spend: SpendModel
    churn: Classifier
    next_stage: Classifier
    holdout_purchases: PurchaseModel
    holdout_spend: SpendModel
    # The learned CLV fitted at end - 2L, and the feature builder and BTYD models fitted at end - L it scores with.
    learned_clv: LearnedCLV | None = None
    clv_builder: FeatureBuilder | None = None
    clv_purchases: PurchaseModel | None = None
    clv_spend: SpendModel | None = None
    churn_source: str = "classifier"  # what serves buyers' churn probability: "classifier" or "btyd"
    clv_source: str = "btyd"  # what serves ``clv``: "btyd" or "learned"
    model_format: int = field(default_factory=lambda: MODEL_FORMAT)


@dataclass
class Evaluation:
    """What a run was judged on, customer by customer, and the numbers computed from it.

    ``churn``: at t1, each customer's outcome, the classifier's probability, the purchase model's
    P(no purchase) (missing for prospects), recency and the served probability.
    ``next_stage``: the customers who can climb, their stage, outcome and probability.
    ``holdout``: buyers at the BTYD calibration end, their calibration frequency, holdout purchases
    and spend, and what the holdout models and the baseline predicted for them.
    ``value``: buyers at end - L, their spend over (end - L, end], and what the BTYD model, the learned
    CLV and the past spend rate predicted for it.
    ``purchase_models``: each candidate purchase model's holdout metrics (one row per model name).
    On shops of more than ``training.backtest.MOST_JUDGED`` customers, every table holds the run's judged sample of
    them (``training.tables.Sample``), not everyone.
    """

    churn: pd.DataFrame
    next_stage: pd.DataFrame
    holdout: pd.DataFrame
    value: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    next_stage_auc_by_stage: dict[str, float] = field(default_factory=dict)
    purchase_models: pd.DataFrame = field(default_factory=pd.DataFrame)


def judge(base: Base, twins: list[EvaluationTwin], cuts: list[Windows], horizons: Horizons, sample: Sample
          ) -> list[Evaluation]:
    """Score each twin on its cut date's windows (``twins[k]`` on ``cuts[k]``) beside the baselines, on the run's
    judged ``sample`` of the customers (``Sample.judged``). The judged customers' tables and every prediction are
    computed where the base's customers are (``Base.gather``: in partitions of customers on Spark, in one pass for
    every cut date); the metrics here, from those customers' rows.

    The served churn and CLV metrics (``churn_*``, ``clv_*``) follow the twins' choices of source.
    """
    parts = base.gather(partial(_judged_tables, twins=twins, cuts=cuts, horizons=horizons, sample=sample), sample)
    return [_scored(*(in_customer_order([part[k][table] for part in parts]) for table in range(4)), twin)
            for k, twin in enumerate(twins)]


def _judged_tables(data: Dataset, twins: list[EvaluationTwin], cuts: list[Windows], horizons: Horizons,
                   sample: Sample) -> list[tuple[pd.DataFrame, ...]]:
    """Per cut date, ``sample``'s customers in ``data`` as ``Evaluation`` holds them: (churn, next_stage, holdout,
    value), each in customer order."""
    tables = []
    for twin, win in zip(twins, cuts, strict=True):
        holdout = _btyd_holdout(holdout_table(data, twin.builder, win, horizons, sample), twin, win, horizons)
        value = _judged_value(value_table(data, twin.clv_builder, twin.clv_builder.transform(data, win.clv_judged),
                                          win.clv_judged, win.clv_label_days, sample), twin, win.clv_label_days,
                              horizons)
        test = labelled(data, twin.builder, twin.builder.transform(data, win.t1), win.t1, horizons, sample)
        btyd = pd.DataFrame(btyd_columns(twin.purchases, twin.spend, test, horizons), index=test.index)
        inputs = pd.DataFrame(classifier_inputs(test.drop(columns=LABELS), btyd))
        churn = pd.DataFrame({
            "customer_id": test["customer_id"],
            "churned": test["churned"].astype(int),
            "classifier": twin.churn.predict_proba(inputs),
            "btyd": btyd["btyd_churn_probability"],  # missing for prospects: the purchase model does not apply
            # A prospect has no recency: rank them as the longest-gone.
            "recency": test["recency_days"].fillna(1e9),
        })
        climbing = test["next_stage"].notna().to_numpy()
        next_stage = pd.DataFrame({
            "customer_id": test.loc[climbing, "customer_id"],
            "stage": test.loc[climbing, "stage"].astype(str),
            "reached": test.loc[climbing, "reached_next_stage"].astype(int),
            "probability": twin.next_stage.predict_proba(inputs[climbing]),
        })
        tables.append((churn, next_stage, holdout, value))
    return tables


def _scored(churn: pd.DataFrame, next_stage: pd.DataFrame, holdout: pd.DataFrame, value: pd.DataFrame,
            twin: EvaluationTwin) -> Evaluation:
    """The ``Evaluation`` of a twin's judged tables: their metrics beside the baselines'."""
    buyers = churn[churn.btyd.notna()]
    metrics = churn_metrics(churn, twin.churn_source)
    metrics |= {f"churn_buyers_classifier_{k}": v
                for k, v in evaluate.classification(buyers.churned, buyers.classifier).items()}
    metrics["next_stage_roc_auc"] = evaluate.ranking(next_stage.reached, next_stage.probability)
    metrics |= {f"holdout_purchases_{k}": v for k, v in evaluate.counts(holdout.purchases, holdout.predicted).items()}
    metrics |= clv_metrics(value, twin.clv_source)
    for source in value.columns.intersection(CLV_SOURCES):
        metrics |= {f"clv_{source}_{k}": v for k, v in evaluate.value(value.spend, value[source]).items()}
    for name in ("purchases", "spend"):
        table = holdout.filter(like=f"{name}_interval_").rename(columns=lambda c: c.split("_interval_")[1])
        metrics |= {f"holdout_{name}_interval_{k}": v for k, v in evaluate.coverage(table).items()}
    baselines = {"churn_roc_auc_recency": evaluate.ranking(churn.churned, churn.recency)}
    baselines |= {f"churn_buyers_{k}_btyd": v
                  for k, v in evaluate.classification(buyers.churned, buyers.btyd).items()}
    baselines |= {f"holdout_purchases_{k}_past_rate": v
                  for k, v in evaluate.counts(holdout.purchases, holdout.past_rate).items()}
    baselines |= {f"clv_{k}_spend_rate": v for k, v in evaluate.value(value.spend, value.spend_rate).items()}
    by_stage = evaluate.auc_by_group(next_stage.reached, next_stage.probability, next_stage.stage)
    return Evaluation(churn, next_stage, holdout, value, metrics, baselines, by_stage)


def churn_metrics(churn: pd.DataFrame, source: str) -> dict[str, float]:
    """The served churn probability's metrics (``churn_*``) when ``source`` serves buyers; sets ``served``."""
    churn["served"] = churn.btyd.where(churn.btyd.notna() & (source == "btyd"), churn.classifier)
    return {f"churn_{k}": v for k, v in evaluate.classification(churn.churned, churn.served).items()}


def clv_metrics(value: pd.DataFrame, source: str) -> dict[str, float]:
    """The served CLV's metrics (``clv_*``) when ``source`` (``"btyd"`` or ``"learned"``) serves it; sets ``served``."""
    value["served"] = value[source]
    return {f"clv_{k}": v for k, v in evaluate.value(value.spend, value.served).items()}


def value_inputs(table: pd.DataFrame, purchases: PurchaseModel, spend: SpendModel, horizons: Horizons,
                  days: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A ``value_table``'s learned-CLV inputs (the classifiers' inputs) and the BTYD expected spend over ``days``."""
    features = table.drop(columns=["spend"])
    inputs = pd.DataFrame(classifier_inputs(features, btyd_columns(purchases, spend, features, horizons)))
    f, r, t, m = (features[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    return inputs, spend.expected_order_value(f, m) * purchases.expected_purchases(days, f, r, t)


def _judged_value(table: pd.DataFrame, twin: EvaluationTwin, days: int, horizons: Horizons) -> pd.DataFrame:
    """What buyers at end - L spent over (end - L, end], beside the BTYD expected spend, the learned CLV's (when
    the twin has one) and the past spend rate carried forward, all over those ``days`` days, undiscounted."""
    inputs, expected = value_inputs(table, twin.clv_purchases, twin.clv_spend, horizons, days)
    value = pd.DataFrame({"customer_id": table["customer_id"], "spend": table["spend"].to_numpy(dtype=float),
                          "btyd": expected,
                          "spend_rate": table["total_spend"].to_numpy() / (table["T"].to_numpy() + 1) * days})
    if twin.learned_clv is not None:
        value["learned"] = expected * twin.learned_clv.multiplier(inputs)
    return value


def _btyd_holdout(table: pd.DataFrame, twin: EvaluationTwin, win: Windows, horizons: Horizons) -> pd.DataFrame:
    """The twin's holdout BTYD predictions beside what buyers did after the calibration end, with the
    prediction intervals of purchases and spend over the holdout and how they did (``purchases_interval_*``,
    ``spend_interval_*``: the columns of ``evaluate.intervals``).

    Baseline: each customer's past repeat-purchase rate, carried forward.
    """
    f, r, t, m = (table[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    days = win.btyd_holdout_days
    counts = twin.holdout_purchases.future_purchases(days, f, r, t)
    money = twin.holdout_spend.future_spend(counts, f, m)
    purchases, spend = table["purchases"].to_numpy(dtype=float), table["spend"].to_numpy(dtype=float)
    return pd.concat([pd.DataFrame({
        "customer_id": table["customer_id"],
        "frequency": f,
        "purchases": purchases,
        "predicted": twin.holdout_purchases.expected_purchases(days, f, r, t),
        "past_rate": f / np.maximum(t, 1) * days,
        "spend": spend,
    }), evaluate.intervals(counts, purchases, horizons.interval).add_prefix("purchases_interval_"),
        evaluate.intervals(money, spend, horizons.interval).add_prefix("spend_interval_")], axis=1)


def purchase_scores(model: PurchaseModel, holdout: pd.DataFrame, days: int, churn_days: int
                     ) -> tuple[np.ndarray, dict[str, float]]:
    """A calibration-window purchase model judged on the holdout (see ``choose_purchase_model``): each customer's
    holdout log-likelihood, and the metrics."""
    now = [holdout[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T")]
    end = [holdout[f"{c}_end"].to_numpy(dtype=float) for c in ("frequency", "recency", "T")]
    counts = evaluate.counts(holdout["purchases"], model.expected_purchases(days, *now))
    silent = evaluate.classification(holdout["churned"], model.p_no_purchase(churn_days, *now))
    ll = model.log_likelihood(*end) - model.log_likelihood(*now)
    return ll, {"holdout_log_likelihood": float(np.mean(ll)),
                **{f"holdout_purchases_{k}": v for k, v in counts.items()},
                "churn_roc_auc": silent["roc_auc"], "churn_brier": silent["brier"]}


def track_record_rows(table: pd.DataFrame) -> list[dict]:
    """A track record as JSON-ready rows: cut dates as text, missing numbers as None."""
    rows = table.astype({"cut": str}).to_dict("records")
    return [{k: None if pd.isna(v) else v for k, v in row.items()} for row in rows]
