"""The out-of-time protocol end to end, on the real CDNOW log and on the simulator."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

from features import cdnow
from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.simulator import SimulationParams, simulate
from models.gamma_gamma import SpendModel
from models.lifecycle import OUTPUT_COLUMNS, Horizons, btyd_columns, classifier_inputs
from tests.helpers import assert_labels_agree_with_behaviour, assert_logged_backtest, load
from training.backtest import Bootstrap, Difference, brier, gini, roc_auc
from training.fitter import Fitter
from training.train import TrainingConfig, train
from training.windows import windows


def test_cdnow_windows_follow_the_published_protocol(cdnow_run):
    _, run = cdnow_run
    w = run.windows
    assert (w.t0, w.t1, w.end) == (date(1998, 1, 1), date(1998, 4, 1), date(1998, 6, 30))
    # BG/NBD and Gamma-Gamma: fitted on weeks 1-39, judged on weeks 40-78
    assert w.btyd_calibration_end == cdnow.CALIBRATION_END.date() and w.btyd_holdout_days == 273
    # and as if the data had ended one and two churn horizons earlier: each cut date's windows are the protocol's
    first = date(1997, 1, 1)
    assert run.cuts == [windows(first, end, Horizons()) for end in (w.end, date(1998, 4, 1), date(1998, 1, 1))]
    assert run.cuts[0] == w and len(run.backtest) == len(run.twins) == 3


def _pooled(run, table: str, outcome: str, a: str, b: str, metric, rows=lambda t: slice(None)) -> Difference:
    """Column a minus column b of an evaluation table, pooled over the run's cut dates with its noise."""
    tables = [getattr(e, table) for e in run.backtest]
    return Bootstrap().difference(metric, [(t.customer_id[rows(t)], t[outcome][rows(t)], t[a][rows(t)],
                                            t[b][rows(t)]) for t in tables])


def test_cdnow_models_beat_their_baselines(cdnow_run):
    _, run = cdnow_run
    m, b = run.evaluation.metrics, run.evaluation.baselines
    assert m["churn_roc_auc"] > b["churn_roc_auc_recency"]
    # the served churn probability is never worse beyond noise than the purchase model's own (every CDNOW customer
    # bought), nor than recency alone; the served CLV ranks never worse than the past spend rate beyond noise
    for metric in (roc_auc, brier):
        assert _pooled(run, "churn", "churned", "served", "btyd", metric).verdict != "worse"
    assert _pooled(run, "churn", "churned", "served", "recency", roc_auc).verdict != "worse"
    assert _pooled(run, "value", "spend", "served", "spend_rate", gini).verdict != "worse"
    assert m["churn_ece"] < 0.03 and m["churn_buyers_classifier_ece"] < 0.03
    assert m["next_stage_roc_auc"] > 0.6
    assert m["holdout_purchases_mae"] < b["holdout_purchases_mae_past_rate"]
    assert abs(m["holdout_purchases_aggregate_error"]) < abs(b["holdout_purchases_aggregate_error_past_rate"])
    assert m["clv_decile_mape"] < b["clv_decile_mape_spend_rate"]
    assert m["clv_top_decile_capture"] > 0.45


def test_cdnow_compares_the_three_purchase_models_and_keeps_the_best(cdnow_run):
    """Each fitted at every cut date's calibration end and judged on its holdout. BG/NBD has the highest mean holdout
    log-likelihood, but under auto it does not serve (P(alive) = 1 for every one-time buyer by construction), and
    of the other two, MBG/NBD is ahead beyond noise. Every one ranks churners far better than BG/NBD's
    1 - P(alive) (ROC-AUC 0.34)."""
    _, run = cdnow_run
    compared = run.evaluation.purchase_models
    assert list(compared.index) == ["bgnbd", "mbgnbd", "pareto_nbd"]
    assert compared.holdout_log_likelihood.idxmax() == "bgnbd"
    assert run.model.purchases.name == run.twin.purchases.name == "mbgnbd"
    assert list(compared.tied) == [False, True, False]
    assert compared.ll_behind_best.pareto_nbd > compared.ll_noise.pareto_nbd
    assert "does not serve" in run.decisions["purchase_model"]
    assert (compared.churn_roc_auc > 0.75).all() and (compared.holdout_purchases_mae < 0.85).all()
    assert compared.holdout_log_likelihood.between(-4.35, -4.3).all()
    scores = run.model.predict(run.features)
    assert (scores.p_alive[scores.frequency == 0] < 1).all()


def test_tied_purchase_models_are_settled_by_the_documented_preference():
    """On a small Pareto/NBD shop the holdouts cannot tell the models apart beyond noise: the first of PREFERENCE
    among those tied with the best serves, never BG/NBD."""
    from training.base import Base
    from training.decisions import PREFERENCE, choose_purchase_model
    from training.tables import holdouts
    from training.windows import cut_windows

    sim = simulate(SimulationParams(customers=1500, seed=3, process="pareto_nbd", events=False, prospect_share=0))
    data = load(transactions=sim.transactions)
    first, last = data.date_range()
    wins = cut_windows(Base(data), first.date(), last.date(), Horizons())
    calibrations = holdouts(Base(data), [FeatureBuilder() for _ in wins], wins, Horizons())
    _, compared, chosen = choose_purchase_model(calibrations, wins, Horizons())
    assert compared.tied.sum() >= 2, compared  # a tie to settle
    assert chosen == next(name for name in PREFERENCE if compared.tied[name]) != "bgnbd"
    assert "tied with" in compared.attrs["why"]


def test_cdnow_serves_what_beats_it_out_of_time(cdnow_run):
    """The classifier serves buyers only if, pooled over the cut dates, it beats the purchase model's P(no purchase)
    beyond noise in ROC-AUC or Brier and is worse beyond noise in neither."""
    _, run = cdnow_run
    verdicts = {_pooled(run, "churn", "churned", "classifier", "btyd", metric, lambda t: t.btyd.notna()).verdict
                for metric in (roc_auc, brier)}
    beats = "better" in verdicts and "worse" not in verdicts
    assert run.model.churn_source == ("classifier" if beats else "btyd")
    assert run.decisions["churn_source"].startswith("the classifier" if beats else "the purchase model")
    # and what serves beats recency alone and the past spend rate beyond noise: CDNOW's model is not weak
    assert run.model.weaknesses == [] and run.decisions["quality"].startswith("not weak: ")
    scores = run.model.predict(run.features)
    if run.model.churn_source == "btyd":
        np.testing.assert_array_equal(scores.churn_probability, scores.btyd_churn_probability)
        assert (scores.churn_drivers == "[]").all()
    # rankable: no churn probability is shared by more than 1 % of customers, unless the model cannot tell them apart
    # (the same inputs for the purchase model; the same leaf in every tree for the classifier)
    if run.model.churn_source == "classifier":
        inputs = classifier_inputs(run.features, btyd_columns(run.model.purchases, run.model.spend, run.features,
                                                              run.model.horizons))
        told = pd.DataFrame(run.model.churn._predict(run.model.churn._matrix(inputs), pred_leaf=True))
    else:
        told = run.features.drop(columns="customer_id")
    shares = scores.churn_probability.value_counts(normalize=True)
    for value in shares[shares > 0.01].index:
        assert len(told[(scores.churn_probability == value).to_numpy()].drop_duplicates()) == 1, value


def test_forcing_a_purchase_model(cdnow_master):
    data = load(transactions=cdnow_master)
    run = train(data, TrainingConfig(purchase_model="pareto_nbd"))
    assert run.model.purchases.name == run.twin.holdout_purchases.name == "pareto_nbd"
    assert list(run.evaluation.purchase_models.index) == ["pareto_nbd"]
    scores = run.model.predict(run.features)
    assert np.isfinite(scores.p_alive).all() and (scores.p_alive[scores.frequency == 0] < 1).all()


def test_a_run_is_reproducible(cdnow_run, cdnow_demo):
    """Same data and seed, same numbers (to the last bits of DuckDB's parallel floating-point sums): the demo, which
    trained CDNOW in a process of its own through the CLI, logged every cut date's metrics and baselines of the
    shared run trained here."""
    from mlflow import MlflowClient

    from training import registry

    _, run = cdnow_run
    uri = registry.local_tracking_uri(cdnow_demo[0] / ".lifecycle")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # read only: the demo's store is shared
    logged = client.get_run(client.get_model_version(registry.MODEL_NAME, "1").run_id)
    assert logged.data.params["cut_dates"] == ", ".join(str(w.end) for w in run.cuts) and len(run.cuts) == 3
    assert_logged_backtest(client, logged.info.run_id, run.backtest, rel=1e-12)


def test_cdnow_scores_every_customer_with_the_full_record(cdnow_run):
    data, run = cdnow_run
    model = run.model
    scores = model.predict(model.builder.transform(data, run.windows.end).df())
    assert list(scores.columns) == list(OUTPUT_COLUMNS) and len(scores) == 23_570
    assert scores.p_alive.between(0, 1).all() and scores.churn_probability.between(0, 1).all()
    assert (scores.clv >= 0).all() and (scores.expected_purchases >= 0).all()
    advocates = scores.stage == "advocacy"
    assert scores.loc[advocates, "next_stage_probability"].isna().all()
    assert scores.loc[~advocates, "next_stage_probability"].between(0, 1).all()
    # drivers explain the classifier: none where the purchase model's probability serves
    assert all(len(json.loads(d)) == (0 if model.churn_source == "btyd" else 3) for d in scores.churn_drivers)
    assert all(len(json.loads(d)) == 3 for d in scores.next_stage_drivers[~advocates])
    # the scoring model's RFM edges describe the population on the scoring day
    assert model.builder.rfm_edges_ == FeatureBuilder().fit(data, run.windows.end).rfm_edges_


def test_simulated_shop_with_engagement():
    sim = simulate(SimulationParams(customers=8000, seed=31))
    data = load(transactions=sim.transactions, events=sim.events, customers=sim.customers)
    run = train(data)
    m, b = run.evaluation.metrics, run.evaluation.baselines
    # engagement events carry signal about dropout that the purchase model cannot see: the classifier beats
    # the purchase model's own P(no purchase) by a clear margin, and serves
    assert m["churn_buyers_classifier_roc_auc"] > b["churn_buyers_roc_auc_btyd"] + 0.03
    assert m["churn_buyers_classifier_brier"] < 0.9 * b["churn_buyers_brier_btyd"]
    assert run.model.churn_source == "classifier" and m["churn_roc_auc"] > b["churn_roc_auc_recency"] + 0.03
    # (the simulator's prospects never buy, so only buyers' stages have both outcomes)
    assert {"conversion", "retention"} <= set(run.evaluation.next_stage_auc_by_stage)
    assert min(run.evaluation.next_stage_auc_by_stage.values()) > 0.55
    features = run.model.builder.transform(data, run.windows.end).df()
    scores = run.model.predict(features)
    assert_labels_agree_with_behaviour(scores, features, run.model)
    prospects = scores.frequency.isna()
    assert prospects.any() and scores.loc[prospects, "p_alive"].isna().all()
    assert np.isfinite(scores.loc[prospects, "churn_probability"]).all()
    # what each record rests on: orders, else events, else nothing (then no risk band)
    events = sim.events[sim.events.timestamp < pd.Timestamp(run.windows.end) + pd.Timedelta(days=1)]
    engaged = scores.customer_id.isin(events.customer_id)
    expected = np.select([features.purchase_days >= 2, features.purchase_days == 1, engaged],
                         ["repeat buyer", "one purchase", "engagement only"], "none")
    assert (scores.evidence == expected).all() and "engagement only" in set(scores.evidence)
    assert scores.churn_risk[scores.evidence == "none"].isna().all()
    assert scores.churn_risk[scores.evidence != "none"].notna().all()


def test_a_shop_larger_than_the_sample_fits_the_btyd_models_on_everyone_and_the_classifiers_on_the_sample():
    """Above ``sample_customers``, the classifiers and the learned CLV learn from about that many customers, each
    lifecycle stage in proportion to its size (within the draw's noise), while the purchase model and Gamma-Gamma that
    serve are the fits on every buyer at the end."""
    from models.purchase_models import PURCHASE_MODELS

    sim = simulate(SimulationParams(customers=5000, seed=12, events=False))
    data = load(transactions=sim.transactions)
    run = train(data, TrainingConfig(sample_customers=2000))
    everyone = run.model.builder.transform(data, run.windows.end).df()
    share = 2000 / len(everyone)
    assert run.customers == len(everyone) and abs(len(run.features) - 2000) < 4 * np.sqrt(2000 * (1 - share))
    expected = everyone.stage.value_counts() * share
    got = run.features.stage.value_counts().reindex(expected.index, fill_value=0)
    assert ((got - expected).abs() < 4 * np.sqrt(expected * (1 - share)) + 1).all(), (got, expected)
    assert run.features.customer_id.is_unique and run.features.customer_id.isin(everyone.customer_id).all()
    buyers = everyone[everyone.orders > 0]
    served = PURCHASE_MODELS[run.model.purchases.name]().fit(buyers.frequency, buyers.recency, buyers["T"])
    assert run.model.purchases.params_ == pytest.approx(served.params_, rel=1e-9)
    assert run.model.spend.params_ == pytest.approx(SpendModel().fit(buyers.frequency, buyers.monetary_value).params_,
                                                    rel=1e-9)
    # while every customer is judged (the shop is below the judged sample's size)
    assert len(run.evaluation.churn) == len(run.twin.builder.transform(data, run.windows.t1))
    assert all(np.isfinite(run.evaluation.metrics[m]) for m in ("churn_roc_auc", "next_stage_roc_auc", "clv_gini"))


def test_too_little_data_is_refused_in_one_line():
    """Counted on the first day a model is fitted: buyers and repeat buyers, against pandas."""
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(np.arange(0, 360, 2), unit="D")
    once = pd.DataFrame({"customer_id": [f"c{i}" for i in range(len(days))], "timestamp": days, "amount": 10.0})
    again = once.head(12).assign(timestamp=lambda t: t.timestamp + pd.Timedelta(days=7))
    orders = pd.concat([once, again], ignore_index=True)
    win = windows(orders.timestamp.min().date(), orders.timestamp.max().date(), Horizons())
    day = min(win.btyd_calibration_end, win.t0)
    before = orders[orders.timestamp < pd.Timestamp(day) + pd.Timedelta(days=1)]
    buyers, repeat = before.customer_id.nunique(), (before.groupby("customer_id").size() > 1).sum()
    assert 20 < buyers < 100 and 0 < repeat < 20
    with pytest.raises(LifecycleError) as refused:
        train(load(transactions=orders))
    assert str(refused.value) == (f"too little data to train: by {day} (the first day a model is fitted) {buyers} "
                                  f"customers had ordered (need at least 100) and {repeat} customers had ordered on "
                                  "two or more days (need at least 20); a shorter churn_horizon_days (now 90) fits the "
                                  "classifiers later")
    assert day == win.t0  # the classifiers' training date came first: the churn horizon is what moves it


def test_too_short_a_history_is_refused():
    with pytest.raises(LifecycleError, match=r"needs more than two churn horizons \(180 days\): a shorter "
                                             r"churn_horizon_days \(now 90\) needs less"):
        windows(date(2024, 1, 1), date(2024, 5, 1), Horizons(churn_days=90))


def test_the_model_is_a_self_contained_mlflow_pyfunc(cdnow_run, tmp_path):
    """Saved, then loaded by MLflow in a fresh process elsewhere: the same records as in process."""
    import subprocess
    import sys

    import pandas as pd

    from models import pyfunc

    data, run = cdnow_run
    features = run.model.builder.transform(data, run.windows.end).df()
    pyfunc.save(run.model, tmp_path / "model", features.head(5))
    features.to_parquet(tmp_path / "features.parquet")
    script = (
        "import sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "model.predict(pd.read_parquet(sys.argv[2])).to_parquet(sys.argv[3])\n"
        "print(sys.modules['models'].__file__)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "features.parquet"),
                           str(tmp_path / "scores.parquet")], cwd=elsewhere, capture_output=True, text=True, check=True)
    assert done.stdout.strip().startswith(str(tmp_path / "model" / "code"))  # the code that travelled with it
    expected = run.model.predict(features)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores.parquet"), expected, check_dtype=False)


def test_a_fit_on_inputs_fitted_before_is_not_repeated_and_its_notes_name_both():
    """Where two of the protocol's dates coincide, the fitter returns the first fit and notes it for both."""
    rng = np.random.default_rng(4)
    repeat = rng.integers(1, 6, 400).astype(float)
    mean_spend = rng.gamma(6 * repeat, 50 / (6 * repeat))  # every order Gamma(6, mean 50): nothing between customers
    fitter = Fitter()
    first = fitter.fit(SpendModel, repeat, mean_spend, what="at 2024-01-01")
    assert fitter.fit(SpendModel, repeat, mean_spend, what="at 2024-02-01") is first
    assert fitter.fit(SpendModel, repeat, mean_spend * 2, what="twice as much") is not first
    pooled = [note for note in fitter.notes if "pooled spend model serves" in note]
    assert pooled and pooled[0].endswith("[at 2024-01-01, at 2024-02-01, twice as much]")
