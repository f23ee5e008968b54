"""The plots logged with every training run (PNG), drawn from its out-of-time evaluation.

Figures are built with matplotlib's object API (no pyplot state), so plotting is safe in any
thread and needs no display.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from models.btyd import PurchaseModel
from training.train import TrainingResult

# Prospects have no P(no purchase) from the purchase model: its curves rank them first (as certain churners).
CHURN_SCORES = {"served churn probability": "served", "LightGBM churn classifier": "classifier",
                "purchase model's P(no purchase)": "btyd", "recency alone": "recency"}
MAX_FREQUENCY_SHOWN = 0.995  # quantile of calibration frequency the matrices reach (the rest is a sparse tail)


def figures(result: TrainingResult) -> dict[str, Figure]:
    """Every plot of a run, by file name (without .png)."""
    evaluation, w = result.evaluation, result.windows
    age = (w.btyd_calibration_end - w.first).days
    top = max(1, int(np.quantile(evaluation.holdout.frequency, MAX_FREQUENCY_SHOWN)))
    purchases = result.twin.holdout_purchases
    where = f"{purchases.label} fitted to {w.btyd_calibration_end}"
    return {
        "expected_purchases_matrix": frequency_recency_matrix(
            purchases, top, age, w.btyd_holdout_days,
            f"{where}: expected purchases in the next {w.btyd_holdout_days} days"),
        "p_alive_matrix": frequency_recency_matrix(purchases, top, age, None, f"{where}: P(alive)"),
        "calibration_vs_holdout_purchases": calibration_vs_holdout(evaluation.holdout, w.btyd_holdout_days,
                                                                   purchases.label),
        "churn_reliability": reliability(evaluation.churn),
        "churn_roc": churn_curves(evaluation.churn, "roc"),
        "churn_pr": churn_curves(evaluation.churn, "pr"),
        "churn_cumulative_gain": cumulative_gain(evaluation.churn),
        "clv_deciles": clv_deciles(evaluation.value, w.clv_label_days, result.model.clv_source),
        "interval_coverage": interval_coverage(evaluation.holdout, result.model.horizons.interval,
                                               w.btyd_holdout_days),
        "feature_importance": feature_importance({"churn": result.model.churn.importance(),
                                                  "next stage": result.model.next_stage.importance()}),
    }


def frequency_recency_matrix(model: PurchaseModel, max_frequency: int, age: float, horizon: float | None,
                             title: str) -> Figure:
    """Expected purchases over ``horizon`` (or P(alive) if None) for a customer of age ``age`` by (x, t_x)."""
    frequency = np.arange(max_frequency + 1, dtype=float)
    recency = np.linspace(0, age, 101)
    x, t_x = (a.ravel() for a in np.meshgrid(frequency, recency, indexing="ij"))
    T = np.full_like(x, age)
    values = model.p_alive(x, t_x, T) if horizon is None else model.expected_purchases(horizon, x, t_x, T)
    figure = Figure(figsize=(7, 5.5))
    ax = figure.subplots()
    image = ax.imshow(values.reshape(len(frequency), len(recency)), origin="lower", aspect="auto", cmap="viridis",
                      extent=(0, age, -0.5, max_frequency + 0.5))
    figure.colorbar(image, ax=ax)
    ax.set(xlabel=f"recency: age at last purchase (days, of {age:.0f})", ylabel="frequency: repeat purchases",
           title=title)
    ax.title.set_fontsize(10)
    return figure


def calibration_vs_holdout(holdout: pd.DataFrame, days: int, model: str, groups: int = 8) -> Figure:
    """Mean holdout purchases, actual and predicted, by purchases in the calibration period."""
    bucket = holdout.frequency.clip(upper=groups - 1).astype(int)
    means = holdout.groupby(bucket)[["purchases", "predicted", "past_rate"]].mean()
    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    ax.plot(means.index, means.purchases, "o-", label="actual")
    ax.plot(means.index, means.predicted, "s--", label=model)
    ax.plot(means.index, means.past_rate, "^:", label="past purchase rate")
    ax.set_xticks(means.index, [*map(str, means.index[:-1]), f"{means.index[-1]}+"])
    ax.set(xlabel="repeat purchases in the calibration period", ylabel=f"mean purchases in the next {days} days",
           title="calibration period vs holdout purchases")
    ax.legend()
    return figure


def reliability(churn: pd.DataFrame, bins: int = 10) -> Figure:
    """Observed churn rate against the predicted probability (ten equal-width bins)."""
    observed, predicted = calibration_curve(churn.churned, churn.served, n_bins=bins)
    figure = Figure(figsize=(5.5, 5))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.plot(predicted, observed, "o-", label="served churn probability")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate", title="churn reliability curve",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    return figure


def churn_curves(churn: pd.DataFrame, kind: str) -> Figure:
    """ROC (``kind="roc"``) or precision-recall (``"pr"``) curves of the model and the two baselines."""
    figure = Figure(figsize=(5.5, 5))
    ax = figure.subplots()
    for label, column in CHURN_SCORES.items():
        score = churn[column].fillna(1.0)
        if kind == "roc":
            fpr, tpr, _ = roc_curve(churn.churned, score)
            ax.plot(fpr, tpr, label=label)
        else:
            precision, recall, _ = precision_recall_curve(churn.churned, score)
            ax.plot(recall, precision, label=label)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="churn ROC curve")
    else:
        ax.axhline(churn.churned.mean(), linestyle=":", color="grey")
        ax.set(xlabel="recall", ylabel="precision", title="churn precision-recall curve")
    ax.legend()
    return figure


def cumulative_gain(churn: pd.DataFrame) -> Figure:
    """Share of all churners found when contacting the customers ranked most likely to churn first."""
    figure = Figure(figsize=(5.5, 5))
    ax = figure.subplots()
    share = np.arange(1, len(churn) + 1) / len(churn)
    for label, column in CHURN_SCORES.items():
        ranked = churn.churned.to_numpy()[np.argsort(-churn[column].fillna(1.0).to_numpy(), kind="stable")]
        ax.plot(share, np.cumsum(ranked) / ranked.sum(), label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="random")
    ax.set(xlabel="share of customers contacted", ylabel="share of churners found", title="churn cumulative gain")
    ax.legend()
    return figure


CLV_PREDICTIONS = {"btyd": "BTYD CLV", "learned": "learned CLV", "spend_rate": "past spend rate"}


def clv_deciles(value: pd.DataFrame, days: int, served: str, groups: int = 10) -> Figure:
    """Per decile of each prediction (BTYD, learned, past spend rate): its mean against the mean actual spend
    over the judged window, one panel each, the served CLV marked."""
    shown = [name for name in CLV_PREDICTIONS if name in value]
    figure = Figure(figsize=(4.5 * len(shown), 4.5))
    for ax, name in zip(figure.subplots(1, len(shown), sharey=True, squeeze=False)[0], shown, strict=True):
        ranked = value.iloc[np.argsort(-value[name].to_numpy(), kind="stable")]
        decile = np.repeat(np.arange(1, groups + 1), [len(part) for part in np.array_split(np.arange(len(ranked)),
                                                                                              groups)])
        means = ranked.groupby(decile)[[name, "spend"]].mean()
        width = 0.4
        ax.bar(means.index - width / 2, means[name], width, label="predicted")
        ax.bar(means.index + width / 2, means.spend, width, label=f"actual spend, next {days} days")
        ax.set_xticks(means.index)
        ax.set(xlabel="decile of the prediction (1 = highest)",
               title=CLV_PREDICTIONS[name] + (" (served)" if name == served else ""))
        ax.legend()
    figure.axes[0].set_ylabel("mean per customer")
    return figure


def interval_coverage(holdout: pd.DataFrame, level: float, days: int, groups: int = 10) -> Figure:
    """Share of customers whose holdout purchases and spend fell in their prediction interval, beside the
    probability the intervals stated, per decile of expected purchases (atoms at 0 lift both above the level)."""
    ranked = holdout.iloc[np.argsort(-holdout.predicted.to_numpy(), kind="stable")]
    decile = np.repeat(np.arange(1, groups + 1), [len(part) for part in np.array_split(np.arange(len(ranked)),
                                                                                          groups)])
    figure = Figure(figsize=(10, 4.5))
    for ax, name in zip(figure.subplots(1, 2, sharey=True), ("purchases", "spend"), strict=True):
        means = ranked.groupby(decile)[[f"{name}_interval_inside", f"{name}_interval_stated"]].mean()
        pit = ranked[f"{name}_interval_pit"].mean()
        ax.plot(means.index, means.iloc[:, 0], "o-", label="actual coverage")
        ax.plot(means.index, means.iloc[:, 1], "s--", label="stated by the intervals")
        ax.axhline(level, linestyle=":", color="grey", label=f"level {level:.0%}")
        ax.set_xticks(means.index)
        ax.set(xlabel="decile of expected purchases (1 = most)", ylim=(0, 1.02),
               title=f"{name} in the next {days} days (PIT coverage {pit:.3f})")
        ax.title.set_fontsize(10)
    figure.axes[0].set_ylabel("share of customers inside their interval")
    figure.axes[0].legend(loc="lower left")
    return figure


def feature_importance(importances: dict[str, pd.Series], top: int = 15) -> Figure:
    """The ``top`` features of each classifier by total LightGBM gain."""
    figure = Figure(figsize=(6 * len(importances), 5.5))
    for ax, (name, gain) in zip(figure.subplots(1, len(importances), squeeze=False)[0], importances.items(),
                                strict=True):
        total = gain.sum()
        shown = gain.head(top)[::-1]
        ax.barh(shown.index, shown.to_numpy() / total if total > 0 else 0.0)
        ax.set(xlabel="share of total gain",
               title=f"{name} model: feature importance" + ("" if total > 0 else " (no tree split)"))
    figure.tight_layout()
    return figure
