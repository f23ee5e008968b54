"""The out-of-time protocol end to end, on the real CDNOW log and on the simulator."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest

from features import cdnow
from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.simulator import SimulationParams, simulate
from models.lifecycle import OUTPUT_COLUMNS, Horizons
from tests.conftest import load
from training.train import train, windows


def test_cdnow_windows_follow_the_published_protocol(cdnow_run):
    _, run = cdnow_run
    w = run.windows
    assert (w.t0, w.t1, w.end) == (date(1998, 1, 1), date(1998, 4, 1), date(1998, 6, 30))
    # BG/NBD and Gamma-Gamma: fitted on weeks 1-39, judged on weeks 40-78
    assert w.btyd_calibration_end == cdnow.CALIBRATION_END.date() and w.btyd_holdout_days == 273


def test_cdnow_models_beat_their_baselines(cdnow_run):
    _, run = cdnow_run
    m, b = run.evaluation.metrics, run.evaluation.baselines
    assert m["churn_roc_auc"] > max(b["churn_roc_auc_recency"], b["churn_roc_auc_p_alive"])
    assert m["churn_ece"] < 0.05
    assert m["next_stage_roc_auc"] > 0.6
    assert m["holdout_purchases_mae"] < b["holdout_purchases_mae_past_rate"]
    assert abs(m["holdout_purchases_aggregate_error"]) < abs(b["holdout_purchases_aggregate_error_past_rate"])
    assert m["clv_decile_mape"] < b["clv_decile_mape_spend_rate"]
    assert m["clv_top_decile_capture"] > 0.45


def test_a_run_is_reproducible(cdnow_run):
    """Same data and seed, same numbers (to the last bits of DuckDB's parallel floating-point sums)."""
    data, run = cdnow_run
    again = train(data, FeatureBuilder, Horizons())
    assert again.evaluation.metrics == pytest.approx(run.evaluation.metrics, rel=1e-12)
    assert again.evaluation.baselines == pytest.approx(run.evaluation.baselines, rel=1e-12)


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
    assert all(len(json.loads(d)) == 3 for d in scores.churn_drivers)
    # the scoring model's RFM edges describe the population on the scoring day
    assert model.builder.rfm_edges_ == FeatureBuilder().fit(data, run.windows.end).rfm_edges_


def test_simulated_shop_with_engagement():
    sim = simulate(SimulationParams(customers=8000, seed=31))
    data = load(transactions=sim.transactions, events=sim.events, customers=sim.customers)
    run = train(data, FeatureBuilder, Horizons())
    m, b = run.evaluation.metrics, run.evaluation.baselines
    assert m["churn_roc_auc"] > max(b["churn_roc_auc_recency"], b["churn_roc_auc_p_alive"]) + 0.01
    # (the simulator's prospects never buy, so only buyers' stages have both outcomes)
    assert {"conversion", "retention"} <= set(run.evaluation.next_stage_auc_by_stage)
    assert min(run.evaluation.next_stage_auc_by_stage.values()) > 0.55
    scores = run.model.predict(run.model.builder.transform(data, run.windows.end).df())
    prospects = scores.frequency.isna()
    assert prospects.any() and scores.loc[prospects, "p_alive"].isna().all()
    assert np.isfinite(scores.loc[prospects, "churn_probability"]).all()


def test_too_short_a_history_is_refused():
    with pytest.raises(LifecycleError, match="needs more than two churn horizons"):
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
