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

The phases are the methods of ``Protocol``, in the order ``Protocol.run`` calls them; the cut dates and their windows
are in ``training.windows``, the tables in ``training.tables``, the judging in ``training.judging`` and the decisions
in ``training.decisions``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.sources import Dataset
from models.actions import ValueTiers
from models.btyd import PurchaseModel
from models.classifier import Classifier
from models.drift import FeatureProfile
from models.gamma_gamma import SpendModel
from models.learned_clv import LearnedCLV
from models.lifecycle import NOT_FEATURES, Horizons, LifecycleModel, btyd_columns, classifier_inputs
from models.purchase_models import PURCHASE_MODELS
from training.backtest import Bootstrap
from training.base import Base
from training.choices import AUTO, CUTS, MAPE_SLACK, SAMPLE_CUSTOMERS
from training.decisions import better_churn_source, better_clv_source, choose_purchase_model, weaknesses
from training.fitter import Fitter
from training.judging import (
    TRACK_RECORD,
    Evaluation,
    EvaluationTwin,
    churn_metrics,
    clv_metrics,
    judge,
    track_record_rows,
    value_inputs,
)
from training.tables import LABELS, Holdout, Sample, holdouts, labelled, sampled, scratch, value_table
from training.windows import Windows, cut_windows


@dataclass(frozen=True)
class TrainingConfig:
    """What a run of the protocol is told, built once (``lifecycle.training.training_config``: from the settings).

    ``new_builder`` makes an unfitted, configured feature builder; ``classifier_params`` override LightGBM's defaults
    (models.trees.DEFAULT_PARAMS); ``purchase_model`` is a name of ``PURCHASE_MODELS`` or ``"auto"`` (chosen on the
    holdouts: ``choose_purchase_model``); ``penalizer`` is the BTYD fits' first penalizer (``Fitter``); ``clv_model``
    and ``mape_slack`` choose the CLV served (``better_clv_source``); ``cuts`` is the most cut dates the run is judged
    on (``cut_windows``); ``sample_customers`` the most customers the classifiers and the learned CLV learn from
    (``training.tables.Sample``).
    """

    new_builder: Callable[[], FeatureBuilder] = FeatureBuilder
    horizons: Horizons = field(default_factory=Horizons)
    seed: int = 0
    classifier_params: dict | None = None
    purchase_model: str = AUTO
    penalizer: float = 0.0
    clv_model: str = AUTO
    mape_slack: float = MAPE_SLACK
    cuts: int = CUTS
    sample_customers: int = SAMPLE_CUSTOMERS


@dataclass
class TrainingResult:
    """The fitted model, the features at the end of the data of the customers it learned from (everyone, or the
    training sample on larger shops: ``TrainingConfig.sample_customers``), and the backtest: per cut date, newest
    first, the protocol's windows, the evaluation twin and how it did out of time."""

    model: LifecycleModel
    features: pd.DataFrame
    cuts: list[Windows]
    twins: list[EvaluationTwin]
    backtest: list[Evaluation]
    notes: list[str] = field(default_factory=list)  # what the fits needed or found (see ``Fitter``)
    forecast: pd.DataFrame = field(default_factory=pd.DataFrame)  # the base's totals (``models.forecast``)
    judged_share: float = 1.0  # of the customers, that each cut date is judged on (``training.backtest.judged_share``)
    customers: int = 0  # known at the end of the data: ``features`` holds them all, or the training sample of them

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


def train(data: Dataset | Base, config: TrainingConfig | None = None) -> TrainingResult:
    """Run the protocol on validated data as it stands (to its last order, or to the day ``Dataset.until`` cut it
    to), or on a ``Base`` that answers for the whole of it (``training.spark``)."""
    return Protocol(data if isinstance(data, Base) else Base(data), config or TrainingConfig()).run()


class Protocol:
    """One run of the protocol on a shop's whole base: its phases, in the order ``Protocol.run`` calls them."""

    def __init__(self, base: Base, config: TrainingConfig):
        self.base, self.data, self.config, self.horizons = base, base.data, config, config.horizons
        self.fitter, self.bootstrap = Fitter(config.penalizer), Bootstrap(seed=config.seed)

    def run(self) -> TrainingResult:
        """Judge at every cut date, decide on the backtest, then fit what serves at the end."""
        cuts = self.cut_dates()
        self.judged = Sample.judged(self.base.customers())
        self.trained = Sample.trained(self.config.sample_customers, self.base.known())
        builders = [self.config.new_builder() for _ in cuts]
        calibrations = holdouts(self.base, builders, cuts, self.horizons, self.judged)
        fitted, compared, chosen = choose_purchase_model(calibrations, cuts, self.horizons, self.config.purchase_model,
                                                         self.fitter, self.bootstrap)
        model_type = PURCHASE_MODELS[chosen]
        twins = [self.twin(*cut, model_type) for cut in zip(cuts, builders, calibrations, [f[chosen] for f in fitted],
                                                            strict=True)]
        evaluations = judge(self.base, twins, cuts, self.horizons, self.judged)
        twins, why = self.decide(twins, evaluations)
        evaluations[0].purchase_models = compared
        model, scoring, totals, customers = self.fit_served(cuts[0], twins[0], model_type)
        model.weaknesses, quality = weaknesses(evaluations, self.bootstrap)
        model.decisions = {"purchase_model": compared.attrs["why"], **why, "quality": quality}
        result = TrainingResult(model, scoring, cuts, twins, evaluations, self.fitter.notes, totals, self.judged.share,
                                customers)
        model.track_record = track_record_rows(result.track_record)
        return result

    def cut_dates(self) -> list[Windows]:
        """The windows of every cut date the data allows, newest first."""
        self.data.materialize()  # the protocol reads every table about ten times per cut date
        first, last = self.base.date_range()
        if first is None:
            as_of = self.data.as_of
            raise LifecycleError(f"no valid order on or before {as_of}" if as_of else "no valid order to train on")
        return cut_windows(self.base, first.date(), self.data.as_of or last.date(), self.horizons, self.config.cuts)

    def twin(self, win: Windows, builder: FeatureBuilder, calibration: Holdout, holdout_purchases: PurchaseModel,
             model_type: type[PurchaseModel]) -> EvaluationTwin:
        """The evaluation twin of one cut date (``builder`` to be fitted at t0, ``calibration`` its BTYD calibration
        and holdout)."""
        holdout_spend = self.fitter.spend(calibration.rows, "holdout")
        with scratch(self.data.con):
            fitted = self.base.fit(builder, win.t0)
            purchases, spend = self.fitter.btyd(fitted.rows, model_type, "at t0")
            churn, next_stage = self.classifiers(
                labelled(self.data, builder, fitted.features, win.t0, self.horizons, self.trained), purchases, spend)
        return EvaluationTwin(builder, purchases, spend, churn, next_stage, holdout_purchases, holdout_spend,
                              **self.clv_twin(win, model_type))

    def clv_twin(self, win: Windows, model_type: type[PurchaseModel]) -> dict:
        """The twin's ``clv_*`` and ``learned_clv`` fields at ``win``: the BTYD models and feature builder fitted at
        end - L, and the learned CLV fitted at end - 2L when the label window L is at least the churn horizon (else a
        note: it would learn from too little)."""
        new_builder, fitter, L = self.config.new_builder, self.fitter, win.clv_label_days
        learned = None
        if self.horizons.churn_days <= L:
            with scratch(self.data.con):
                fitted_builder = new_builder()
                fitted = self.base.fit(fitted_builder, win.clv_fitted)
                try:  # end - 2L is earlier than check_sufficient vouches for: a young shop may have too few buyers
                    btyd = fitter.btyd(fitted.rows, model_type, f"at {win.clv_fitted}")
                except LifecycleError as exc:
                    fitter.note(f"{exc}; the learned CLV is not fitted", f"cut date {win.end}")
                else:
                    at_fitted = value_table(self.data, fitted_builder, fitted.features, win.clv_fitted, L,
                                            self.trained_buyers(win.clv_fitted))
                    learned = self.learned_clv(at_fitted, *btyd, L, f"learned CLV at {win.clv_fitted}")
        else:
            fitter.note(f"the learned CLV needs labels over at least the churn horizon ({self.horizons.churn_days} "
                        f"days); the history leaves {L}: not fitted", f"cut date {win.end}")
        builder = new_builder()
        with scratch(self.data.con):
            fitted = self.base.fit(builder, win.clv_judged)
            purchases, spend = fitter.btyd(fitted.rows, model_type, f"at {win.clv_judged}")
        return {"learned_clv": learned, "clv_builder": builder, "clv_purchases": purchases, "clv_spend": spend}

    def decide(self, twins: list[EvaluationTwin], evaluations: list[Evaluation]
               ) -> tuple[list[EvaluationTwin], dict[str, str]]:
        """Choose the churn and CLV sources on the backtest: the twins with the choice (and their evaluations' served
        metrics) and each choice's line."""
        churn_source, churn_why = better_churn_source(evaluations, self.bootstrap)
        clv_source, clv_why = better_clv_source(evaluations, self.config.clv_model, self.config.mape_slack,
                                                self.bootstrap)
        twins = [replace(twin, churn_source=churn_source, clv_source=clv_source if twin.learned_clv else "btyd")
                 for twin in twins]
        for twin, evaluation in zip(twins, evaluations, strict=True):
            evaluation.metrics |= churn_metrics(evaluation.churn, twin.churn_source)
            evaluation.metrics |= clv_metrics(evaluation.value, twin.clv_source)
        if self.config.clv_model not in (AUTO, clv_source):
            self.fitter.note(f"clv.model is {self.config.clv_model}, but no learned CLV could be fitted: the BTYD "
                             "CLV is served", "CLV")
        return twins, {"churn_source": churn_why, "clv_source": clv_why}

    def fit_served(self, win: Windows, twin: EvaluationTwin, model_type: type[PurchaseModel]
                   ) -> tuple[LifecycleModel, pd.DataFrame, pd.DataFrame, int]:
        """The model that scores at the end, with the newest ``twin``'s choices, the training sample's features there,
        the base's forecast and how many customers the data knows there: classifiers with labels over (t1, end], the
        learned CLV with labels over (end - L, end], the purchase model, Gamma-Gamma and the population-relative state
        (RFM edges) on all the data up to the end."""
        data, new_builder, horizons, L = self.data, self.config.new_builder, self.horizons, win.clv_label_days
        with scratch(data.con):
            builder = new_builder()
            fitted = self.base.fit(builder, win.t1)
            btyd = self.fitter.btyd(fitted.rows, model_type, f"at {win.t1}")
            churn, next_stage = self.classifiers(
                labelled(data, builder, fitted.features, win.t1, horizons, self.trained), *btyd)
        learned = None if twin.learned_clv is None else self.learned_clv(
            value_table(data, twin.clv_builder, twin.clv_builder.transform(data, win.clv_judged), win.clv_judged, L,
                        self.trained_buyers(win.clv_judged)),
            twin.clv_purchases, twin.clv_spend, L, f"learned CLV at {win.clv_judged}")
        with scratch(data.con):
            scoring_builder = new_builder()
            fitted = self.base.fit(scoring_builder, win.end)
            purchases, spend = self.fitter.btyd(fitted.rows, model_type, f"at {win.end}")
            totals = self.base.forecast(purchases, spend, horizons, fitted)
            scoring, customers = sampled(data, fitted.features, self.trained), self.base.known()
        profile = FeatureProfile.fit(scoring.drop(columns=list(NOT_FEATURES)))
        model = LifecycleModel(scoring_builder, purchases, spend, churn, next_stage, horizons, profile,
                               churn_source=twin.churn_source, learned_clv=learned,
                               clv_source=twin.clv_source if learned else "btyd", currency=data.currency)
        model.value_tiers = ValueTiers.fit(model.served_clv(scoring)[0])
        return model, scoring, totals, customers

    def trained_buyers(self, day: date) -> Sample:
        """The training sample of the buyers at ``day`` (a value table's rows): about ``sample_customers`` of them, a
        larger share than ``trained`` where there are fewer buyers than customers, and so holding its customers."""
        return Sample.trained(self.config.sample_customers, self.base.buyers(day)[0])

    def classifiers(self, table: pd.DataFrame, purchases: PurchaseModel, spend: SpendModel
                    ) -> tuple[Classifier, Classifier]:
        """The churn and next-stage classifiers fitted on a labelled table, with the BTYD models' columns."""
        features = table.drop(columns=LABELS)
        inputs = pd.DataFrame(classifier_inputs(features, btyd_columns(purchases, spend, features, self.horizons)),
                              index=features.index)
        params, seed = self.config.classifier_params, self.config.seed
        churn = Classifier(params, seed=seed).fit(inputs, table["churned"])
        climbing = table["next_stage"].notna().to_numpy()
        next_stage = Classifier(params, seed=seed).fit(inputs[climbing],
                                                       table.loc[climbing, "reached_next_stage"].astype(int))
        return churn, next_stage

    def learned_clv(self, table: pd.DataFrame, purchases: PurchaseModel, spend: SpendModel, days: int, what: str
                    ) -> LearnedCLV | None:
        """The learned CLV fitted on a value table with the BTYD models fitted at its date; None (and a note about
        ``what``) when there is too little to learn from."""
        inputs, expected = value_inputs(table, purchases, spend, self.horizons, days)
        try:
            return LearnedCLV(seed=self.config.seed).fit(inputs, table["spend"], expected)
        except LifecycleError as exc:
            self.fitter.note(f"{exc}; the BTYD CLV is served", what)
            return None
