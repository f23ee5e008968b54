"""Paired comparisons over cut dates: weighted metrics against the unweighted ones, the bootstrap's noise against
known standard errors, and the rules that settle each decision on hand-made evaluations."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from training import evaluate
from training.backtest import (
    Bootstrap,
    absolute_error,
    brier,
    decile_mape,
    gini,
    judged_share,
    mean,
    roc_auc,
)
from training.decisions import NEAR_CHANCE_AUC, better_churn_source, better_clv_source, weaknesses
from training.judging import Evaluation
from training.tables import Sample

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
    rng = np.random.default_rng(0)  # deciles of 100 customers each: the same split as evaluate.value's
    spend = rng.gamma(0.5, 100.0, 1000)
    predicted = spend * rng.lognormal(0, 0.5, 1000)
    assert decile_mape(spend, predicted, np.ones((1, 1000)))[0] == pytest.approx(
        evaluate.value(spend, predicted)["decile_mape"])


def test_a_weight_counts_a_customer_that_many_times():
    y, score = np.array([0, 1, 1, 0.0]), np.array([0.3, 0.2, 0.8, 0.1])
    twice = np.array([[2.0, 1, 1, 1]])
    assert roc_auc(y, score, twice)[0] == pytest.approx(evaluate.ranking([0, 0, 1, 1, 0], [0.3, 0.3, 0.2, 0.8, 0.1]))
    spend = np.array([10, 0, 30, 5.0])
    assert gini(spend, score, twice)[0] == pytest.approx(
        evaluate.value(np.r_[10, spend], np.r_[0.3, score])["gini"])
    # ten customers in two deciles of five: predicted 1 and 3 against spend 2 and 2, off by half in each
    by_half = decile_mape(np.full(8, 2.0), np.array([3, 3, 3, 3, 1, 1, 1, 1.0]), np.array([[2.0, 1, 1, 1, 2, 1, 1, 1]]),
                          groups=2)
    assert by_half[0] == pytest.approx(0.5)


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


def test_a_difference_within_the_margin_is_a_tie_however_sure():
    """A gain of 0.002 per customer with a standard error of 0.0002 is beyond noise: better with no margin, a tie
    with a margin of 0.002 (the gain less its noise is below it), better again with a margin of 0.001."""
    rng = np.random.default_rng(2)
    n = 20_000
    ids, zero = np.arange(n), np.zeros(n)
    gain = rng.normal(0.0, 0.03, n)
    gain += 0.002 - gain.mean()
    found = {margin: Bootstrap().difference(mean, [(ids, zero, gain, zero)], margin) for margin in (0.0, 0.002, 0.001)}
    assert found[0.0].se == pytest.approx(0.03 / np.sqrt(n), rel=0.15)
    assert [found[m].verdict for m in (0.0, 0.002, 0.001)] == ["better", "tie", "better"]
    assert Bootstrap().difference(mean, [(ids, zero, zero, gain)], 0.002).verdict == "tie"
    assert Bootstrap().difference(mean, [(ids, zero, zero, gain)], 0.001).verdict == "worse"
    assert str(found[0.002]).endswith("(margin 0.002)")


def test_a_gini_difference_is_the_difference_of_the_ginis():
    """The Gini's difference draws the perfect order's curve once: still each side's normalized Gini, per replicate."""
    rng = np.random.default_rng(5)
    actual = rng.gamma(0.5, 100, 3000) * (rng.random(3000) < 0.4)
    a, b = actual + rng.normal(0, 60, 3000), actual + rng.normal(0, 120, 3000)
    difference = Bootstrap().difference(gini, [(np.arange(3000), actual, a, b)])
    assert difference.mean == pytest.approx(evaluate.value(actual, a)["gini"] - evaluate.value(actual, b)["gini"],
                                            abs=1e-12)


    def each_side_whole(outcome, score, weights):  # the same metric, but not known to have a cheaper difference
        return gini(outcome, score, weights)

    assert difference.se == pytest.approx(Bootstrap().difference(each_side_whole, [(np.arange(3000), actual, a, b)]).se,
                                          rel=1e-9)


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


def _kept(table: pd.DataFrame, sample: Sample) -> pd.DataFrame:
    """``sample``'s rows of ``table``, drawn in DuckDB as training draws them."""
    con = duckdb.connect()
    con.register("shop", table)
    return con.sql(f"SELECT * FROM shop WHERE {sample.condition()}").df()


def test_a_large_shop_is_judged_on_the_same_sample_of_customers_every_time():
    """Above ``most`` customers a run judges about ``most`` of them (within 4 binomial SDs), chosen by id at one share:
    the same ones whatever the order of the rows and in every table of the run (another table with some of the
    same customers keeps exactly those of them); a run on grown data (a smaller share) keeps a subset of them and of
    the newcomers. The replicates drawn inside it on 5,000 of its customers still give the noise of the full
    bootstrap within 15 % (with one hash for both draws, the replicates would keep the whole judged sample and scale
    its noise by sqrt(1/4))."""
    rng = np.random.default_rng(4)
    table = pd.DataFrame({"customer_id": [f"c{k}" for k in range(80_000)], "value": rng.random(80_000)})
    assert judged_share(80_000, most=100_000) == 1.0 and len(_kept(table, Sample(1.0))) == len(table)
    share = judged_share(80_000, most=20_000)
    assert share == 0.25
    kept = _kept(table, Sample(share))
    assert abs(len(kept) - 20_000) < 4 * np.sqrt(80_000 * 0.25 * 0.75)
    shuffled = _kept(table.sample(frac=1, random_state=1), Sample(share))
    assert set(shuffled.customer_id) == set(kept.customer_id)
    some = table.iloc[::3]
    assert set(_kept(some, Sample(share)).customer_id) == set(kept.customer_id) & set(some.customer_id)
    newcomers = {f"n{k}" for k in range(20_000)}
    later = pd.concat([table, pd.DataFrame({"customer_id": sorted(newcomers), "value": 0.0})])
    assert set(_kept(later, Sample(judged_share(len(later), most=20_000))).customer_id) <= (
        set(kept.customer_id) | newcomers)
    ids, n = kept.customer_id.to_numpy(), len(kept)
    y = rng.integers(0, 2, n).astype(float)
    a, b = y * 0.3 + rng.random(n), y * 0.28 + rng.random(n)
    full = Bootstrap().difference(roc_auc, [(ids, y, a, b)])
    assert Bootstrap(most=5000).difference(roc_auc, [(ids, y, a, b)]).se == pytest.approx(full.se, rel=0.15)


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
    ([_value(0, 0.75, 0.8), _value(1, 0.75, 0.8)], "auto", "btyd"),  # +0.013 +/- 0.011: under a Gini point for sure
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


def _served(seed: int, churn_signal: float, clv_noise: float, n: int = 4000) -> Evaluation:
    """An evaluation where the served churn probability sees ``churn_signal`` of the truth beside recency, which
    sees half of it, and the served CLV is the spend's mean with ``clv_noise`` beside a past spend rate with 0.5."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(2, 2, n)
    churned = (rng.random(n) < truth).astype(int)
    rate = rng.gamma(0.6, 50.0, n)
    churn = pd.DataFrame({"customer_id": np.arange(n), "churned": churned,
                          "served": churn_signal * truth + (1 - churn_signal) * rng.random(n),
                          "recency": 0.5 * truth + 0.5 * rng.random(n)})
    value = pd.DataFrame({"customer_id": np.arange(n), "spend": rng.poisson(rate / 20) * 20.0,
                          "served": rate * rng.lognormal(0, clv_noise, n),
                          "spend_rate": 3 * rate * rng.lognormal(0, 0.5, n)})  # it ignores that customers leave
    metrics = {"churn_roc_auc": evaluate.ranking(churned, churn.served),
               "clv_gini": evaluate.value(value.spend, value.served)["gini"]}
    return Evaluation(churn, pd.DataFrame(), pd.DataFrame(), value, metrics)


def test_a_run_that_beats_the_baselines_is_not_weak():
    found, line = weaknesses([_served(0, 0.9, 0.2), _served(1, 0.9, 0.2)])
    assert found == [] and line.startswith("not weak: ") and "(better)" in line


def test_a_run_no_better_than_the_baselines_is_weak_and_says_why():
    found, line = weaknesses([_served(0, 0.5, 0.2), _served(1, 0.5, 0.2)])  # churn only as good as recency
    assert len(found) == 1 and found[0].startswith("churn is no better than recency alone over 2 cut date(s)")
    assert line == f"weak: {found[0]}"


def test_a_run_that_ranks_near_chance_is_weak():
    found, _ = weaknesses([_served(0, 0.05, 0.2)])
    assert any(f.startswith("churn ranks near chance") for f in found)
    assert _served(0, 0.05, 0.2).metrics["churn_roc_auc"] < NEAR_CHANCE_AUC
    clv = _served(0, 0.9, 0.2)
    clv.value["served"] = np.random.default_rng(5).random(len(clv.value))  # a CLV that ranks nothing
    clv.metrics["clv_gini"] = evaluate.value(clv.value.spend, clv.value.served)["gini"]
    found, _ = weaknesses([clv])
    assert [f.split(" (")[0] for f in found] == ["the CLV is no better than the past spend rate over 1 cut date(s)",
                                                 "the CLV ranks near chance"]


def test_a_training_sample_keeps_each_stage_in_proportion_and_is_the_same_every_time():
    """Above ``most`` customers, the classifiers learn from about that many (within 4 binomial SDs), each lifecycle
    stage in proportion to its size (a rare stage too), the same customers whatever the order of the rows and whoever
    else is in the table (so the same at every date), independent of the judged sample; everyone on a smaller shop."""
    rng = np.random.default_rng(7)
    stages = rng.choice(["awareness", "conversion", "retention", "advocacy"], 60_000, p=[0.5, 0.3, 0.19, 0.01])
    table = pd.DataFrame({"customer_id": np.arange(60_000) * 7 + 3, "stage": stages})
    assert len(_kept(table, Sample.trained(60_000, 60_000))) == 60_000
    sample = Sample.trained(6_000, 60_000)
    kept = _kept(table, sample)
    assert sample.share == 0.1 and abs(len(kept) - 6_000) < 4 * np.sqrt(60_000 * 0.1 * 0.9)
    expected = table.stage.value_counts() / 10
    assert ((kept.stage.value_counts().reindex(expected.index) - expected).abs() < 4 * np.sqrt(expected * 0.9)).all()
    assert set(_kept(table.sample(frac=1, random_state=2), sample).customer_id) == set(kept.customer_id)
    some = table.iloc[::3]
    assert set(_kept(some, sample).customer_id) == set(kept.customer_id) & set(some.customer_id)
    as_text = _kept(table.astype({"customer_id": str}), sample)  # an engine that reads the ids as text
    assert set(as_text.customer_id) == set(kept.customer_id.astype(str))
    judged = set(_kept(table, Sample(0.1)).customer_id)
    overlap = len(judged & set(kept.customer_id)) / len(kept)
    assert abs(overlap - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(kept))  # drawn independently of the judged sample
