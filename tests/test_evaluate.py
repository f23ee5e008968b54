"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training import evaluate


def test_calibration_error_by_hand():
    # bin 0.1-0.2: p = 0.1, 0.1 with outcomes 0, 1 -> |0.5 - 0.1| * 2; bin 0.9: p = 0.9, outcome 1 -> 0.1
    ece = evaluate.expected_calibration_error([0, 1, 1], [0.1, 0.1, 0.9])
    assert ece == pytest.approx((0.4 * 2 + 0.1 * 1) / 3)
    assert evaluate.expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0


def test_classification_metrics_by_hand():
    m = evaluate.classification([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered right
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.65**2 + 0.04) / 4)
    assert m["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert evaluate.ranking([0, 1, 1], [5, 3, 9]) == pytest.approx(0.5)


def test_auc_by_group_skips_groups_with_one_outcome():
    aucs = evaluate.auc_by_group([0, 1, 0, 1, 1], [0.2, 0.8, 0.9, 0.1, 0.5], ["a", "a", "b", "b", "c"])
    assert aucs == {"a": 1.0, "b": 0.0}


def test_count_errors_by_hand():
    assert evaluate.counts([1, 2, 3], [2, 2, 5]) == {"mae": pytest.approx(1.0), "aggregate_error": pytest.approx(0.5)}


def test_value_metrics_by_hand():
    actual = np.array([0.0, 10, 20, 30, 40, 50, 60, 70, 80, 100])
    perfect = evaluate.value(actual, actual)
    assert perfect["gini"] == pytest.approx(1) and perfect["spearman"] == pytest.approx(1)
    assert perfect["top_decile_capture"] == pytest.approx(100 / 460)
    assert perfect["decile_mape"] == pytest.approx(0)
    reversed_ = evaluate.value(actual, -actual)
    assert reversed_["gini"] == pytest.approx(-1) and reversed_["top_decile_capture"] == 0
    # predicting everyone at twice their spend ranks perfectly but misses every decile by 100 %
    doubled = evaluate.value(actual, 2 * actual)
    assert doubled["gini"] == pytest.approx(1) and doubled["decile_mape"] == pytest.approx(1.0)
