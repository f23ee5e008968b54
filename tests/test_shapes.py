"""Shops of the shapes real shops have (features.simulator.SHAPES), five of each: training ends in a model without
artefacts, makes the same choices on most of them, and what serves is not below the simple baselines beyond noise
unless the run says it is weak."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from features.cycle import purchase_cycle
from features.simulator import SHAPES, shop_shape, simulate
from tests.helpers import assert_not_below_the_baselines_unless_weak, load, trained_on_its_own_cycle

CUSTOMERS = 1200
SEEDS = range(5)
# One group per shape: its trainings stay in one worker (``_shape_run``'s cache), the shapes spread over the workers.
BY_SHAPE = [pytest.param(shape, marks=pytest.mark.xdist_group(f"shape {shape}")) for shape in SHAPES]


@functools.cache
def _shape_run(shape: str, seed: int):
    """A shop of ``shape`` simulated with ``seed``, and its training run (each trained once in this module)."""
    sim = simulate(shop_shape(shape, CUSTOMERS, seed=seed))
    data = load(transactions=sim.transactions)
    return sim, data, trained_on_its_own_cycle(data)


@pytest.mark.parametrize("shape", BY_SHAPE)
def test_a_shop_of_any_shape_gets_a_model_without_artefacts(shape):
    sim, data, run = _shape_run(shape, 0)
    model, features = run.model, run.features
    scores = model.predict(features, drivers=0)
    buyers = (features.orders > 0).to_numpy()
    once = buyers & (features.frequency == 0).to_numpy()
    # no P(alive) of 1 by construction for the one-time buyers (they can leave: the Pareto/NBD process)
    assert (scores.p_alive[once] < 0.999).mean() > 0.5
    # the horizon covers the purchase cycle, or the history caps it (and the run's decision says so)
    cycle = purchase_cycle(data, run.windows.end)
    assert model.horizons.churn_days == cycle.churn_horizon
    assert model.horizons.churn_days >= cycle.gap_days / 2 or "capped" in cycle.describe(model.horizons.churn_days)
    # not the whole base in one risk band
    assert scores.churn_risk[buyers].value_counts(normalize=True).max() < 0.95
    # a one-time buyer's expected order value is near the shop's mean order
    mean_order = sim.transactions.amount.mean()
    assert 0.67 < model.spend.expected_order_value([0], [0.0])[0] / mean_order < 1.5
    assert_not_below_the_baselines_unless_weak(run)


@pytest.mark.parametrize("shape", BY_SHAPE)
def test_a_shop_of_any_shape_makes_the_same_choices_on_most_seeds(shape):
    """Five shops of each shape, simulated with different seeds: each decision (the purchase model, the churn
    source, the CLV source) serves the same choice on at least four, and no run is below the baselines beyond noise
    unless it says it is weak (measured: docs/models.md)."""
    runs = [_shape_run(shape, seed)[2] for seed in SEEDS]
    served = [{"purchase model": run.model.purchases.name, "churn": run.model.churn_source,
               "CLV": run.model.clv_source} for run in runs]
    for decision in served[0]:
        choices = Counter(choice[decision] for choice in served)
        assert choices.most_common(1)[0][1] >= len(SEEDS) - 1, (decision, served)
    for run in runs:
        assert_not_below_the_baselines_unless_weak(run)
        # every cut date judged on numbers (a purchase model's NaN predictions once made one CLV Gini NaN)
        assert run.track_record[["churn_roc_auc", "clv_gini", "clv_decile_mape"]].notna().all().all()
