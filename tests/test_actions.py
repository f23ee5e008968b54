"""What a shop acts on: churn risk bands, value tiers, the next order's date and the activity status, by hand,
against the BG/NBD closed form, out of time on two simulated processes and on CDNOW, and in the trained model's
records (where the labels must agree with the behaviour behind them)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from features import cdnow
from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.params import ActivityRules
from features.simulator import SimulationParams, simulate
from models.actions import ValueTiers, activity_status, next_order_days
from models.bgnbd import BGNBD
from models.purchase_models import PURCHASE_MODELS
from models.risk import RiskBands
from tests.helpers import CURRENT_SEGMENTS, assert_labels_agree_with_behaviour, load


def test_risk_bands_by_hand():
    bands = RiskBands(medium=0.4, high=0.7)
    assert bands.band([0.0, 0.39, 0.4, 0.69, 0.7, 1.0, np.nan]).tolist() == [
        "low", "low", "medium", "medium", "high", "high", None]
    for medium, high in ((0.7, 0.4), (0.5, 0.5), (0.0, 0.5), (0.5, 1.0)):
        with pytest.raises(LifecycleError, match="0 < medium < high < 1"):
            RiskBands(medium, high)


def test_value_tiers_hold_their_share_of_the_population_they_were_fitted_on():
    clv = np.arange(1, 1001, dtype=float)
    tiers = ValueTiers.fit(np.r_[clv, np.nan])  # a prospect's missing CLV is not part of the population
    counts = pd.Series(tiers.tier(clv)).value_counts()
    assert counts.to_dict() == {"top 1%": 10, "top 5%": 40, "top 10%": 50, "top 25%": 150, "top 50%": 250,
                                "rest": 500}
    assert tiers.tier([5000.0, 0.0, np.nan]).tolist() == ["top 1%", "rest", None]  # one customer alone, later
    with pytest.raises(LifecycleError, match="no customer with a CLV"):
        ValueTiers.fit([np.nan])


def test_next_order_days_is_the_bgnbd_median_in_closed_form():
    """BG/NBD: an alive customer drops out only at a purchase, so P(no purchase within t) is
    1 - p + p ((alpha + T) / (alpha + T + t))^(r + x): its median is (alpha + T)((1 - 1/(2p))^(-1/(r + x)) - 1)."""
    s = pd.read_csv(cdnow.dataset_path("cdnow_customers_summary_with_transactions.csv"))
    model = BGNBD().fit(s.x, s.t_x, s["T"])  # in weeks; a horizon of 52 weeks
    days = next_order_days(model, s.x, s.t_x, s["T"], 52)
    p = model.p_alive(s.x, s.t_x, s["T"])
    r, alpha = model.params_["r"], model.params_["alpha"]
    with np.errstate(invalid="ignore", divide="ignore"):
        exact = (alpha + s["T"]) * ((1 - 0.5 / p) ** (-1 / (r + s.x)) - 1)
    dated = ~np.isnan(days)
    assert dated.sum() > 300
    np.testing.assert_array_equal(dated, (p > 0.5) & (exact <= 52))
    np.testing.assert_allclose(days[dated], exact[dated], rtol=0.01)


def test_activity_status_by_hand():
    rules = ActivityRules()  # active within 1.5 gaps, lapsed after 3, churned after 6; P(alive) 0.5 for active
    gaps = [0.5, 1.5, 1.5, 1.0, 2.0, 3.0, 3.5, 3.5, 3.5, 6.0, 6.5, np.nan]
    frequency = [3, 3, 3, 3, 0, 3, 3, 3, 0, 3, 3, np.nan]
    lapsed = [False, False, False, True, False, True, False, True, True, True, True, False]
    alive = [0.9, 0.5, 0.49, 0.9, 0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9, np.nan]
    high = [False] * 12
    assert activity_status(gaps, frequency, lapsed, alive, high, rules).tolist() == [
        "active", "active", "at risk", "at risk", "at risk", "at risk", "at risk", "lapsed", "churned", "lapsed",
        "churned", None]
    high[0] = high[7] = True  # at high churn risk: not active; the other statuses do not depend on it
    assert activity_status(gaps, frequency, lapsed, alive, high, rules).tolist()[:8] == [
        "at risk", "active", "at risk", "at risk", "at risk", "at risk", "at risk", "lapsed"]


def _out_of_time(transactions: pd.DataFrame, data, cut, model_name: str, horizon: int):
    """Fitted at ``cut``: the share of the customers given a next order date who ordered by it, how many were
    given one, and per activity status the share who ordered within ``horizon`` days and how many there were."""
    builder = FeatureBuilder()
    table = builder.fit_transform(data, cut).df()
    table = table[table.orders > 0]
    history = [table[c].to_numpy(float) for c in ("frequency", "recency", "T")]
    purchases = PURCHASE_MODELS[model_name]().fit(*history)
    wait = next_order_days(purchases, *history, horizon)
    after = transactions[transactions.timestamp.dt.normalize() > pd.Timestamp(cut)]
    first = (after.groupby("customer_id").timestamp.min().dt.normalize() - pd.Timestamp(cut)).dt.days
    waited = table.customer_id.map(first).to_numpy(float)  # NaN: no order in what the data hold
    dated = ~np.isnan(wait)
    high_risk = purchases.p_no_purchase(builder.churn_horizon_days, *history) >= RiskBands().high
    status = activity_status(table.recency_gaps, table.frequency, table.lapsed, purchases.p_alive(*history),
                             high_risk, builder.activity)
    by_status = pd.DataFrame({"status": status, "ordered": waited <= horizon}).groupby("status").ordered
    return float((waited[dated] <= np.round(wait[dated])).mean()), int(dated.sum()), by_status.agg(["mean", "size"])


def _assert_status_ranks_who_orders(reorders: pd.DataFrame):
    """Every status holds customers, and the share who order falls from active to at risk, lapsed and churned."""
    assert set(reorders.index) == {"active", "at risk", "lapsed", "churned"} and (reorders["size"] >= 100).all()
    shares = reorders["mean"][["active", "at risk", "lapsed", "churned"]]
    assert shares.is_monotonic_decreasing and shares["active"] > 2 * shares["churned"], shares.to_dict()


@pytest.mark.parametrize("process", ["bgnbd", "pareto_nbd"])
def test_next_order_date_and_status_hold_out_of_time(process):
    """The date is a median: among the simulated customers given one, about half order by it. And the status
    ranks who orders in the next year: active, at risk, lapsed, churned."""
    sim = simulate(SimulationParams(customers=6000, seed=8, process=process, events=False, prospect_share=0))
    cut = (sim.end - timedelta(days=366)).date()
    share, dated, reorders = _out_of_time(sim.transactions, load(transactions=sim.transactions), cut, process, 365)
    assert dated > 500
    assert share == pytest.approx(0.5, abs=0.04)
    _assert_status_ranks_who_orders(reorders)


def test_next_order_date_and_status_hold_out_of_time_on_cdnow(cdnow_master):
    """Real customers: cut at week 39 (the published estimation sample's end), judged on the 39 weeks after."""
    data = load(transactions=cdnow_master)
    share, dated, reorders = _out_of_time(cdnow_master, data, pd.Timestamp("1997-09-30").date(), "bgnbd", 273)
    assert dated > 1000
    assert share == pytest.approx(0.5, abs=0.05)
    _assert_status_ranks_who_orders(reorders)


def test_the_trained_model_gives_every_customer_the_new_fields(cdnow_run):
    _, result = cdnow_run
    model = result.model
    scores = model.predict(result.features, drivers=0)
    np.testing.assert_allclose(scores.total_clv, scores.total_spend + scores.clv)
    shares = scores.value_tier.value_counts(normalize=True)
    for tier, share in (("top 1%", 0.01), ("top 5%", 0.04), ("top 10%", 0.05), ("top 25%", 0.15)):
        assert shares[tier] == pytest.approx(share, abs=0.005), tier
    ranked = scores.sort_values("clv", ascending=False)
    assert (ranked.value_tier.head(200) == "top 1%").all() and (ranked.value_tier.tail(200) == "rest").all()
    assert scores.churn_risk.tolist() == model.horizons.risk_bands.band(scores.churn_probability).tolist()
    dated = scores.next_order_date.notna()
    assert 0 < dated.sum() < len(scores) and (scores.p_alive[dated] > 0.5).all()
    waits = (scores.next_order_date[dated] - scores.as_of[dated]).dt.days
    assert waits.between(0, model.horizons.clv_days).all()
    one = model.predict(result.features.iloc[[int(np.flatnonzero(dated)[0])]], drivers=0)  # one alone: same
    row = scores[dated].iloc[[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(one[["value_tier", "churn_risk", "next_order_date"]],
                                  row[["value_tier", "churn_risk", "next_order_date"]])


def test_cdnow_labels_agree_with_behaviour(cdnow_run):
    """The contradictions the old labels had on CDNOW at its end (1998-06-30) are gone: 4,365 'Loyal' customers
    all lapsed, 12,054 one-time buyers of a median 502 days ago with nothing said about it, 42 % of advocates
    lapsed."""
    _, run = cdnow_run
    scores = run.model.predict(run.features, drivers=0)
    assert_labels_agree_with_behaviour(scores, run.features, run.model)
    once = run.features.frequency == 0
    assert once.sum() == 12_054 and (scores.activity_status[once] == "churned").all()
    loyal = scores.rfm_segment.isin(CURRENT_SEGMENTS)
    assert loyal.sum() > 1000 and (scores.recency_days[loyal] <= run.model.horizons.churn_days).all()
    # CDNOW has no advocacy signals: every advocate buys now, so is active unless at high churn risk
    advocates = scores[scores.stage == "advocacy"]
    assert (advocates.activity_status.eq("active") | advocates.churn_risk.eq("high")).all()
