"""The run's decisions on the backtest, each on paired differences pooled over the cut dates with their noise
(``training.backtest``): the purchase model, the source of the churn probability and of the CLV, and whether the run
learned too little (weak). Each decision's rule for a tie is in docs/models.md."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.errors import LifecycleError
from models.btyd import PurchaseModel
from models.lifecycle import Horizons
from models.purchase_models import PURCHASE_MODELS
from training.backtest import Bootstrap, Z, brier, decile_mape, gini, mean, roc_auc
from training.choices import AUTO, CLV_SOURCES, MAPE_SLACK
from training.fitter import Fitter
from training.judging import Evaluation, purchase_scores
from training.tables import Holdout
from training.windows import Windows

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


def choose_purchase_model(holdouts: list[Holdout], wins: list[Windows], horizons: Horizons, forced: str = AUTO,
                          fitter: Fitter | None = None, bootstrap: Bootstrap | None = None
                          ) -> tuple[list[dict[str, PurchaseModel]], pd.DataFrame, str]:
    """Fit every purchase model on each cut date's calibration window (every buyer) and judge it on that cut's
    holdout (the buyers of its table: the run's judged sample, ``training.tables.holdout``).

    Returns the fitted candidates per cut date, their metrics (one row per model: means over the cut
    dates, and the difference of holdout log-likelihood from the best with its noise, ``tied`` when
    within noise or ``LL_MARGIN``) and the name chosen: ``forced`` unless it is ``"auto"``, else the first of
    ``PREFERENCE`` among the best and those tied with it, BG/NBD aside. The holdout log-likelihood is the mean per
    customer of log P(holdout purchases and their days | calibration history): a proper score of
    everything a purchase model predicts (how many purchases, when, and who is gone), with which the
    generating process wins on large enough data. A candidate that cannot be fitted at some cut date,
    even penalized, is left out, with its reason. The choice and its evidence are in ``.attrs["why"]``.
    """
    fitter, bootstrap = fitter or Fitter(), bootstrap or Bootstrap()
    fitted: list[dict[str, PurchaseModel]] = [{} for _ in wins]
    scores: dict[str, list[dict[str, float]]] = {}
    lls: dict[str, list[np.ndarray]] = {}
    failures = {}
    scored = [h.table for h in holdouts]
    for name, model in PURCHASE_MODELS.items():
        if forced not in (AUTO, name):
            continue
        try:
            for k, (holdout, win) in enumerate(zip(holdouts, wins, strict=True)):
                rows = holdout.rows.purchases
                fitted[k][name] = fitter.fit(model, rows["frequency"], rows["recency"], rows["T"],
                                             weights=rows["count"], what=f"calibration to {win.btyd_calibration_end}")
        except LifecycleError as exc:
            failures[name] = str(exc)
            for candidates in fitted:
                candidates.pop(name, None)
            continue
        judged = [purchase_scores(fitted[k][name], h, w.btyd_holdout_days, horizons.churn_days)
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
