"""Feature drift (PSI): hand-computed cases and the simulator's ground truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.build import FeatureBuilder
from features.simulator import SimulationParams, simulate
from models.drift import FLOOR, MAJOR, FeatureProfile, add_counts, shifted
from models.lifecycle import NOT_FEATURES
from tests.helpers import load


def test_psi_by_hand():
    fitted = pd.DataFrame({"x": [0.0] * 50 + [1.0] * 50, "c": ["a"] * 80 + ["b"] * 20})
    profile = FeatureProfile.fit(fitted)
    # deciles of fifty 0s and fifty 1s: 0 (10-40 %), 0.5 (50 %), 1 (60-90 %); bins below 0, [0, 0.5),
    # [0.5, 1), from 1, missing
    assert profile.edges["x"].tolist() == [0.0, 0.5, 1.0]
    assert profile.expected["x"].tolist() == [0, 0.5, 0, 0.5, 0]
    assert profile.categories["c"] == ["a", "b"] and profile.expected["c"].tolist() == [0.8, 0.2, 0]

    later = pd.DataFrame({"x": [0.0] * 30 + [1.0] * 70, "c": ["a"] * 50 + ["z"] * 25 + [None] * 25})
    psi = profile.psi(profile.counts(later))
    assert psi["x"] == pytest.approx(0.2 * math.log(5 / 3) + 0.2 * math.log(7 / 5), rel=1e-12)
    # b vanished (its share floored) and half the rows are unknown or missing
    assert psi["c"] == pytest.approx((0.5 - 0.8) * math.log(0.5 / 0.8) + (FLOOR - 0.2) * math.log(FLOOR / 0.2)
                                     + (0.5 - FLOOR) * math.log(0.5 / FLOOR), rel=1e-12)
    assert list(psi) == ["c", "x"]  # largest first


def test_missing_values_and_columns_count_as_missing():
    profile = FeatureProfile.fit(pd.DataFrame({"x": [1.0, 2.0, np.nan, 4.0], "flag": [True, False, True, True]}))
    assert profile.expected["x"][-1] == 0.25
    counts = profile.counts(pd.DataFrame({"flag": [False, False]}))  # x is absent
    assert counts["x"].tolist() == [0] * (len(profile.edges["x"]) + 1) + [2]
    assert counts["flag"].sum() == 2


def test_the_same_population_has_no_drift_and_chunks_add_up():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"spend": rng.gamma(2.0, 30.0, 5000), "orders": rng.poisson(2.0, 5000),
                          "segment": rng.choice(["Lost", "Loyal", "New"], 5000)})
    profile = FeatureProfile.fit(frame)
    assert set(profile.psi(profile.counts(frame)).values()) == {0.0}
    chunked = {}
    for start in range(0, len(frame), 1300):
        chunked = add_counts(chunked, profile.counts(frame.iloc[start:start + 1300]))
    whole = profile.counts(frame)
    assert all(np.array_equal(chunked[name], whole[name]) for name in whole)


def _features(params: SimulationParams) -> pd.DataFrame:
    sim = simulate(params)
    data = load(transactions=sim.transactions, events=sim.events, customers=sim.customers)
    end = data.date_range()[1].date()
    return FeatureBuilder().fit_transform(data, end).df().drop(columns=list(NOT_FEATURES))


def test_simulator_ground_truth_a_shift_in_spend_is_found_and_only_there():
    """Doubling the Gamma-Gamma scale doubles every order value and changes nothing else."""
    base = SimulationParams(customers=6000, seed=3)
    profile = FeatureProfile.fit(_features(base))
    same_shop = profile.psi(profile.counts(_features(base.model_copy(update={"seed": 4}))))
    assert not shifted(same_shop)
    dearer = profile.psi(profile.counts(_features(base.model_copy(update={"seed": 4, "gamma": 30.0}))))
    assert set(shifted(dearer)) == {"total_spend", "avg_order_value", "first_order_value", "spend_std",
                                    "monetary_value", "monetary_value_weeks", "spend_trend"}
    assert dearer["avg_order_value"] > MAJOR
