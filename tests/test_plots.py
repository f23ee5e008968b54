"""The run plots draw the numbers they claim to (hand-computed small cases)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import cdnow
from models.bgnbd import BGNBD
from training import plots


def lines(figure) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ax = figure.axes[0]
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.lines}


def test_calibration_vs_holdout_averages_by_calibration_frequency_with_a_pooled_tail():
    holdout = pd.DataFrame({"frequency": [0, 0, 1, 3, 9], "purchases": [0, 2, 1, 4, 6],
                            "predicted": [0.5, 0.5, 1.0, 3.0, 5.0], "past_rate": [0, 0, 2, 6, 20]})
    drawn = lines(plots.calibration_vs_holdout(holdout, days=100, model="BG/NBD", groups=3))
    # buckets: 0 -> rows 0-1, 1 -> row 2, 2+ -> rows 3-4
    np.testing.assert_array_equal(drawn["actual"][0], [0, 1, 2])
    np.testing.assert_allclose(drawn["actual"][1], [1, 1, 5])
    np.testing.assert_allclose(drawn["BG/NBD"][1], [0.5, 1, 4])
    np.testing.assert_allclose(drawn["past purchase rate"][1], [0, 2, 13])


def test_cumulative_gain_of_a_perfect_and_of_a_reversed_ranking():
    churn = pd.DataFrame({"churned": [1, 0, 1, 0], "served": [0.9, 0.1, 0.8, 0.2], "classifier": [0.9, 0.1, 0.8, 0.2],
                          "recency": [1, 4, 2, 3], "btyd": [0.5, 0.5, 0.5, np.nan]})
    drawn = lines(plots.cumulative_gain(churn))
    np.testing.assert_allclose(drawn["served churn probability"][1], [0.5, 1, 1, 1])  # both churners first
    np.testing.assert_allclose(drawn["recency alone"][1], [0, 0, 0.5, 1])  # both churners last
    # a prospect (no P(no purchase)) ranks first, then ties keep the input order
    np.testing.assert_allclose(drawn["purchase model's P(no purchase)"][1], [0, 0.5, 0.5, 1])


def test_reliability_curve_bins_probabilities():
    churn = pd.DataFrame({"churned": [0, 1, 0, 1, 1], "served": [0.05, 0.05, 0.95, 0.95, 0.95]})
    predicted, observed = lines(plots.reliability(churn))["served churn probability"]
    np.testing.assert_allclose(predicted, [0.05, 0.95])
    np.testing.assert_allclose(observed, [0.5, 2 / 3])


def test_clv_deciles_compare_each_prediction_with_actual_spend_per_decile():
    value = pd.DataFrame({"spend": np.arange(20.0) * 2, "btyd": np.arange(20.0), "learned": -np.arange(20.0),
                          "spend_rate": np.arange(20.0)})
    figure = plots.clv_deciles(value, days=183, served="learned")
    assert [ax.get_title() for ax in figure.axes] == ["BTYD CLV", "learned CLV (served)", "past spend rate"]
    predicted, actual = ([bar.get_height() for bar in container] for container in figure.axes[0].containers)
    assert predicted[0] == pytest.approx(18.5) and actual[0] == pytest.approx(37)  # the top two customers
    assert predicted[-1] == pytest.approx(0.5) and actual[-1] == pytest.approx(1)
    predicted, actual = ([bar.get_height() for bar in container] for container in figure.axes[1].containers)
    assert predicted[0] == pytest.approx(-0.5) and actual[0] == pytest.approx(1)  # ranked upside down
    without = plots.clv_deciles(value.drop(columns="learned"), days=183, served="btyd")
    assert [ax.get_title() for ax in without.axes] == ["BTYD CLV (served)", "past spend rate"]


def test_frequency_recency_matrix_shows_the_model():
    model = BGNBD()
    model.params_ = dict(cdnow.PUBLISHED_FITS["bgnbd"].params)
    figure = plots.frequency_recency_matrix(model, max_frequency=3, age=38.86, horizon=39, title="")
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (4, 101)
    x, t_x = 2, image.shape[1] - 1  # the last column is recency = age
    assert image[x, t_x] == pytest.approx(model.expected_purchases(39, [2], [38.86], [38.86])[0])
    alive = plots.frequency_recency_matrix(model, max_frequency=3, age=38.86, horizon=None, title="")
    assert alive.axes[0].images[0].get_array()[0].max() == pytest.approx(1.0)  # no repeat purchase: alive
