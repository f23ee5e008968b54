"""Paired comparisons over cut dates: weighted metrics against the unweighted ones, the bootstrap's noise against
known standard errors, and the rules that settle each decision on hand-made evaluations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import evaluate
from training.backtest import Bootstrap, absolute_error, brier, gini, mean, roc_auc
from training.train import Evaluation, better_churn_source, better_clv_source

ONES = np.ones((1, 7))


def test_weighted_metrics_at_unit_weights_are_the_unweighted_ones():
    y = np.array([0, 1, 1, 0, 1, 0, 1.0])
    score = np.array([0.2, 0.9, 0.4, 0.4, 0.7, 0.1, 0.4])  # ties across classes count half
    assert roc_auc(y, score, ONES)[0] == pytest.approx(evaluate.ranking(y, score))
    assert brier(y, score, ONES)[0] == pytest.approx(evaluate.classification(y, score)["brier"])
    spend = np.array([0, 120, 30, 0, 55, 5, 80.0])
    assert gini(spend, score, ONES)[0] == pytest.approx(evaluate.value(spend, score)["gini"])
    assert absolute_error(spend, score * 100, ONES)[0] == pytest.approx(np.mean(np.abs(score * 100 - spend)))
    assert mean(y, score, ONES)[0] == pytest.approx(score.mean())


def test_a_weight_counts_a_customer_that_many_times():
    y, score = np.array([0, 1, 1, 0.0]), np.array([0.3, 0.2, 0.8, 0.1])
    twice = np.array([[2.0, 1, 1, 1]])
    assert roc_auc(y, score, twice)[0] == pytest.approx(evaluate.ranking([0, 0, 1, 1, 0], [0.3, 0.3, 0.2, 0.8, 0.1]))
    spend = np.array([10, 0, 30, 5.0])
    assert gini(spend, score, twice)[0] == pytest.approx(
        evaluate.value(np.r_[10, spend], np.r_[0.3, score])["gini"])


def test_the_noise_of_a_mean_difference_is_its_standard_error():
    """Per-customer differences N(0.01, 1) on 20,000 customers: the bootstrap's standard error is sigma / sqrt(n)
    within 10 %, and the difference is a tie; a difference of 5 standard errors is not."""
    rng = np.random.default_rng(1)
    n = 20_000
    ids, a = np.arange(n), rng.normal(0.01, 1.0, n)
    zero = np.zeros(n)
    found = Bootstrap().difference(mean, [(ids, zero, a, zero)])
    assert found.se == pytest.approx(a.std() / np.sqrt(n), rel=0.1)
    assert found.mean == pytest.approx(a.mean()) and found.verdict == "tie"
    clear = Bootstrap().difference(mean, [(ids, zero, a - a.mean() + 5 / np.sqrt(n), zero)])
    assert clear.verdict == "better" and Bootstrap().difference(mean, [(ids, zero, zero, a + 0.05)]).verdict == "worse"


def test_the_same_customers_at_several_cut_dates_are_one_draw():
    """Identical numbers at three cut dates tell no more than one: the pooled noise is one cut date's, not
    1 / sqrt(3) of it, because each replicate weights a customer the same at every date."""
    rng = np.random.default_rng(2)
    ids, y = np.arange(5000), rng.integers(0, 2, 5000).astype(float)
    a, b = y * 0.3 + rng.random(5000), y * 0.3 + rng.random(5000)
    once = Bootstrap().difference(roc_auc, [(ids, y, a, b)])
    thrice = Bootstrap().difference(roc_auc, [(ids, y, a, b)] * 3)
    assert thrice.mean == pytest.approx(once.mean) and thrice.se == pytest.approx(once.se, rel=1e-9)
    assert thrice.cuts == 3


def test_a_large_shop_draws_its_replicates_on_a_sample():
    """Drawn on 5,000 of 40,000 customers and scaled by sqrt(5,000 / 40,000), the noise is the full bootstrap's
    within 15 %; the difference itself is always every customer's."""
    rng = np.random.default_rng(3)
    n = 40_000
    ids, y = np.arange(n), rng.integers(0, 2, n).astype(float)
    a, b = y * 0.3 + rng.random(n), y * 0.28 + rng.random(n)
    full = Bootstrap().difference(roc_auc, [(ids, y, a, b)])
    sampled = Bootstrap(most=5000).difference(roc_auc, [(ids, y, a, b)])
    assert sampled.mean == full.mean and sampled.se == pytest.approx(full.se, rel=0.15)


def _evaluation(value: pd.DataFrame | None = None, churn: pd.DataFrame | None = None) -> Evaluation:
    """An evaluation of the given tables, with each CLV's metrics as ``evaluate_twin`` computes them."""
    empty = pd.DataFrame()
    value = value if value is not None else empty
    metrics = {f"clv_{source}_{k}": v for source in value.columns.intersection(["btyd", "learned"])
               for k, v in evaluate.value(value.spend, value[source]).items()}
    return Evaluation(churn if churn is not None else empty, empty, empty, value, metrics)


def _value(seed: int, learned_noise: float, btyd_noise: float, learned_scale: float = 1.0, n: int = 4000):
    """Spend over a window with two predictions of it: the learned one and the BTYD one, each the spend's mean
    with noise of its own."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.6, 50.0, n)
    spend = rng.poisson(rate / 20) * 20.0
    return pd.DataFrame({"customer_id": np.arange(n), "spend": spend,
                         "learned": learned_scale * rate * rng.lognormal(0, learned_noise, n),
                         "btyd": rate * rng.lognormal(0, btyd_noise, n)})


@pytest.mark.parametrize(("values", "forced", "served"), [
    ([_value(0, 0.1, 0.8), _value(1, 0.1, 0.8)], "auto", "learned"),  # ranks far better, sizes as well
    ([_value(0, 0.1, 0.8, 3.0), _value(1, 0.1, 0.8, 3.0)], "auto", "btyd"),  # ranks better, sizes deciles 3x
    ([_value(0, 0.3, 0.3), _value(1, 0.3, 0.3)], "auto", "btyd"),  # as good: a tie keeps the simpler model
    ([_value(0, 0.8, 0.1), _value(1, 0.8, 0.1)], "learned", "learned"),  # forced, whatever the numbers
    ([_value(0, 0.1, 0.8).drop(columns="learned"), _value(1, 0.1, 0.8)], "auto", "btyd"),  # none at the newest
])
def test_the_rule_that_serves_a_clv(values, forced, served):
    source, why = better_clv_source([_evaluation(value=v) for v in values], forced)
    assert source == served and why.startswith(f"the {'learned' if served == 'learned' else 'BTYD'} CLV")


def test_a_tie_on_clv_ranking_is_a_tie_however_it_leans():
    values = [_value(0, 0.3, 0.3), _value(1, 0.3, 0.3)]
    source, why = better_clv_source([_evaluation(value=v) for v in values])
    assert source == "btyd" and "(tie)" in why


def _churn(seed: int, classifier_signal: float, btyd_signal: float, classifier_bias: float = 0.0, n: int = 4000):
    """Who churned, and two probabilities of it: the classifier's and the purchase model's, each from the true
    probability blended with noise (``*_signal``: how much of the truth each sees)."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(2, 2, n)
    churned = (rng.random(n) < truth).astype(int)

    def seen(signal):
        return np.clip(signal * truth + (1 - signal) * rng.random(n), 0.001, 0.999)

    return pd.DataFrame({"customer_id": np.arange(n), "churned": churned,
                         "classifier": np.clip(seen(classifier_signal) + classifier_bias, 0.001, 0.999),
                         "btyd": seen(btyd_signal)})


@pytest.mark.parametrize(("tables", "served"), [
    ([_churn(0, 0.9, 0.5), _churn(1, 0.9, 0.5)], "classifier"),  # better in both
    ([_churn(0, 0.6, 0.6), _churn(1, 0.6, 0.6)], "btyd"),  # a tie keeps the purchase model
    ([_churn(0, 0.9, 0.5, 0.35), _churn(1, 0.9, 0.5, 0.35)], "btyd"),  # ranks better, miscalibrated: worse Brier
])
def test_the_rule_that_serves_a_churn_probability(tables, served):
    source, why = better_churn_source([_evaluation(churn=t) for t in tables])
    assert source == served and why.startswith("the classifier" if served == "classifier" else "the purchase model")
    assert "+/-" in why
