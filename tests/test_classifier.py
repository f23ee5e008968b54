"""LightGBM churn model on the simulator, out of time: better than the baselines, calibrated,
deterministic, and explained by contributions that add up to its score."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.simulator import SimulationParams, simulate
from models.bgnbd import BGNBD
from models.classifier import Classifier, calibrated, calibration
from models.lifecycle import FEW_DRIVER_ROWS, drivers_json
from tests.helpers import load
from training import evaluate

HORIZON = 90
NOT_FEATURES = ["customer_id", "as_of", "next_stage"]


@pytest.fixture(scope="module")
def split():
    """Features at t0 with labels from (t0, t0 + 90], and the same at t1 = t0 + 90 for evaluation."""
    sim = simulate(SimulationParams(customers=12_000, seed=21))
    data = load(transactions=sim.transactions, events=sim.events, customers=sim.customers)
    end = (sim.end - timedelta(days=1)).date()
    t1 = end - timedelta(days=HORIZON)
    t0 = t1 - timedelta(days=HORIZON)
    builder = FeatureBuilder().fit(data, t0)
    tables = []
    for as_of in (t0, t1):
        features = builder.transform(data, as_of).df()
        labels = builder.labels(data, as_of, HORIZON).df()[["customer_id", "churned"]]
        table = features.merge(labels, on="customer_id")
        tables.append(table[table.orders > 0].reset_index(drop=True))
    train, test = tables
    btyd = BGNBD().fit(train.frequency, train.recency, train["T"])
    for table in (train, test):
        table["p_alive"] = btyd.p_alive(table.frequency, table.recency, table["T"])
        table["expected_purchases"] = btyd.expected_purchases(HORIZON, table.frequency, table.recency, table["T"])
        table["btyd_churn_probability"] = btyd.p_no_purchase(HORIZON, table.frequency, table.recency, table["T"])
    return train, test


def features(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[*NOT_FEATURES, "churned"])


def test_churn_model_beats_both_baselines_out_of_time(split):
    """Recency, and BG/NBD's own probability of no purchase in the window (an input of the model)."""
    train, test = split
    model = Classifier(seed=1).fit(features(train), train.churned)
    y = test.churned.to_numpy()
    probability = model.predict_proba(features(test))
    auc = roc_auc_score(y, probability)
    recency = roc_auc_score(y, test.recency_days)
    btyd = roc_auc_score(y, test.btyd_churn_probability)
    assert auc > max(recency, btyd) + 0.02, (auc, recency, btyd)
    assert evaluate.classification(y, probability)["brier"] < 0.9 * evaluate.classification(
        y, test.btyd_churn_probability)["brier"]
    assert evaluate.expected_calibration_error(y, probability) < 0.03
    assert model.best_iteration_ < model.max_rounds  # early stopping stopped it


def test_calibration_keeps_the_classifiers_order(split):
    """The isotonic steps' centres are interpolated, so distinct scores stay distinct and in order."""
    train, test = split
    model = Classifier(seed=1).fit(features(train), train.churned)
    matrix = model._matrix(features(test))
    raw = model.booster_.predict(matrix, raw_score=True)
    probability = model.predict_proba(features(test))
    order = np.argsort(raw, kind="stable")
    steps, rises = np.diff(raw[order]), np.diff(probability[order])
    # every score step above float noise gives a higher probability (isotonic steps would give 0 over
    # wide ranges); at the tails' joins the two expressions may round an ulp apart
    assert (rises[steps > 1e-9] > 0).all() and (rises[steps == 0] == 0).all() and (rises > -1e-12).all()


def test_calibration_map_by_hand():
    """Scores 0..3 with outcomes 0, 1, 0, 1: isotonic steps 0 (at 0), 0.5 (1 and 2, centre 1.5) and 1 (at 3)."""
    centres, values = calibration(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(centres, [0, 1.5, 3])
    np.testing.assert_allclose(values, [0, 0.5, 1])
    probability = calibrated(np.array([0.75, 1.5, 2.25, -1.0, 4.0]), centres, values)
    np.testing.assert_allclose(probability[:3], [0.25, 0.5, 0.75], rtol=1e-5)
    # beyond the outer centres, along the raw log-odds from 1e-6 and 1 - 1e-6
    np.testing.assert_allclose(probability[3:], [expit(-1 + logit(1e-6)), expit(1 + logit(1 - 1e-6))])


def test_no_rows_in_no_rows_out(split):
    train, _ = split
    model = Classifier(seed=1).fit(features(train), train.churned)
    probability, order, credit = model.predict_with_drivers(features(train).head(0), top=3)
    assert probability.shape == (0,) and order.shape == credit.shape == (0, 3)


def test_same_seed_same_model(split):
    train, test = split
    a = Classifier(seed=3).fit(features(train), train.churned).predict_proba(features(test))
    b = Classifier(seed=3).fit(features(train), train.churned).predict_proba(features(test))
    np.testing.assert_array_equal(a, b)


def test_contributions_add_up_to_the_raw_score_and_name_the_drivers(split):
    train, test = split
    model = Classifier(seed=1).fit(features(train), train.churned)
    rows = features(test).head(50)
    contributions = model.contributions(rows)
    raw = model.booster_.predict(model._matrix(rows), raw_score=True)
    np.testing.assert_allclose(contributions.sum(axis=1), raw, rtol=1e-9, atol=1e-9)
    many = model.contributions(features(test).head(500))  # explained tree by tree, not in one gather
    np.testing.assert_allclose(many.head(50).to_numpy(), contributions.to_numpy(), rtol=0, atol=1e-12)
    probability, order, credit = model.predict_with_drivers(rows, top=3)
    np.testing.assert_array_equal(probability, model.predict_proba(rows))
    for i in (0, 17, 49):
        row = contributions.drop(columns="bias").iloc[i]
        largest = row.abs().sort_values(ascending=False, kind="stable").index[:3]
        assert [model.features_[j] for j in order[i]] == largest.tolist()
        np.testing.assert_allclose(credit[i], row[largest].to_numpy())


def test_on_stumps_path_credits_are_exactly_treeshap(split):
    """With one split per tree, crediting the split's move to its feature is the Shapley value: the
    contributions must equal LightGBM's own TreeSHAP (``pred_contrib``) for every row and feature."""
    train, test = split
    model = Classifier(params={"num_leaves": 2, "max_depth": 1}, seed=1).fit(features(train), train.churned)
    rows = features(test).head(300)
    treeshap = model.booster_.predict(model._matrix(rows), pred_contrib=True)
    assert model.booster_.num_trees() > 10
    np.testing.assert_allclose(model.contributions(rows).to_numpy(), treeshap, rtol=1e-9, atol=1e-12)


def test_unseen_categories_and_missing_columns(split):
    train, test = split
    model = Classifier(seed=1).fit(features(train), train.churned)
    rows = features(test).head(5).copy()
    channels = model.categories_["acquisition_channel"]
    rows["acquisition_channel"] = [channels[1], "carrier_pigeon", None, np.nan, channels[0]]
    codes = model._matrix(rows)[:, model.features_.index("acquisition_channel")]
    np.testing.assert_array_equal(codes, [1, np.nan, np.nan, np.nan, 0])  # unseen at fit: missing, not an error
    assert np.isfinite(model.predict_proba(rows)).all()
    with pytest.raises(LifecycleError, match="missing feature columns"):
        model.predict_proba(rows.drop(columns=["orders"]))


def test_a_label_without_both_classes_is_a_clear_error(split):
    train, _ = split
    with pytest.raises(LifecycleError, match="each class needs at least 10"):
        Classifier().fit(features(train), np.zeros(len(train)))


def test_drivers_json_is_the_same_text_for_one_row_as_for_many():
    """An API request's few rows are joined in Python, a batch's many by Arrow: the text must not differ,
    and it must read back as the exact names and contributions."""
    rng = np.random.default_rng(5)
    names = ["recency_days", 'a "quoted" name', "stage"]
    rows = FEW_DRIVER_ROWS * 3
    order = rng.integers(0, len(names), size=(rows, 2))
    credit = rng.normal(size=(rows, 2)) * 10.0 ** rng.integers(-9, 9, size=(rows, 2))
    credit[:3] = [[0.0, -0.0], [1e-5, 123456789.0], [0.1, -2.5e-7]]
    many = drivers_json(names, order, credit)
    few = np.concatenate([drivers_json(names, order[i:i + 1], credit[i:i + 1]) for i in range(rows)])
    assert many.tolist() == few.tolist()
    for i in (0, 1, 2, rows - 1):
        parsed = json.loads(many[i])
        assert [d["feature"] for d in parsed] == [names[j] for j in order[i]]
        assert [d["contribution"] for d in parsed] == credit[i].tolist()
    assert drivers_json(names, order[:, :0], credit[:, :0]).tolist() == ["[]"] * rows
