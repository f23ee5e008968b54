"""The three purchase models against the published CDNOW results, lifetimes and exact numerics.

BG/NBD's own published numbers are in tests/test_btyd.py; here: Pareto/NBD's (Fader & Hardie),
each model's fit and predictions against lifetimes' fitter of the same model, the probability of
no purchase against independent expressions, and finite values where lifetimes gives NaN.
"""

from __future__ import annotations

import warnings

import mpmath
import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

from features import cdnow
from features.build import FeatureBuilder
from features.simulator import SimulationParams, simulate
from models import pareto_nbd
from models.purchase_models import PURCHASE_MODELS
from tests.helpers import load
from training.choices import PURCHASE_MODEL_NAMES

LIFETIMES = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "pareto_nbd": ParetoNBDFitter}


def test_the_configuration_names_every_purchase_model_and_no_other():
    """``btyd.model`` is checked against the light list of names the CLI reads at start-up; the classes are
    found by the same names."""
    assert tuple(PURCHASE_MODELS) == PURCHASE_MODEL_NAMES
    assert all(PURCHASE_MODELS[name].name == name for name in PURCHASE_MODEL_NAMES)


@pytest.fixture(scope="module")
def published():
    """lifetimes' 2,357-customer CDNOW summary, weeks 1-39 (the published estimation sample)."""
    s = pd.read_csv(cdnow.dataset_path("cdnow_customers_summary_with_transactions.csv"))
    return s.x.to_numpy(float), s.t_x.to_numpy(float), s["T"].to_numpy(float)


@pytest.fixture(scope="module")
def master(cdnow_master):
    """Every CDNOW customer at the end of the data, in days, and each model fitted on them."""
    data = load(transactions=cdnow_master)
    summary = FeatureBuilder().fit_transform(data, cdnow.OBSERVATION_END.date()).df()
    columns = tuple(summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    return columns, {name: model().fit(*columns) for name, model in PURCHASE_MODELS.items()}


def lifetimes_with(name: str, params: dict[str, float]):
    """lifetimes' fitter of the same model holding ``params``."""
    fitter = LIFETIMES[name]()
    fitter.params_ = pd.Series(params)
    return fitter


def test_pareto_nbd_reproduces_fader_and_hardie_on_the_published_sample(published):
    """Fader & Hardie (2005): r = 0.553, alpha = 10.58, s = 0.606, beta = 11.66, LL = -9594.98."""
    model = PURCHASE_MODELS["pareto_nbd"]().fit(*published)
    paper = cdnow.PUBLISHED_FITS["pareto_nbd"]
    assert {k: float(f"{v:.3g}") for k, v in model.params_.items()} == {k: float(f"{v:.3g}")
                                                                         for k, v in paper.params.items()}
    assert model.log_likelihood_ == pytest.approx(paper.log_likelihood, abs=0.01)
    # lifetimes' own Nelder-Mead, from its (seeded) random start and converged tightly, lands on the same point
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ParetoNBDFitter().fit(*published, tol=1e-10, maxiter=20_000)
    for name in model.parameters:
        assert model.params_[name] == pytest.approx(theirs.params_[name], rel=1e-4), name


def test_pareto_nbds_gradient_is_the_objectives_slope(published, master):
    """Pareto/NBD's gradient (exact in alpha and beta, central differences in r and s) against the slope of its own
    objective measured with Richardson's extrapolation of central differences, in every log-parameter, near the
    CDNOW estimates and far from them (s near its cap included), with and without a penalizer."""
    objective = PURCHASE_MODELS["pareto_nbd"]()._objective()
    for x, t_x, T in (published, master[0]):
        columns = (x, t_x / T.max(), T / T.max(), np.arange(len(x)) % 3 + 1.0)  # time as the fit scales it; weights
        for point in ([-0.6, 0.1, -0.5, 0.2], [0.1, 0.1, 0.1, 0.1], [1.0, -2.0, 3.0, 4.0], [-2.0, 2.0, 4.5, 6.0]):
            for penalizer in (0.0, 0.1):
                gradient = objective(np.array(point), *columns, penalizer)[1]
                slopes = {h: [(objective(point + step, *columns, penalizer)[0]
                               - objective(point - step, *columns, penalizer)[0]) / (2 * h) for step in h * np.eye(4)]
                          for h in (5e-4, 1e-3)}
                measured = (4 * np.array(slopes[5e-4]) - np.array(slopes[1e-3])) / 3
                np.testing.assert_allclose(gradient, measured, rtol=1e-6, atol=1e-9)


def test_mbgnbd_equals_lifetimes_on_the_published_sample_and_the_master_log(published, master):
    (columns, models) = master
    for data, ours in ((published, PURCHASE_MODELS["mbgnbd"]().fit(*published)), (columns, models["mbgnbd"])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = ModifiedBetaGeoFitter().fit(*data)
        for name in ours.parameters:
            assert ours.params_[name] == pytest.approx(theirs.params_[name], rel=1e-6), name


def test_pareto_nbd_is_lifetimes_optimum_on_the_master_log(master):
    """lifetimes' default search stops ~1e-4 short on all 23,570 customers (converging it tightly from its
    own start takes ~9 minutes); started at our estimate and converged tightly, it does not move."""
    columns, models = master
    ours = models["pareto_nbd"]
    scale = 1 / columns[2].max()
    start = [ours.params_[k] * (scale if k in ours.time_parameters else 1) for k in ours.parameters]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ParetoNBDFitter().fit(*columns, initial_params=start, tol=1e-10, maxiter=4000)
    for name in ours.parameters:
        assert ours.params_[name] == pytest.approx(theirs.params_[name], rel=1e-5), name


@pytest.mark.parametrize("name", list(PURCHASE_MODELS))
def test_predictions_equal_lifetimes_and_are_finite_for_every_cdnow_customer(name, master):
    columns, models = master
    ours = models[name]
    theirs = lifetimes_with(name, ours.params_)
    alive, expected, silent = ours.p_alive(*columns), ours.expected_purchases(90, *columns), ours.p_no_purchase(
        90, *columns)
    for values in (alive, expected, silent, ours.log_likelihood(*columns)):
        assert np.isfinite(values).all()
    assert ((alive >= 0) & (alive <= 1) & (silent >= 0) & (silent <= 1) & (expected >= 0)).all()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        their_alive = np.asarray(theirs.conditional_probability_alive(*columns), dtype=float)
        their_expected = np.asarray(theirs.conditional_expected_number_of_purchases_up_to_time(90, *columns))
    finite = np.isfinite(their_alive) & np.isfinite(their_expected)
    np.testing.assert_allclose(alive[finite], their_alive[finite], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(expected[finite], their_expected[finite], rtol=1e-9)
    if name == "pareto_nbd":  # lifetimes' Pareto/NBD fails one CDNOW customer: 170 repeat purchases, the last on day T
        heavy = ~finite
        assert heavy.sum() == 1 and columns[0][heavy][0] == 170 and columns[1][heavy][0] == columns[2][heavy][0]
        assert alive[heavy][0] == 1.0 and 0 < silent[heavy][0] < 0.01
    else:
        assert finite.all()


def test_p_no_purchase_equals_independent_expressions(master):
    """Pareto/NBD: lifetimes' conditional P(X(t) = 0) (Fader & Hardie's 2006 note). BG/NBD and MBG/NBD:
    an alive customer's rate is Gamma(r + x, alpha + T) and they can leave only at a purchase, so
    P(none) = 1 - P(alive) + P(alive) ((alpha + T) / (alpha + T + t))^(r + x)."""
    (x, t_x, T), models = master
    pareto = models["pareto_nbd"]
    with np.errstate(all="ignore"):
        reference = lifetimes_with("pareto_nbd", pareto.params_).conditional_probability_of_n_purchases_up_to_time(
            0, 90, x, t_x, T)
    finite = np.isfinite(reference)
    np.testing.assert_allclose(pareto.p_no_purchase(90, x, t_x, T)[finite], reference[finite], rtol=1e-9)
    for name in ("bgnbd", "mbgnbd"):
        model = models[name]
        r, alpha = model.params_["r"], model.params_["alpha"]
        alive = model.p_alive(x, t_x, T)
        for t in (7, 90, 365):
            expected = 1 - alive + alive * ((alpha + T) / (alpha + T + t)) ** (r + x)
            np.testing.assert_allclose(model.p_no_purchase(t, x, t_x, T), expected, rtol=1e-10)
        # a row of horizons broadcasts, and never buying again is likelier the shorter the window
        rows = model.p_no_purchase([7, 90, 365], x, t_x, T)
        assert rows.shape == (len(x), 3) and (np.diff(rows, axis=1) <= 1e-12).all()


def test_mbgnbd_and_pareto_nbd_let_one_time_buyers_leave(master):
    """BG/NBD's P(alive) = 1 for everyone without a repeat purchase; the other two fall with the time since."""
    (x, t_x, T), models = master
    once = x == 0
    assert (models["bgnbd"].p_alive(x, t_x, T)[once] == 1).all()
    for name in ("mbgnbd", "pareto_nbd"):
        alive = models[name].p_alive(x[once], t_x[once], T[once])
        assert alive.max() < 0.9 and np.all(np.diff(alive[np.argsort(T[once])]) <= 1e-12)


@pytest.mark.parametrize("name", list(PURCHASE_MODELS))
def test_extreme_customers_get_finite_values(name, master):
    """Thousands of purchases, the last today or long ago; a first order this instant; a decades-old one."""
    _, models = master
    model = models[name]
    x = np.array([10_000, 10_000, 5_000, 0, 0, 1, 144, 300])
    t_x = np.array([500, 5, 499.99, 0, 0, 1e-6, 496, 1])
    T = np.array([500, 500, 500, 1e-9, 1e5, 1e5, 496, 1e5])
    for values in (model.p_alive(x, t_x, T), model.expected_purchases(365, x, t_x, T),
                   model.p_no_purchase(365, x, t_x, T), model.log_likelihood(x, t_x, T)):
        assert np.isfinite(values).all(), values
    alive = model.p_alive(x, t_x, T)
    assert alive[0] > 0.999 and alive[1] < 1e-6  # 10,000 orders, then silence for 495 days: gone
    # the heavy buyer who bought today makes about 20 purchases a day: none in a year is impossible
    assert model.p_no_purchase(365, x, t_x, T)[0] < 1e-3
    assert model.expected_purchases(365, x, t_x, T)[0] > 1000


def test_pareto_integral_against_quadrature_and_the_2f1_against_mpmath():
    """F(t) (models/pareto_nbd.py) by high-precision quadrature, and the 2F1 in (0, 1] it rests on to 1e-10
    over a grid of sizes that takes in the region where scipy's own hyp2f1 returns NaN."""
    mpmath.mp.dps = 30
    for params in ((0.55, 10.6, 0.61, 11.7), (0.61, 95.3, 0.31, 43.0), (2.0, 3.0, 5.0, 80.0)):
        r, alpha, s, beta = params
        for x, t in ((0, 0.0), (3, 20.0), (40, 5.0)):
            direct = mpmath.quad(lambda u: (alpha + u) ** -(r + x) * (beta + u) ** -(s + 1),  # noqa: B023
                                 [t + step for step in (0, 1, 3, 10, 30, 100, 1000, mpmath.inf)])
            assert np.exp(pareto_nbd._log_tail(params, np.array([x]), np.array([t])))[0] == pytest.approx(
                float(direct), rel=1e-8)
    c, d, w = (np.array(v, dtype=float).ravel() for v in np.meshgrid(
        [0.3, 1.6, 29.9, 145, 1e4], [0.01, 1.6, 20, 300], [0, -1e-4, -0.9, -1.9, -2.5, -5, -40, -1e4],
        indexing="ij"))
    d = c + d
    ours = pareto_nbd.log_hyp2f1_one(c, d, w)
    # mpmath's own series gives up on some of these; after Pfaff's transformation (argument in [0, 1)) it does not
    reference = [float(mpmath.log(mpmath.hyp2f1(1, di - ci, di, wi / (wi - 1))) - mpmath.log(1 - wi))
                 for ci, di, wi in zip(c, d, w, strict=True)]
    np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-14)


def test_the_2f1_for_large_arguments_against_mpmath():
    """Where the continued fraction needs thousands of steps (u >= 1e3 and d < u / 10: a population that barely
    drops out puts Pareto/NBD's beta near 1e7), DLMF 15.8.2 to 1e-10, and the cubic across its poles at
    c = 1, 2, 3, ...; c up to 12 with d up to 600 (where scipy's hyp2f1 in 15.8.2 lost every digit)."""
    mpmath.mp.dps = 30
    c, gap, u = (np.array(v, dtype=float).ravel() for v in np.meshgrid(
        [0.05, 0.7, 1.0, 1.004, 1.5, 2.0, 2.993, 3.7, 4.9, 5.0, 6.3, 11.7], [0.05, 2.0, 120.0, 590.0],
        [1e3, 1e4, 1e5, 1e8], indexing="ij"))
    d = c + gap
    ours = pareto_nbd.log_hyp2f1_one(c, d, -u)
    reference = np.array([float(mpmath.log(mpmath.hyp2f1(1, ci, di, -ui))) for ci, di, ui in zip(c, d, u, strict=True)])
    near_pole = np.abs(c - np.round(c)) < pareto_nbd.GAP
    np.testing.assert_allclose(ours[~near_pole], reference[~near_pole], rtol=1e-10)
    np.testing.assert_allclose(ours[near_pole], reference[near_pole], atol=5e-6)


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd"])
def test_alike_drop_out_probabilities_hold_a_at_its_cap_with_finite_predictions(name):
    """A shop whose customers all drop out with about the same probability (Beta(2000, 8000): 0.2 +/- 0.004).
    Unbounded, a and b run off together: here the search does not converge, and on a yearly shop it stopped at
    a = 3e5, b = 1.2e6, where the expected purchases' 2F1 returned NaN for every customer. The fit holds a at 100
    and says so; the mean drop-out probability is still the truth's, and the expected
    purchases over a month to eight years are finite and equal the sum of the purchase distribution's tail."""
    sim = simulate(SimulationParams(customers=4000, seed=2, a=2000.0, b=8000.0, events=False, prospect_share=0))
    data = load(transactions=sim.transactions)
    summary = FeatureBuilder().fit_transform(data, sim.end.date()).df()
    x, t_x, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    with pytest.warns(UserWarning, match="held at 100"):
        model = PURCHASE_MODELS[name]().fit(x, t_x, T)
    a, b = model.params_["a"], model.params_["b"]
    assert a == pytest.approx(100.0) and a / (a + b) == pytest.approx(0.2, abs=0.05)
    for days in (30.0, 365.0, 3000.0):
        expected = model.expected_purchases(days, x, t_x, T)
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(expected, model.future_purchases(days, x, t_x, T).mean(), rtol=1e-5, atol=1e-9)
