"""BG/NBD and Gamma-Gamma against the published CDNOW results, lifetimes itself and the simulator."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter, GammaGammaFitter
from scipy.optimize import minimize

from features import cdnow
from features.build import FeatureBuilder
from features.errors import LifecycleError, NotFittedError
from features.simulator import SimulationParams, simulate
from models.bgnbd import BGNBD
from models.clv import clv, monthly_rate
from models.gamma_gamma import SpendModel
from tests.helpers import continuous_summary, load

LIFETIMES_MONTH_IN_WEEKS = 4.345


@pytest.fixture(scope="module")
def published():
    """lifetimes' 2,357-customer CDNOW summary, weeks 1-39 (the published estimation sample)."""
    return pd.read_csv(cdnow.dataset_path("cdnow_customers_summary_with_transactions.csv"))


@pytest.fixture(scope="module")
def fitted(published):
    s = published
    purchases = BGNBD().fit(s.x, s.t_x, s["T"])
    spend = SpendModel().fit(s.x, s.zbar)
    return purchases, spend


def test_bgnbd_reproduces_the_published_cdnow_estimates(fitted, published):
    """Fader, Hardie & Lee (2005): r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4."""
    purchases, _ = fitted
    paper = cdnow.PUBLISHED_FITS["bgnbd"]
    assert {k: round(v, 3) for k, v in purchases.params_.items()} == paper.params
    assert purchases.log_likelihood_ == pytest.approx(-9582.43, abs=0.01)  # the paper's -9582.4, to 2 decimals
    assert round(purchases.log_likelihood_, 1) == paper.log_likelihood
    # and it is the maximum: an independent, tightly converged search on our own log-likelihood agrees
    probe = BGNBD()

    def negative_log_likelihood(log_params):
        probe.params_ = dict(zip(("r", "alpha", "a", "b"), np.exp(log_params), strict=True))
        return -probe.log_likelihood(published.x, published.t_x, published["T"]).sum()

    best = minimize(negative_log_likelihood, np.log([0.3, 5.0, 1.0, 3.0]), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 20_000, "maxfev": 40_000})
    np.testing.assert_allclose(list(purchases.params_.values()), np.exp(best.x), rtol=1e-5)
    assert purchases.log_likelihood_ == pytest.approx(-best.fun, abs=1e-6)
    assert purchases.expected_purchases(39, [2], [30.43], [38.86])[0] == pytest.approx(1.226, abs=5e-4)


def test_gamma_gamma_reproduces_the_published_cdnow_estimates(fitted):
    _, spend = fitted
    assert {k: round(v, 4) for k, v in spend.params_.items()} == {"p": 6.2488, "q": 3.7446, "gamma": 15.4477}


def test_clv_reproduces_the_published_cdnow_values(fitted, published):
    purchases, spend = fitted
    s = published
    values = clv(purchases, spend, s.x, s.t_x, s["T"], s.zbar, np.arange(1, 13) * LIFETIMES_MONTH_IN_WEEKS,
                 monthly_discount=0.01)
    assert values.mean() == pytest.approx(30.339, abs=5e-4)
    assert np.round(values[:3], 2).tolist() == [36.28, 4.64, 8.34]


def test_predictions_and_clv_equal_lifetimes_on_the_cdnow_master_log(cdnow_master):
    """Fit through unique rows with weights, vectorised CLV: the same numbers as plain lifetimes."""
    data = load(transactions=cdnow_master)
    summary = FeatureBuilder().fit_transform(data, cdnow.OBSERVATION_END.date()).df()
    f, r, t, m = (summary[c].to_numpy() for c in ("frequency", "recency", "T", "monetary_value"))
    purchases = BGNBD().fit(f, r, t)
    spend = SpendModel().fit(f, m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = BetaGeoFitter().fit(f, r, t)
        repeat = (f > 0) & (m > 0)
        their_spend = GammaGammaFitter().fit(f[repeat], m[repeat])
    for name in ("r", "alpha", "a", "b"):
        assert purchases.params_[name] == pytest.approx(theirs.params_[name], rel=1e-6), name
    for ours, name in (("p", "p"), ("q", "q"), ("gamma", "v")):
        assert spend.params_[ours] == pytest.approx(their_spend.params_[name], rel=1e-6), name
    # Same parameters in, the same predictions out (to 1e-6 relative).
    theirs.params_ = pd.Series(purchases.params_)
    their_spend.params_ = pd.Series({"p": spend.params_["p"], "q": spend.params_["q"], "v": spend.params_["gamma"]})
    np.testing.assert_allclose(purchases.p_alive(f, r, t), theirs.conditional_probability_alive(f, r, t), rtol=1e-6)
    np.testing.assert_allclose(purchases.expected_purchases(90, f, r, t),
                               theirs.conditional_expected_number_of_purchases_up_to_time(90, f, r, t), rtol=1e-6)
    ours = clv(purchases, spend, f, r, t, m, np.arange(1, 13) * 30, monthly_discount=0.01)
    index = pd.RangeIndex(len(f))
    reference = their_spend.customer_lifetime_value(theirs, pd.Series(f, index), pd.Series(r, index),
                                                    pd.Series(t, index), pd.Series(m, index), time=12,
                                                    discount_rate=0.01, freq="D")
    np.testing.assert_allclose(ours, reference.to_numpy(), rtol=1e-6)


def test_gamma_gammas_objective_is_lifetimes_with_its_exact_gradient(published):
    """The fit's objective, written out with its gradient: lifetimes' value to the last bit, and autograd's gradient
    of lifetimes' function, at points around the CDNOW estimates and far from them, with and without a penalizer."""
    from autograd import value_and_grad

    from models.gamma_gamma import _value_and_gradient

    repeat = published[published.x > 0]
    x, m = repeat.x.to_numpy(float), repeat.zbar.to_numpy(float) / repeat.zbar.mean()
    weights = np.arange(len(x)) % 3 + 1.0
    reference = value_and_grad(GammaGammaFitter._negative_log_likelihood)
    for point in ([1.8, 1.4, -0.3], [0.1, 0.1, 0.1], [-3.0, 5.0, 4.0], [2.5, -0.5, 1.0]):
        for penalizer in (0.0, 0.1):
            value, gradient = _value_and_gradient(np.array(point), x, m, weights, penalizer)
            their_value, their_gradient = reference(np.array(point), x, m, weights, penalizer)
            assert value == their_value
            np.testing.assert_allclose(gradient, their_gradient, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("model", ["bgnbd", "mbgnbd"])
def test_bg_objectives_are_autograds_of_lifetimes_bit_for_bit(model, published):
    """BG/NBD's and MBG/NBD's objectives, written out, give lifetimes' value and autograd's gradient of it to the last
    bit (so the fits' paths and estimates are the ones autograd gave): on CDNOW's published sample with weights and on
    random rows, at points near the estimates and far out, with and without a penalizer."""
    from autograd import value_and_grad
    from lifetimes import ModifiedBetaGeoFitter

    from models import bgnbd, mbgnbd

    fitter, objective = {"bgnbd": (BetaGeoFitter, bgnbd._value_and_gradient),
                         "mbgnbd": (ModifiedBetaGeoFitter, mbgnbd._value_and_gradient)}[model]
    reference = value_and_grad(fitter._negative_log_likelihood)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 8, 300).astype(float)
    age = rng.uniform(1, 80, 300)
    rows = [(published.x.to_numpy(float), published.t_x.to_numpy(float), published["T"].to_numpy(float)),
            (x, np.where(x > 0, age * rng.uniform(0, 1, 300), 0.0), age)]
    points = [np.log([0.24, 4.4, 0.79, 2.4]), np.zeros(4), *rng.normal(0, 2.5, (40, 4))]
    for columns in rows:
        weights = np.arange(len(columns[0])) % 3 + 1.0
        for k, point in enumerate(points):
            penalizer = (0.0, 0.001, 0.1)[k % 3]
            with np.errstate(all="ignore"):
                value, gradient = objective(point, *columns, weights, penalizer)
                their_value, their_gradient = reference(point, *columns, weights, penalizer)
            assert np.array_equal(value, their_value, equal_nan=True), (model, point)
            assert np.array_equal(gradient, their_gradient, equal_nan=True), (model, point, gradient - their_gradient)


def test_the_last_bit_of_the_mean_spends_does_not_reach_gamma_gamma(published):
    """Mean spends from parallel sums differ in their last bit from run to run; the same data give the same fit."""
    x, m = published.x.to_numpy(), published.zbar.to_numpy()
    noisy = np.where(np.arange(len(m)) % 3 == 0, np.nextafter(m, np.inf), m)
    assert (noisy != m).sum() > 100
    assert SpendModel().fit(x, noisy).params_ == SpendModel().fit(x, m).params_


def test_the_zero_spend_repeat_buyer_gets_a_defined_order_value(cdnow_master):
    """One CDNOW repeat buyer's repeat orders were all free: Gamma-Gamma cannot fit that row."""
    data = load(transactions=cdnow_master)
    summary = FeatureBuilder().fit_transform(data, cdnow.OBSERVATION_END.date()).df()
    zero = summary[(summary.frequency > 0) & (summary.monetary_value == 0)]
    assert len(zero) == 1
    spend = SpendModel().fit(summary.frequency, summary.monetary_value)
    p, q = spend.params_["p"], spend.params_["q"]
    x = zero.frequency.iloc[0]
    value = spend.expected_order_value([x], [0.0])[0]
    assert value == pytest.approx((q - 1) / (p * x + q - 1) * spend.population_mean)
    assert spend.expected_order_value([0], [0.0])[0] == pytest.approx(spend.population_mean)


def _order_values(seed: int, q: float, mean_order: float, customers: int = 3000):
    """Repeat buyers (about once a year: 1 to 3 repeat orders) and the mean of their repeat order values: x
    Gamma(6, nu) orders each, nu ~ Gamma(q, gamma) set so that the mean order is ``mean_order``."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(0.3, customers) + 1
    nu = rng.gamma(q, 6 / ((q - 1) * mean_order), customers)
    return x, rng.gamma(6 * x, 1 / (nu * x))


def test_order_values_that_do_not_differ_between_customers_get_the_pooled_spend_model():
    """q = 1e4 (customers' mean orders differ by 1 %, far less than one customer's own orders do): on at least 4 of 5
    seeds Gamma-Gamma's q runs off or gains nothing beyond noise, and the pooled model serves with a note that says so
    (no outliers, no edge), everyone's expected order value the shop's mean order within 2 %, in any currency. On
    every seed a one-time buyer's expected order value is the shop's mean order within 2 %. Customers whose means
    differ (q = 4) keep Gamma-Gamma."""
    pooled = 0
    for seed in range(5):
        x, m = _order_values(seed, 1e4, 3176.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spend = SpendModel().fit(x, m)
        shop_mean = (x * m).sum() / x.sum()
        assert spend.expected_order_value([0], [0.0])[0] == pytest.approx(shop_mean, rel=0.02)
        if spend.pooled_:
            pooled += 1
            assert [str(w.message).split(",")[0] for w in caught] == [
                "Gamma-Gamma: customers' mean order values differ no more than one customer's own orders do"]
            assert np.abs(spend.expected_order_value(x, m) / shop_mean - 1).max() < 0.02
            cents = SpendModel().fit(x, m * 100)  # the same shop in cents: the same model
            assert cents.pooled_ and cents.population_mean == pytest.approx(100 * spend.population_mean, rel=1e-6)
    assert pooled >= 4
    x, m = _order_values(0, 4.0, 3176.0)
    differing = SpendModel().fit(x, m)
    assert not differing.pooled_ and 2.5 < differing.params_["q"] < 6
    assert differing.population_mean == pytest.approx(3176, rel=0.15)


def test_parameters_of_the_simulator_are_recovered():
    """Continuous-time data from the simulator: estimates within 4 standard errors of the truth."""
    sim = simulate(SimulationParams(customers=60_000, seed=8, events=False))
    s = continuous_summary(sim)
    purchases = BGNBD().fit(s.frequency, s.recency, s["T"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        errors = BetaGeoFitter().fit(s.frequency, s.recency, s["T"]).summary["se(coef)"]
    truth = sim.params
    for name in ("r", "alpha", "a", "b"):
        assert abs(purchases.params_[name] - getattr(truth, name)) < 4 * errors[name], name
    repeat = s[s.frequency > 0]
    spend = SpendModel().fit(repeat.frequency, repeat.monetary_value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spend_errors = GammaGammaFitter().fit(repeat.frequency, repeat.monetary_value).summary["se(coef)"]
    for name, ours in (("p", "p"), ("q", "q"), ("v", "gamma")):
        assert abs(spend.params_[ours] - getattr(truth, ours)) < 4 * spend_errors[name], name


def test_guards_speak_clearly():
    rng = np.random.default_rng(0)
    with pytest.raises(LifecycleError, match="only 3 repeat buyers"):
        BGNBD().fit([1, 2, 1, 0, 0], [5, 9, 3, 0, 0], [10, 10, 10, 10, 10])
    with pytest.raises(NotFittedError, match="BGNBD is not fitted"):
        BGNBD().p_alive([1], [1], [2])
    with pytest.raises(LifecycleError, match="missing values"):
        BGNBD().fit([1, np.nan], [1, 1], [2, 2])
    # Order values with an infinite mean: nu ~ Gamma(q = 0.7) makes q <= 1.
    x = rng.integers(1, 10, 5000)
    nu = rng.gamma(0.7, 1 / 15, 5000)
    m = rng.gamma(6 * x, 1 / (nu * x))  # the mean of x Gamma(6, nu) orders
    with pytest.raises(LifecycleError, match=r"q = 0\.[5-9][0-9]* <= 1"):
        SpendModel().fit(x, m)
    # Spend that grows with frequency breaks Gamma-Gamma's independence assumption: pair the
    # largest mean spends with the most frequent buyers.
    spend = np.sort(rng.gamma(6 * x, 1 / (rng.gamma(4, 1 / 15, 5000) * x)))
    with pytest.warns(UserWarning, match=r"correlate at 0\.[3-9]"):
        SpendModel().fit(np.sort(x), spend)


def test_monthly_rate_compounds_to_the_annual_rate():
    assert (1 + monthly_rate(0.10)) ** 12 == pytest.approx(1.10)


@pytest.mark.parametrize("collide", [False, True])
def test_unique_rows_are_exact_even_when_hashes_collide(collide, monkeypatch):
    from models import rows

    if collide:  # every row hashes alike: the exact fallback must take over
        def same_hash(frame, index):
            return pd.Series(np.zeros(len(frame), dtype="uint64"))

        monkeypatch.setattr(pd.util, "hash_pandas_object", same_hash)
    rng = np.random.default_rng(3)
    columns = [rng.integers(0, 4, 1000).astype(float), rng.integers(0, 3, 1000).astype(float), np.full(1000, 7.5)]
    levels, counts, inverse = rows.unique_rows(*columns)
    for level, column in zip(levels, columns, strict=True):
        np.testing.assert_array_equal(level[inverse], column)
    expected = np.unique(np.column_stack(columns), axis=0, return_counts=True)
    np.testing.assert_array_equal(np.column_stack(levels), expected[0])  # distinct and sorted
    np.testing.assert_array_equal(counts, expected[1])


def test_fits_on_the_buyers_aggregated_in_duckdb_equal_fits_on_every_customer(cdnow_master):
    """Training fits on distinct rows with their counts, aggregated in DuckDB (``models.rows.buyer_rows``): every
    purchase model, Gamma-Gamma and their parameters' covariances equal the fits on one row per customer; the
    weights count customers (a row of weight 3 is three customers)."""
    from models.purchase_models import PURCHASE_MODELS
    from models.rows import buyer_rows

    data = load(transactions=cdnow_master)
    features = FeatureBuilder().fit_transform(data, cdnow.OBSERVATION_END.date())
    rows = buyer_rows(features)
    buyers = features.filter("orders > 0").df()
    f, r, t, m = (buyers[c].to_numpy() for c in ("frequency", "recency", "T", "monetary_value"))
    grouped = rows.purchases
    assert rows.customers == len(buyers) == grouped["count"].sum() and len(grouped) < len(buyers) / 2
    for name, model in PURCHASE_MODELS.items():
        each = model().fit(f, r, t)
        aggregated = model().fit(grouped.frequency, grouped.recency, grouped["T"], weights=grouped["count"])
        for parameter, value in each.params_.items():
            assert aggregated.params_[parameter] == pytest.approx(value, rel=1e-9), (name, parameter)
        assert aggregated.customers_ == each.customers_ and aggregated.log_likelihood_ == pytest.approx(
            each.log_likelihood_, rel=1e-12)
        np.testing.assert_allclose(
            aggregated.log_parameter_covariance(grouped.frequency, grouped.recency, grouped["T"], grouped["count"]),
            each.log_parameter_covariance(f, r, t), rtol=1e-6)
    spend = SpendModel().fit(f, m)
    pairs = rows.spend
    aggregated = SpendModel().fit(pairs.frequency, pairs.monetary_value, weights=pairs["count"])
    assert aggregated.params_ == pytest.approx(spend.params_, rel=1e-9)
    np.testing.assert_allclose(aggregated.log_parameter_covariance(pairs.frequency, pairs.monetary_value,
                                                                   pairs["count"]),
                               spend.log_parameter_covariance(f, m), rtol=1e-6)
    tripled = BGNBD().fit([0, 1, 2, 5] * 5, [0, 30, 60, 200] * 5, [300, 300, 400, 400] * 5)
    weighted = BGNBD().fit([0, 1, 2, 5], [0, 30, 60, 200], [300, 300, 400, 400], weights=[5, 5, 5, 5])
    assert weighted.params_ == pytest.approx(tripled.params_, rel=1e-9) and weighted.customers_ == 20
