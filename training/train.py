"""The out-of-time training protocol.

With h the churn horizon and ``end`` the last day of data:
- the purchase models need no labels to fit, so they are judged over the longest window that fits
  the data, up to the CLV horizon: fitted on the first half of the history and compared with what
  customers did in the second (on CDNOW: weeks 1-39, then weeks 40-78, the published protocol).
  Every candidate (BG/NBD, MBG/NBD, Pareto/NBD) is judged there; the configured one, or with
  ``auto`` the one with the highest holdout log-likelihood (see ``choose_purchase_model``), is
  used everywhere after. Its purchases and CLV are judged beside the baselines (each customer's past
  purchase rate and spend rate);
- classifiers are trained on features at t0 = end - 2h with labels from (t0, t0 + h], and
  evaluated on features at t1 = end - h with labels from (t1, end], beside the baselines: recency
  alone and the purchase model's own probability of no purchase in h. The churn classifier is
  served only if it beats that probability (ROC-AUC and Brier) on the buyers it scores; otherwise
  the service serves the purchase model's probability to buyers (``LifecycleModel.churn_source``);
- the learned CLV (``models.learned_clv``) needs labels of spend over a window of L days: the CLV
  horizon, or, where the history is too short for it, half of what is left after two churn horizons
  (on CDNOW: 183 days). It is fitted at end - 2L with labels from (end - 2L, end - L], and judged at
  end - L on (end - L, end] beside the BTYD model refitted at end - L (its expected spend over L
  days, undiscounted) and each customer's past spend rate. The CLV served is chosen there
  (``better_clv_source``);
- the model that scores at ``end`` is refitted with the classifiers' labels from (t1, end], the
  learned CLV's from (end - L, end], and the purchase model, Gamma-Gamma and the RFM edges on all
  the data up to ``end``. RFM scores are always relative to the population on the day they describe.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd

from features.build import FeatureBuilder, orders_sql
from features.errors import LifecycleError
from features.sources import Dataset
from models.actions import ValueTiers
from models.btyd import PurchaseModel
from models.classifier import Classifier
from models.drift import FeatureProfile
from models.gamma_gamma import SpendModel
from models.learned_clv import LearnedCLV
from models.lifecycle import (
    MODEL_FORMAT,
    NOT_FEATURES,
    Horizons,
    LifecycleModel,
    btyd_columns,
    classifier_inputs,
)
from models.likelihood import FitFailed
from models.purchase_models import PURCHASE_MODELS
from training import evaluate
from training.backtest import Bootstrap, Z, brier, decile_mape, gini, judged_sample, judged_share, mean, roc_auc
from training.choices import AUTO, CLV_SOURCES, CUTS, MAPE_SLACK
from training.forecast import forecast

# The least data training accepts, counted on the first day a model is fitted (the earlier of the purchase
# models' calibration end and t0); the history must also span more than two churn horizons (``windows``).
MIN_BUYERS = 100  # customers with an order
MIN_REPEAT_BUYERS = 20  # customers with orders on two or more days

# Penalizers tried, in order, when a fit fails at the configured one (see ``Fitter``).
RETRY_PENALIZERS = (0.001, 0.01, 0.1)

# The track record of what serves, per cut date: churn beside recency alone, the CLV beside the past spend rate, and
# how often the holdout's purchases and spend fell in their prediction intervals (beside what the intervals stated).
TRACK_RECORD = ("churn_roc_auc", "churn_roc_auc_recency", "churn_brier", "clv_gini", "clv_gini_spend_rate",
                "clv_decile_mape", "clv_decile_mape_spend_rate", "holdout_purchases_interval_coverage",
                "holdout_purchases_interval_stated", "holdout_spend_interval_coverage",
                "holdout_spend_interval_stated")
# The newest cut date's out-of-time evaluation as `lifecycle train` shows it: (label, metric, baseline, the baseline's
# metric), the metrics as ``evaluate_twin`` names them.
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
# A served churn probability or CLV that ranks below these (pooled over the cut dates) learned next to nothing
# (``weaknesses``).
NEAR_CHANCE_AUC = 0.55
NEAR_CHANCE_GINI = 0.1
# Tied purchase models (holdout log-likelihood within noise of the best) are settled in this order: customers who may
# leave at any time (Pareto/NBD), then after any purchase (MBG/NBD), and BG/NBD last, whose P(alive) is 1 for every
# customer without a repeat purchase by construction (under auto it serves only when nothing else fits: docs/models.md).
PREFERENCE = ("pareto_nbd", "mbgnbd", "bgnbd")
# Differences too small to act on, whatever the noise: holdout log-likelihood per customer (1e-4 is a likelihood ratio
# of e over 10,000 customers; models that meet at the same edge differ by the fits' rounding, ~1e-7), and the learned
# CLV's Gini gain over the BTYD CLV (a second model serves only for a gain of a Gini point or more, beyond noise).
LL_MARGIN = 1e-4
GINI_MARGIN = 0.01

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
    clv_label_days: int  # L, the learned CLV's label window

    @property
    def btyd_holdout_days(self) -> int:
        return (self.end - self.btyd_calibration_end).days

    @property
    def clv_fitted(self) -> date:
        """Where the learned CLV judged out of time is fitted: end - 2L."""
        return self.end - timedelta(days=2 * self.clv_label_days)

    @property
    def clv_judged(self) -> date:
        """Where the CLVs are judged, on (end - L, end]."""
        return self.end - timedelta(days=self.clv_label_days)


def windows(first: date, end: date, horizons: Horizons) -> Windows:
    """The protocol's dates for data from ``first`` to ``end``; refuses too short a history."""
    h = timedelta(days=horizons.churn_days)
    t1, t0 = end - h, end - 2 * h
    if t0 <= first:
        raise LifecycleError(f"the data span {first}..{end}; the out-of-time protocol needs more than "
                             f"two churn horizons ({2 * horizons.churn_days} days)")
    history = (end - first).days + 1
    holdout = min(horizons.clv_days, history // 2)
    label = max(1, min(horizons.clv_days, (history - 2 * horizons.churn_days) // 2))
    return Windows(first, end, t0, t1, end - timedelta(days=holdout), label)


@dataclass
class Fitter:
    """Fits BTYD models, recovering from failure with a penalizer, and keeps notes for the user.

    A purchase model's fit that finds no usable maximum (``FitFailed``) at the configured ``penalizer``
    is tried again with each larger one of ``RETRY_PENALIZERS``; the notes say which model needed which.
    Warnings from the fits (parameters at the edge of their range) become notes too, once each.
    """

    penalizer: float = 0.0
    found: dict[str, list[str]] = field(default_factory=dict)  # note -> the fits it is about
    fitted: dict[str, tuple] = field(default_factory=dict)  # a fit's inputs -> (model, its notes)

    def fit(self, model_type: type[PurchaseModel] | type[SpendModel], *columns, what: str = ""):
        """``model_type(penalizer).fit(*columns)``, with the retries (Gamma-Gamma takes no penalizer: ``SpendModel``
        is fitted once); ``what`` names the fit in the notes. A fit on inputs fitted before is not repeated (two of
        the protocol's dates coincide where the history is short)."""
        digest = hashlib.blake2b(model_type.__name__.encode())
        for column in columns:
            digest.update(np.ascontiguousarray(column, dtype=float).tobytes())
        key = digest.hexdigest()
        if (known := self.fitted.get(key)) is not None:
            model, lines = known
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model, failures = self._fit(model_type, columns, what)
            lines = [str(warning.message) for warning in caught] + failures
            self.fitted[key] = model, lines
        for line in lines:
            self.note(line, what)
        return model

    def _fit(self, model_type, columns, what: str) -> tuple:
        failures = []
        penalized = issubclass(model_type, PurchaseModel)
        penalizers = (self.penalizer, *(p for p in RETRY_PENALIZERS if p > self.penalizer)) if penalized else (None,)
        for penalizer in penalizers:
            try:
                model = (model_type(penalizer) if penalized else model_type()).fit(*columns)
            except FitFailed as exc:
                failures.append(f"{exc} (penalizer {penalizer:g})" if penalized else str(exc))
                continue
            if failures:
                return model, [f"{'; '.join(failures)}; fitted with penalizer {penalizer:g} (btyd.penalizer sets "
                               "the first one tried)"]
            return model, []
        if not penalized:
            raise LifecycleError(f"{failures[0]} [{what}]")
        tried = ", ".join(f"{p:g}" for p in penalizers)
        raise LifecycleError(f"{'; '.join(failures)} [{what}]: no penalizer helped (tried {tried}); "
                             "check the order log for one customer or amount that dwarfs the rest")

    @property
    def notes(self) -> list[str]:
        """One line per distinct note, with the fits it is about."""
        return [f"{note} [{', '.join(whats)}]" for note, whats in self.found.items()]

    def note(self, line: str, what: str) -> None:
        """Keep ``line`` as a note about the fit ``what`` (one note per line, whatever the values at an edge)."""
        line = re.sub(r" \([-+.e\d]+\)", "", line)  # the values at the edge: one note per parameter
        self.found.setdefault(line, []).append(what)


@dataclass
class EvaluationTwin:
    """The models a training run is judged by, all fitted strictly before its evaluation windows.

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
    them (``judged_sample``), not everyone.
    """

    churn: pd.DataFrame
    next_stage: pd.DataFrame
    holdout: pd.DataFrame
    value: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    next_stage_auc_by_stage: dict[str, float] = field(default_factory=dict)
    purchase_models: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class TrainingResult:
    """The fitted model, the features it was fitted on (every customer at the end of the data), and the backtest:
    per cut date, newest first, the protocol's windows, the evaluation twin and how it did out of time."""

    model: LifecycleModel
    features: pd.DataFrame
    cuts: list[Windows]
    twins: list[EvaluationTwin]
    backtest: list[Evaluation]
    notes: list[str] = field(default_factory=list)  # what the fits needed or found (see ``Fitter``)
    forecast: pd.DataFrame = field(default_factory=pd.DataFrame)  # the base's totals (``training.forecast``)
    judged_share: float = 1.0  # of the customers, that each cut date is judged on (``training.backtest.judged_share``)

    @property
    def windows(self) -> Windows:
        """The newest cut date's windows (its end is the last day of data)."""
        return self.cuts[0]

    @property
    def twin(self) -> EvaluationTwin:
        return self.twins[0]

    @property
    def evaluation(self) -> Evaluation:
        """How the newest twin did (it holds the purchase models' comparison over every cut date)."""
        return self.backtest[0]

    @property
    def decisions(self) -> dict[str, str]:
        """Each choice of the run, with its evidence, in a line (the model's)."""
        return self.model.decisions

    @property
    def track_record(self) -> pd.DataFrame:
        """What serves, per cut date (newest first), beside the simple baselines (``TRACK_RECORD``)."""
        rows = [{"cut": w.end, **{name: (e.metrics | e.baselines).get(name, np.nan) for name in TRACK_RECORD}}
                for w, e in zip(self.cuts, self.backtest, strict=True)]
        return pd.DataFrame(rows)


def train(data: Dataset, new_builder: Callable[[], FeatureBuilder], horizons: Horizons,
          seed: int = 0, classifier_params: dict | None = None, purchase_model: str = AUTO,
          as_of: date | None = None, penalizer: float = 0.0, clv_model: str = AUTO,
          mape_slack: float = MAPE_SLACK, cuts: int = CUTS) -> TrainingResult:
    """Run the protocol on validated data; ``new_builder`` makes an unfitted, configured builder.

    ``classifier_params`` override LightGBM's defaults (models.trees.DEFAULT_PARAMS);
    ``purchase_model`` is a name of ``PURCHASE_MODELS`` or ``"auto"`` (chosen on the holdouts);
    ``as_of`` trains as of that day, on nothing later (default: the last order day); ``penalizer``
    is the BTYD fits' first penalizer (see ``Fitter``); ``clv_model`` and ``mape_slack`` choose the CLV served
    (see ``better_clv_source``); ``cuts`` is the most cut dates the run is judged on (``cut_windows``).
    """
    fitter, bootstrap = Fitter(penalizer), Bootstrap(seed=seed)
    data.materialize()  # the protocol reads every table about ten times per cut date
    if as_of is not None:
        data.until(as_of)
    first, last = data.date_range()
    if first is None:
        raise LifecycleError(f"no valid order on or before {as_of}" if as_of else "no valid order to train on")
    wins = cut_windows(data, first.date(), as_of or last.date(), horizons, cuts)
    builders = [new_builder() for _ in wins]
    at_t0 = [_labelled(data, b, w.t0, horizons, fit=True) for b, w in zip(builders, wins, strict=True)]
    holdouts = [_holdout_table(data, b, w, horizons) for b, w in zip(builders, wins, strict=True)]
    share = judged_share(data.customers_count())
    fitted, compared, chosen = choose_purchase_model(holdouts, wins, horizons, purchase_model, fitter, bootstrap, share)
    model_type = PURCHASE_MODELS[chosen]
    twins, judged, evaluations = [], [], []
    for k, win in enumerate(wins):
        twin = fit_twin(at_t0[k], model_type, fitted[k][chosen], _fit_spend(holdouts[k], fitter, "holdout"),
                        horizons, builders[k], seed, classifier_params, fitter)
        judged.append(_fit_clv_twin(data, twin, new_builder, win, horizons, model_type, seed, fitter))
        twins.append(twin)
        evaluations.append(evaluate_twin(data, twin, win, horizons, holdouts[k], judged[k]))
    churn_source, churn_why = better_churn_source(evaluations, bootstrap)
    clv_source, clv_why = better_clv_source(evaluations, clv_model, mape_slack, bootstrap)
    for twin, evaluation in zip(twins, evaluations, strict=True):
        twin.churn_source, twin.clv_source = churn_source, clv_source if twin.learned_clv else "btyd"
        evaluation.metrics |= churn_metrics(evaluation.churn, churn_source)
        evaluation.metrics |= clv_metrics(evaluation.value, twin.clv_source)
    evaluations[0].purchase_models = compared
    win, twin = wins[0], twins[0]
    if clv_model not in (AUTO, clv_source):
        fitter.note(f"clv.model is {clv_model}, but no learned CLV could be fitted: the BTYD CLV is served", "CLV")

    final = _labelled(data, new_builder(), win.t1, horizons, fit=True)
    churn, next_stage = _fit_classifiers(final, *_fit_btyd(final, model_type, fitter, f"at {win.t1}"), horizons,
                                         seed, classifier_params)
    # Population-relative state (RFM edges) is learned where the model will score: at the end.
    scoring_builder = new_builder()
    scoring = scoring_builder.fit_transform(data, win.end).df()
    profile = FeatureProfile.fit(scoring.drop(columns=list(NOT_FEATURES)))
    learned = None if twin.learned_clv is None else _fit_learned_clv(
        judged[0], twin.clv_purchases, twin.clv_spend, horizons, win.clv_label_days, seed, fitter,
        f"learned CLV at {win.clv_judged}")
    model = LifecycleModel(scoring_builder, *_fit_btyd(scoring, model_type, fitter, f"at {win.end}"), churn,
                           next_stage, horizons, profile, churn_source=churn_source, learned_clv=learned,
                           clv_source=clv_source if learned else "btyd")
    model.value_tiers = ValueTiers.fit(model.served_clv(scoring)[0])
    totals = forecast(model.purchases, model.spend, horizons, scoring)
    model.weaknesses, quality = weaknesses(evaluations, bootstrap)
    model.decisions = {"purchase_model": compared.attrs["why"], "churn_source": churn_why, "clv_source": clv_why,
                       "quality": quality}
    result = TrainingResult(model, scoring, wins, twins, evaluations, fitter.notes, totals, share)
    model.track_record = track_record_rows(result.track_record)
    return result


def track_record_rows(table: pd.DataFrame) -> list[dict]:
    """A track record as JSON-ready rows: cut dates as text, missing numbers as None."""
    rows = table.astype({"cut": str}).to_dict("records")
    return [{k: None if pd.isna(v) else v for k, v in row.items()} for row in rows]


def cut_windows(data: Dataset, first: date, end: date, horizons: Horizons, cuts: int = CUTS) -> list[Windows]:
    """The protocol's windows at up to ``cuts`` cut dates one churn horizon apart, newest (``end``) first: as many
    as the history allows (each cut must pass ``windows`` and ``check_sufficient``); at least the newest."""
    found = []
    for k in range(cuts):
        try:
            win = windows(first, end - timedelta(days=k * horizons.churn_days), horizons)
            check_sufficient(data, win)
        except LifecycleError:
            if not found:
                raise
            break
        found.append(win)
    return found


def check_sufficient(data: Dataset, win: Windows) -> None:
    """Refuse, in one line, data too thin to learn from: fewer than ``MIN_BUYERS`` buyers or ``MIN_REPEAT_BUYERS``
    repeat buyers by the first day a model is fitted."""
    day = min(win.btyd_calibration_end, win.t0)
    buyers, repeat = data.con.execute(
        "SELECT count(*), count(*) FILTER (WHERE days > 1) FROM "
        f"(SELECT count(DISTINCT day) AS days FROM ({orders_sql(day)}) GROUP BY customer_id)").fetchall()[0]
    short = [f"{n:,} customers had ordered{on} (need at least {least})"
             for n, least, on in ((buyers, MIN_BUYERS, ""), (repeat, MIN_REPEAT_BUYERS, " on two or more days"))
             if n < least]
    if short:
        raise LifecycleError(f"too little data to train: by {day} (the first day a model is fitted) "
                             + " and ".join(short))


def choose_purchase_model(holdouts: list[pd.DataFrame], wins: list[Windows], horizons: Horizons, forced: str = AUTO,
                          fitter: Fitter | None = None, bootstrap: Bootstrap | None = None, share: float = 1.0
                          ) -> tuple[list[dict[str, PurchaseModel]], pd.DataFrame, str]:
    """Fit every purchase model on each cut date's calibration window and judge it on that cut's holdout.

    Returns the fitted candidates per cut date, their metrics (one row per model: means over the cut
    dates, and the difference of holdout log-likelihood from the best with its noise, ``tied`` when
    within noise or ``LL_MARGIN``) and the name chosen: ``forced`` unless it is ``"auto"``, else the first of
    ``PREFERENCE`` among the best and those tied with it, BG/NBD aside. The holdout log-likelihood is the mean per
    customer of log P(holdout purchases and their days | calibration history): a proper score of
    everything a purchase model predicts (how many purchases, when, and who is gone), with which the
    generating process wins on large enough data; it is computed on the ``share`` of the customers a run judges
    (``training.backtest.judged_share``). A candidate that cannot be fitted at some cut date,
    even penalized, is left out, with its reason. The choice and its evidence are in ``.attrs["why"]``.
    """
    fitter, bootstrap = fitter or Fitter(), bootstrap or Bootstrap()
    fitted: list[dict[str, PurchaseModel]] = [{} for _ in wins]
    scores: dict[str, list[dict[str, float]]] = {}
    lls: dict[str, list[np.ndarray]] = {}
    failures = {}
    scored = [judged_sample(h, share) for h in holdouts]
    for name, model in PURCHASE_MODELS.items():
        if forced not in (AUTO, name):
            continue
        try:
            for k, (holdout, win) in enumerate(zip(holdouts, wins, strict=True)):
                columns = [holdout[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T")]
                fitted[k][name] = fitter.fit(model, *columns, what=f"calibration to {win.btyd_calibration_end}")
        except LifecycleError as exc:
            failures[name] = str(exc)
            for candidates in fitted:
                candidates.pop(name, None)
            continue
        judged = [_purchase_scores(fitted[k][name], h, w.btyd_holdout_days, horizons.churn_days)
                  for k, (h, w) in enumerate(zip(scored, wins, strict=True))]
        lls[name] = [ll for ll, _ in judged]
        scores[name] = [score for _, score in judged]
    if not scores:
        raise LifecycleError("no purchase model could be fitted: " + "; ".join(failures.values()))
    for name, why in failures.items():
        fitter.note(f"{PURCHASE_MODELS[name].label} left out of the choice: {why}", "calibration")
    compared = pd.DataFrame({name: pd.DataFrame(rows).mean() for name, rows in scores.items()}).T

    def behind(leader: str, name: str):
        """``leader``'s holdout log-likelihood minus ``name``'s, pooled over the cut dates."""
        return bootstrap.difference(mean, [(h.customer_id, np.zeros(len(h)), lls[leader][k], lls[name][k])
                                           for k, h in enumerate(scored)], LL_MARGIN)

    # BG/NBD's P(alive) is 1 for every customer without a repeat purchase, by construction: under auto it is compared
    # but serves only if nothing else could be fitted.
    eligible = [name for name in compared.index if forced != AUTO or name != "bgnbd"] or list(compared.index)
    best = compared.holdout_log_likelihood[eligible].idxmax()
    differences = {name: behind(best, name) for name in compared.index}
    compared["ll_behind_best"] = [differences[name].mean for name in compared.index]
    compared["ll_noise"] = [differences[name].se * Z for name in compared.index]
    compared["tied"] = [name in eligible and (name == best or differences[name].verdict == "tie")
                        for name in compared.index]
    tied = [name for name in PREFERENCE if name in compared.index and compared.tied[name]]
    chosen = forced if forced != AUTO else tied[0]
    label = PURCHASE_MODELS[chosen].label
    if forced != AUTO:
        why = f"{label}, as configured (btyd.model)"
    elif len(tied) == 1:
        why = f"{label}: the highest holdout log-likelihood beyond noise over {len(wins)} cut date(s)"
    else:
        why = (f"{label}: tied with {', '.join(PURCHASE_MODELS[n].label for n in tied if n != chosen)} on holdout "
               f"log-likelihood over {len(wins)} cut date(s) (within noise or {LL_MARGIN:g} per customer); ties go to "
               f"{' > '.join(PURCHASE_MODELS[n].label for n in PREFERENCE)}")
    if chosen != "bgnbd" and "bgnbd" in compared.index:
        why += "; BG/NBD is compared but under auto does not serve (P(alive) = 1 for every one-time buyer)"
    compared.attrs["why"] = why
    return fitted, compared, chosen


def better_churn_source(evaluations: list[Evaluation], bootstrap: Bootstrap | None = None) -> tuple[str, str]:
    """What serves buyers' churn probability, with why: ``"classifier"`` if, pooled over the cut dates, it beats the
    purchase model's P(no purchase) on buyers beyond noise in ROC-AUC or Brier and is worse beyond noise in
    neither; else (a tie included) ``"btyd"``, the simpler model."""
    bootstrap = bootstrap or Bootstrap()
    buyers = [e.churn[e.churn.btyd.notna()] for e in evaluations]
    pairs = [(b.customer_id, b.churned, b.classifier, b.btyd) for b in buyers]
    auc, score = bootstrap.difference(roc_auc, pairs), bootstrap.difference(brier, pairs)
    verdicts = {auc.verdict, score.verdict}
    wins = "better" in verdicts and "worse" not in verdicts
    evidence = (f"classifier minus P(no purchase) on buyers over {auc.cuts} cut date(s): ROC-AUC {auc} ({auc.verdict}),"
                f" Brier improvement {score} ({score.verdict})")
    return ("classifier", f"the classifier: {evidence}") if wins else ("btyd", f"the purchase model: {evidence}")


def better_clv_source(evaluations: list[Evaluation], forced: str = AUTO, mape_slack: float = MAPE_SLACK,
                      bootstrap: Bootstrap | None = None) -> tuple[str, str]:
    """The CLV to serve, with why: ``forced`` (``"btyd"`` or ``"learned"``) unless it is ``"auto"``; else
    ``"learned"`` if, pooled over the cut dates it was judged on, it ranks the judged windows' spend better by more
    than ``GINI_MARGIN`` beyond noise (normalized Gini) and sizes it nearly as well (a mean decile MAPE at most
    ``mape_slack`` above the BTYD CLV's), else ``"btyd"``. Without a learned CLV at the newest cut date, always
    ``"btyd"``."""
    judged = [e for e in evaluations if "learned" in e.value]
    if not judged or "learned" not in evaluations[0].value:
        return "btyd", "the BTYD CLV: no learned CLV at the newest cut date (see the notes)"
    if forced != AUTO:
        return forced, f"the {forced} CLV, as configured (clv.model)"
    bootstrap = bootstrap or Bootstrap()
    ranking = bootstrap.difference(gini, [(e.value.customer_id, e.value.spend, e.value.learned, e.value.btyd)
                                          for e in judged], GINI_MARGIN)
    mape = {source: float(np.mean([e.metrics[f"clv_{source}_decile_mape"] for e in judged])) for source in CLV_SOURCES}
    sizes = mape["learned"] <= mape["btyd"] + mape_slack
    evidence = (f"learned minus BTYD Gini over {ranking.cuts} cut date(s) {ranking} ({ranking.verdict}); decile MAPE "
                f"{mape['learned']:.3f} vs {mape['btyd']:.3f} (slack {mape_slack:g})")
    if ranking.verdict == "better" and sizes:
        return "learned", f"the learned CLV: {evidence}"
    return "btyd", f"the BTYD CLV: {evidence}"


def weaknesses(evaluations: list[Evaluation], bootstrap: Bootstrap | None = None) -> tuple[list[str], str]:
    """What the run learned too little about, pooled over the cut dates, and the evidence in a line.

    Weak churn: the served probability does not rank churners better than recency alone beyond noise, or its
    ROC-AUC is below ``NEAR_CHANCE_AUC``. Weak CLV: the served CLV is not better than the past spend rate carried
    forward beyond noise in Gini or decile MAPE, or worse beyond noise in either, or its Gini is below
    ``NEAR_CHANCE_GINI``. A weak run's scores are still served where nothing better is (``registry.gate``).
    """
    bootstrap = bootstrap or Bootstrap()
    churn = bootstrap.difference(roc_auc, [(e.churn.customer_id, e.churn.churned, e.churn.served, e.churn.recency)
                                           for e in evaluations])
    pairs = [(e.value.customer_id, e.value.spend, e.value.served, e.value.spend_rate) for e in evaluations]
    ranking, sizing = bootstrap.difference(gini, pairs), bootstrap.difference(decile_mape, pairs)
    auc = float(np.mean([e.metrics["churn_roc_auc"] for e in evaluations]))
    value_gini = float(np.mean([e.metrics["clv_gini"] for e in evaluations]))
    over = f"over {churn.cuts} cut date(s)"
    found = []
    if churn.verdict != "better":
        found.append(f"churn is no better than recency alone {over} (ROC-AUC {churn}, {churn.verdict})")
    if auc < NEAR_CHANCE_AUC:
        found.append(f"churn ranks near chance (ROC-AUC {auc:.3f} {over})")
    verdicts = {ranking.verdict, sizing.verdict}
    if "better" not in verdicts or "worse" in verdicts:
        found.append(f"the CLV is no better than the past spend rate {over} (Gini {ranking}, {ranking.verdict}; "
                     f"decile MAPE improvement {sizing}, {sizing.verdict})")
    if value_gini < NEAR_CHANCE_GINI:
        found.append(f"the CLV ranks near chance (Gini {value_gini:.3f} {over})")
    evidence = (f"served minus baseline {over}: churn ROC-AUC vs recency alone {churn} ({churn.verdict}); CLV Gini vs "
                f"the past spend rate {ranking} ({ranking.verdict}), decile MAPE improvement {sizing} "
                f"({sizing.verdict})")
    return found, f"weak: {'; '.join(found)}" if found else f"not weak: {evidence}"


def clv_metrics(value: pd.DataFrame, source: str) -> dict[str, float]:
    """The served CLV's metrics (``clv_*``) when ``source`` (``"btyd"`` or ``"learned"``) serves it; sets ``served``."""
    value["served"] = value[source]
    return {f"clv_{k}": v for k, v in evaluate.value(value.spend, value.served).items()}


def churn_metrics(churn: pd.DataFrame, source: str) -> dict[str, float]:
    """The served churn probability's metrics (``churn_*``) when ``source`` serves buyers; sets ``served``."""
    churn["served"] = churn.btyd.where(churn.btyd.notna() & (source == "btyd"), churn.classifier)
    return {f"churn_{k}": v for k, v in evaluate.classification(churn.churned, churn.served).items()}


def fit_twin(at_t0: pd.DataFrame, model_type: type[PurchaseModel], holdout_purchases: PurchaseModel,
             holdout_spend: SpendModel, horizons: Horizons, builder: FeatureBuilder, seed: int = 0,
             classifier_params: dict | None = None, fitter: Fitter | None = None) -> EvaluationTwin:
    """Fit the models that ``evaluate_twin`` judges: classifiers (and the inputs' BTYD models) at t0."""
    purchases, spend = _fit_btyd(at_t0, model_type, fitter or Fitter(), "at t0")
    churn, next_stage = _fit_classifiers(at_t0, purchases, spend, horizons, seed, classifier_params)
    return EvaluationTwin(builder, purchases, spend, churn, next_stage, holdout_purchases, holdout_spend)


def evaluate_twin(data: Dataset, twin: EvaluationTwin, win: Windows, horizons: Horizons,
                  holdout_table: pd.DataFrame | None = None, value_table: pd.DataFrame | None = None) -> Evaluation:
    """Score ``twin`` on the windows ``win`` beside the baselines; ``holdout_table`` is ``_holdout_table`` of
    the twin's builder, ``value_table`` is ``_value_table`` of its CLV builder, when the caller has them already.

    The served churn and CLV metrics (``churn_*``, ``clv_*``) follow the twin's choices of source.
    """
    if holdout_table is None:
        holdout_table = _holdout_table(data, twin.builder, win, horizons)
    if value_table is None:
        value_table = _value_table(data, twin.clv_builder, win.clv_judged, win.clv_label_days, fit=False)
    share = judged_share(data.customers_count())
    holdout = _btyd_holdout(judged_sample(holdout_table, share), twin, win, horizons)
    value = _judged_value(judged_sample(value_table, share), twin, win.clv_label_days, horizons)
    test = judged_sample(_labelled(data, twin.builder, win.t1, horizons), share)
    btyd = pd.DataFrame(btyd_columns(twin.purchases, twin.spend, test, horizons), index=test.index)
    inputs = pd.DataFrame(classifier_inputs(test.drop(columns=_LABELS), btyd))
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


def _labelled(data: Dataset, builder: FeatureBuilder, as_of: date, horizons: Horizons, fit: bool = False):
    """Features at ``as_of`` joined with their labels over the churn horizon, in customer order.

    DuckDB returns rows in no fixed order; sorting makes the seeded splits, and so every run,
    reproducible.
    """
    features = (builder.fit_transform(data, as_of) if fit else builder.transform(data, as_of)).df()
    labels = builder.labels(data, as_of, horizons.churn_days).df().rename(columns={"orders": "orders_in_window"})
    table = features.merge(labels[["customer_id", *_LABELS]], on="customer_id", validate="one_to_one")
    return table.sort_values("customer_id", ignore_index=True)


def _fit_btyd(features: pd.DataFrame, model_type: type[PurchaseModel], fitter: Fitter, what: str
              ) -> tuple[PurchaseModel, SpendModel]:
    buyers = features[features["orders"] > 0]
    purchases = fitter.fit(model_type, buyers["frequency"], buyers["recency"], buyers["T"], what=what)
    return purchases, _fit_spend(buyers, fitter, what)


def _fit_spend(buyers: pd.DataFrame, fitter: Fitter, what: str) -> SpendModel:
    return fitter.fit(SpendModel, buyers["frequency"], buyers["monetary_value"], what=what)


def _fit_classifiers(table: pd.DataFrame, purchases: PurchaseModel, spend: SpendModel, horizons: Horizons,
                     seed: int, params: dict | None) -> tuple[Classifier, Classifier]:
    features = table.drop(columns=_LABELS)
    inputs = pd.DataFrame(classifier_inputs(features, btyd_columns(purchases, spend, features, horizons)),
                          index=features.index)
    churn = Classifier(params, seed=seed).fit(inputs, table["churned"])
    climbing = table["next_stage"].notna().to_numpy()
    next_stage = Classifier(params, seed=seed).fit(inputs[climbing],
                                                   table.loc[climbing, "reached_next_stage"].astype(int))
    return churn, next_stage


def _value_table(data: Dataset, builder: FeatureBuilder, as_of: date, days: int, fit: bool = True) -> pd.DataFrame:
    """Buyers at ``as_of`` (``builder`` fitted there unless not ``fit``): their features and ``spend`` over the
    next ``days`` days, in customer order."""
    features = (builder.fit_transform(data, as_of) if fit else builder.transform(data, as_of)).df()
    table = _with_window(features[features["orders"] > 0], builder.window(data, as_of, days), ["spend"])
    return table.sort_values("customer_id", ignore_index=True)


def _with_window(table: pd.DataFrame, window: duckdb.DuckDBPyRelation, columns: list[str]) -> pd.DataFrame:
    """``table`` (one row per customer) with ``columns`` of a ``FeatureBuilder.window``, 0 where a customer did not
    order in it."""
    done = window.df()[["customer_id", *columns]]
    return table.merge(done, on="customer_id", how="left", validate="one_to_one").fillna(dict.fromkeys(columns, 0))


def _value_inputs(table: pd.DataFrame, purchases: PurchaseModel, spend: SpendModel, horizons: Horizons,
                  days: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A ``_value_table``'s learned-CLV inputs (the classifiers' inputs) and the BTYD expected spend over ``days``."""
    features = table.drop(columns=["spend"])
    inputs = pd.DataFrame(classifier_inputs(features, btyd_columns(purchases, spend, features, horizons)))
    f, r, t, m = (features[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    return inputs, spend.expected_order_value(f, m) * purchases.expected_purchases(days, f, r, t)


def _fit_clv_twin(data: Dataset, twin: EvaluationTwin, new_builder: Callable[[], FeatureBuilder], win: Windows,
                  horizons: Horizons, model_type: type[PurchaseModel], seed: int, fitter: Fitter) -> pd.DataFrame:
    """Give ``twin`` what judges the CLVs at ``win``: the BTYD models and feature builder fitted at end - L, and the
    learned CLV fitted at end - 2L when the label window L is at least the churn horizon (else a note: it would
    learn from too little); returns the judged ``_value_table`` at end - L."""
    L = win.clv_label_days
    if horizons.churn_days <= L:
        at_fitted = _value_table(data, new_builder(), win.clv_fitted, L)
        try:  # end - 2L is earlier than the days check_sufficient vouches for: a young shop may have too few buyers
            btyd = _fit_btyd(at_fitted, model_type, fitter, f"at {win.clv_fitted}")
        except LifecycleError as exc:
            fitter.note(f"{exc}; the learned CLV is not fitted", f"cut date {win.end}")
        else:
            twin.learned_clv = _fit_learned_clv(at_fitted, *btyd, horizons, L, seed, fitter,
                                                f"learned CLV at {win.clv_fitted}")
    else:
        fitter.note(f"the learned CLV needs labels over at least the churn horizon ({horizons.churn_days} days); the "
                    f"history leaves {L}: not fitted", f"cut date {win.end}")
    twin.clv_builder = new_builder()
    at_judged = _value_table(data, twin.clv_builder, win.clv_judged, L)
    twin.clv_purchases, twin.clv_spend = _fit_btyd(at_judged, model_type, fitter, f"at {win.clv_judged}")
    return at_judged


def _fit_learned_clv(table: pd.DataFrame, purchases: PurchaseModel, spend: SpendModel, horizons: Horizons,
                     days: int, seed: int, fitter: Fitter, what: str) -> LearnedCLV | None:
    """The learned CLV fitted on a ``_value_table`` with the BTYD models fitted at its date; None (and a note about
    ``what``) when there is too little to learn from."""
    inputs, expected = _value_inputs(table, purchases, spend, horizons, days)
    try:
        return LearnedCLV(seed=seed).fit(inputs, table["spend"], expected)
    except LifecycleError as exc:
        fitter.note(f"{exc}; the BTYD CLV is served", what)
        return None


def _judged_value(table: pd.DataFrame, twin: EvaluationTwin, days: int, horizons: Horizons) -> pd.DataFrame:
    """What buyers at end - L spent over (end - L, end], beside the BTYD expected spend, the learned CLV's (when
    the twin has one) and the past spend rate carried forward, all over those ``days`` days, undiscounted."""
    inputs, expected = _value_inputs(table, twin.clv_purchases, twin.clv_spend, horizons, days)
    value = pd.DataFrame({"customer_id": table["customer_id"], "spend": table["spend"].to_numpy(dtype=float),
                          "btyd": expected,
                          "spend_rate": table["total_spend"].to_numpy() / (table["T"].to_numpy() + 1) * days})
    if twin.learned_clv is not None:
        value["learned"] = expected * twin.learned_clv.multiplier(inputs)
    return value


def _holdout_table(data: Dataset, builder: FeatureBuilder, win: Windows, horizons: Horizons) -> pd.DataFrame:
    """Buyers at the BTYD calibration end: their BTYD summary, what they did over the holdout (purchases,
    spend; ``churned``: no purchase in its first churn horizon) and their summary at the end
    (``frequency_end``, ``recency_end``, ``T_end``), in customer order."""
    cut = win.btyd_calibration_end
    table = _with_window(builder.summary(data, cut).df(), builder.window(data, cut, win.btyd_holdout_days),
                         ["purchases", "spend"])
    churn = builder.window(data, cut, horizons.churn_days).df()
    table["churned"] = ~table["customer_id"].isin(churn["customer_id"])
    end = builder.summary(data, win.end).df()[["customer_id", "frequency", "recency", "T"]]
    table = table.merge(end, on="customer_id", suffixes=("", "_end"), validate="one_to_one")
    return table.sort_values("customer_id", ignore_index=True)


def _purchase_scores(model: PurchaseModel, holdout: pd.DataFrame, days: int, churn_days: int
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
