"""Feature values against hand-computed cases, RFM against an independent computation, and
point-in-time correctness: nothing after the as-of date changes a feature."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features import rfm
from features.build import FeatureBuilder
from features.errors import LifecycleError, NotFittedError
from features.params import ActivityRules, FeatureParams, StageRules
from tests.helpers import load

AS_OF = date(2024, 3, 31)  # a Sunday; its week starts Monday 2024-03-25

ORDERS = [  # customer, timestamp, amount
    ("A", "2024-01-01 10:00", 10.0), ("A", "2024-01-01 15:00", 5.0), ("A", "2024-01-10 09:00", 20.0),
    ("A", "2024-03-01 12:00", 30.0), ("A", "2024-04-02 08:00", 40.0),
    ("B", "2024-03-20 12:00", 50.0), ("B", "2024-04-10 12:00", 15.0),
    *[("C", f"2024-02-{d:02d} 12:00", 10.0) for d in (1, 5, 10, 15, 20)],
    ("D", "2024-04-20 12:00", 25.0),
    ("G", "2023-10-01 12:00", 12.0),
    ("H", "2024-01-15 12:00", 8.0), ("H", "2024-01-20 12:00", 8.0), ("H", "2024-05-02 12:00", 8.0),
]
EVENTS = [  # customer, timestamp, type, value
    *[("A", f"2024-03-{d:02d} 08:00", "email_send", None) for d in (1, 8, 15, 29)],
    ("A", "2024-03-08 09:00", "email_open", None), ("A", "2024-03-29 09:00", "email_open", None),
    ("A", "2024-03-29 09:05", "email_click", None),
    ("A", "2024-02-28 10:00", "cart_add", None), ("A", "2024-03-01 11:00", "cart_add", None),
    ("A", "2024-03-05 10:00", "return", 30.0),
    ("A", "2024-02-01 10:00", "nps", 10.0), ("A", "2024-03-10 10:00", "nps", 6.0),
    ("A", "2024-03-30 10:00", "session", None), ("A", "2024-04-05 10:00", "session", None),
    ("B", "2024-03-21 10:00", "nps", 10.0),
    *[("D", f"2024-03-0{d} 10:00", "session", None) for d in (1, 2, 3)],
]
CUSTOMERS = [  # customer, signup, channel, cost
    ("A", "2023-12-01", "organic", 0.0), ("B", "2024-03-01", "paid_search", 20.0), ("D", "2024-02-01", "social", 5.0),
    ("E", "2024-01-01", "email", 1.0), ("F", "2024-05-01", "social", 5.0),
]
PARAMS = FeatureParams(windows_days=[7, 30, 90], trend_window_days=31)
RULES = StageRules(advocacy_segments=[])  # keep stages independent of the learned RFM edges here


def tables(orders=ORDERS, events=EVENTS, customers=CUSTOMERS) -> dict[str, pd.DataFrame]:
    return {
        "transactions": pd.DataFrame(orders, columns=["customer_id", "timestamp", "amount"]),
        "events": pd.DataFrame(events, columns=["customer_id", "timestamp", "event_type", "value"]),
        "customers": pd.DataFrame(customers, columns=["customer_id", "signup_date", "acquisition_channel",
                                                      "acquisition_cost"]),
    }


@pytest.fixture(scope="module")
def small():
    data = load(**tables())
    builder = FeatureBuilder(PARAMS, RULES, churn_horizon_days=90).fit(data, AS_OF)
    return data, builder, builder.transform(data, AS_OF).df().set_index("customer_id")


def test_order_features_by_hand(small):
    _, _, f = small
    a = f.loc["A"]
    expected = {
        "frequency": 2, "recency": 60, "T": 90, "monetary_value": 25.0,
        "frequency_weeks": 2, "recency_weeks": 8, "T_weeks": 12, "monetary_value_weeks": 25.0,
        "recency_days": 30, "orders": 4, "purchase_days": 3, "total_spend": 65.0, "avg_order_value": 16.25,
        "tenure_days": 90, "first_order_value": 15.0, "spend_std": np.std([10, 5, 20, 30], ddof=1),
        "mean_days_between": 30.0, "std_days_between": np.std([9, 51], ddof=1), "orders_recent": 1,
        "order_rate_trend": 30 * (1 / 31 - 3 / 60), "spend_trend": 30 * (30 / 31 - 35 / 60),
    }
    for name, value in expected.items():
        assert a[name] == pytest.approx(value, rel=1e-12), name
    b = f.loc["B"]
    assert (b.frequency, b.recency, b["T"], b.monetary_value) == (0, 0, 11, 0)
    assert pd.isna(b.spend_std) and pd.isna(b.mean_days_between)


def test_engagement_features_by_hand(small):
    _, _, f = small
    a = f.loc["A"]
    assert (a.email_send_7d, a.email_send_30d, a.email_send_90d, a.days_since_email_send) == (1, 3, 4, 2)
    assert (a.session_7d, a.days_since_session) == (1, 1)  # the session after the as-of date is not read
    assert (a.email_open_rate, a.email_click_rate) == (0.5, 0.25)
    assert (a.cart_to_order_rate, a.return_rate, a.latest_nps, a.reviews, a.referrals) == (2.0, 0.25, 6.0, 0, 0)
    # Event types a customer never had give zero counts and a missing recency, not errors.
    e = f.loc["E"]
    assert e.referral_90d == 0 and pd.isna(e.days_since_referral) and pd.isna(e.email_open_rate)
    assert (f.loc["D"].days_since_signup, f.loc["D"].acquisition_channel) == (59, "social")  # 2024 is a leap year


def test_stages_and_rhythm_by_hand(small):
    _, builder, f = small
    assert "F" not in f.index  # signed up after the as-of date
    # Repeat buyers' mean days between purchase days at AS_OF: A 60/2, C 19/4, H 5/1; their median is 5.
    assert builder.typical_gap_days_ == 5.0
    buyers = f[f.orders > 0]
    # Typical gap: (span + 5) / purchase days; one-time buyers (B, G) get the population's 5 days.
    assert buyers.typical_gap_days.to_dict() == pytest.approx({"A": 65 / 3, "B": 5.0, "C": 24 / 5, "G": 5.0,
                                                               "H": 5.0})
    assert buyers.recency_gaps.to_dict() == pytest.approx({"A": 30 / (65 / 3), "B": 11 / 5, "C": 40 / 4.8,
                                                           "G": 182 / 5, "H": 71 / 5})
    assert f.loc[["D", "E"], ["typical_gap_days", "recency_gaps"]].isna().all().all()
    # C bought on five days, but eight of its gaps ago: no longer an advocate by purchases alone.
    assert f.stage.to_dict() == {"A": "retention", "B": "conversion", "C": "retention", "D": "consideration",
                                 "E": "awareness", "G": "conversion", "H": "retention"}
    assert f.loc["A"].next_stage == "advocacy" and f.loc["C"].next_stage == "advocacy"
    assert f.stage_rank.to_dict() == {"A": 3, "B": 2, "C": 3, "D": 1, "E": 0, "G": 2, "H": 3}
    # What each record rests on: E signed up and did nothing else.
    assert f.evidence.to_dict() == {"A": "repeat buyer", "B": "one purchase", "C": "repeat buyer",
                                    "D": "engagement only", "E": "none", "G": "one purchase", "H": "repeat buyer"}
    # Recency edges over [11, 30, 40, 71, 182] days are 26.2, 36, 52.4, 93.2: R scores A 4, B 5, C 3, G 1, H 2.
    assert buyers.r_score.to_dict() == {"A": 4, "B": 5, "C": 3, "G": 1, "H": 2}
    # lapsed: no order in the 90-day churn window (G only); G's segment is named from the R1-2 row, A (buying
    # now) from R3-5, and B, C, H (overdue by their rhythm but not lapsed) keep the grid's.
    assert f.lapsed.to_dict() == {"A": False, "B": False, "C": False, "D": False, "E": False, "G": True,
                                  "H": False}
    fm = (buyers.f_score + buyers.m_score + 1) // 2
    named_r = {"A": 4, "B": 5, "C": 3, "G": 1, "H": 2}
    assert buyers.rfm_segment.to_dict() == {c: rfm.segment_of(named_r[c], int(fm[c])) for c in buyers.index}


def test_a_slow_buyer_at_their_rhythm_is_named_from_the_r3_to_r5_rows():
    """S orders every 120 days and last did 79 days ago: the oldest order of the shop (R1), yet within its
    rhythm and the churn window, so its segment is named as for R3."""
    orders = [("S", f"{day} 12:00", 50.0) for day in ("2023-05-17", "2023-09-14", "2024-01-12")]
    orders += [(f"N{i}", f"2024-03-{30 - i:02d} 12:00", 10.0) for i in range(5)]
    data = load(transactions=pd.DataFrame(orders, columns=["customer_id", "timestamp", "amount"]))
    f = FeatureBuilder().fit(data, AS_OF).transform(data, AS_OF).df().set_index("customer_id")
    s = f.loc["S"]
    assert (s.recency_days, s.typical_gap_days, s.lapsed) == (79, 120, False)  # (240 + 120) / 3: G is S's own
    assert s.r_score == 1 and s.rfm_segment == rfm.segment_of(3, int((s.f_score + s.m_score + 1) // 2))


def test_advocacy_needs_a_signal_or_buying_at_the_customers_rhythm():
    data = load(**tables())
    # C's five purchase days make it an advocate only while it buys at its rhythm: on its last day, yes.
    builder = FeatureBuilder(PARAMS, RULES).fit(data, AS_OF)
    assert builder.transform(data, date(2024, 2, 20)).df().set_index("customer_id").loc["C", "stage"] == "advocacy"
    # An advocacy signal is enough on its own: a review from lapsed H.
    events = [*EVENTS, ("H", "2024-03-30 10:00", "review", None)]
    data = load(**tables(events=events))
    f = FeatureBuilder(PARAMS, RULES).fit(data, AS_OF).transform(data, AS_OF).df().set_index("customer_id")
    assert f.loc["H", "stage"] == "advocacy" and f.loc["H", "recency_gaps"] > 3


def test_stage_thresholds_are_configurable():
    data = load(**tables())
    rules = StageRules(advocacy_segments=[], advocacy_min_purchases=3, consideration_min_sessions=4,
                       advocacy_min_nps=6)
    f = FeatureBuilder(PARAMS, rules).fit(data, AS_OF).transform(data, AS_OF).df().set_index("customer_id")
    assert f.stage.to_dict() == {"A": "advocacy", "B": "conversion", "C": "retention", "D": "awareness",
                                 "E": "awareness", "G": "conversion", "H": "retention"}
    # With a looser rhythm, C (8.3 gaps since its last order) buys at it again and is an advocate.
    loose = ActivityRules(active_within_gaps=9, lapsed_after_gaps=10, churned_after_gaps=20)
    f = FeatureBuilder(PARAMS, rules, activity=loose).fit(data, AS_OF).transform(data, AS_OF).df().set_index(
        "customer_id")
    assert f.loc["C", "stage"] == "advocacy"
    with pytest.raises(ValueError, match="activity gaps must rise"):
        ActivityRules(active_within_gaps=3, lapsed_after_gaps=2)


def test_labels_by_hand(small):
    data, builder, _ = small
    labels = builder.labels(data, AS_OF, 30).df().set_index("customer_id")
    assert labels.loc["A", ["purchases", "orders", "spend", "churned", "reached_next_stage"]].tolist() == [
        1, 1, 40.0, False, False]
    assert labels.loc["B", ["purchases", "churned", "reached_next_stage"]].tolist() == [1, False, True]
    assert labels.loc["D", ["purchases", "churned", "reached_next_stage"]].tolist() == [1, False, True]
    assert labels.loc["E", ["purchases", "churned", "reached_next_stage"]].tolist() == [0, True, False]
    assert not labels.loc["C", "reached_next_stage"]  # a lapsed repeat buyer that stayed away
    assert labels.loc["H", "purchases"] == 0  # its next order is after the horizon
    with pytest.raises(LifecycleError, match="need data through 2024-07-29"):
        builder.labels(data, AS_OF, 120)
    # The window alone: the customers who ordered in it, with the labels' counts and spend.
    window = builder.window(data, AS_OF, 30).df().set_index("customer_id")
    assert set(window.index) == set(labels.index[labels.purchases > 0]) == {"A", "B", "D"}
    assert window.loc["A", ["purchases", "orders", "spend"]].tolist() == [1, 1, 40.0]
    assert (window[["purchases", "orders", "spend"]] == labels.loc[window.index, ["purchases", "orders", "spend"]]
            ).all().all()
    with pytest.raises(LifecycleError, match="need data through 2024-07-29"):
        builder.window(data, AS_OF, 120)


def test_rfm_scores_and_segments_match_an_independent_computation(shop):
    data = load(transactions=shop.transactions)
    as_of = date(2025, 6, 30)
    builder = FeatureBuilder().fit(data, as_of)
    f = builder.transform(data, as_of).df()
    buyers = f[f.orders > 0]
    for score, column in rfm.MEASURES.items():
        np.testing.assert_allclose(builder.rfm_edges_[score], np.quantile(buyers[column], rfm.QUANTILES))
        edges = np.array(builder.rfm_edges_[score])
        rank = 1 + (buyers[column].to_numpy()[:, None] > edges).sum(axis=1)
        np.testing.assert_array_equal(buyers[f"{score}_score"], 6 - rank if score == "r" else rank)
    # The rhythm, from the BTYD summary: the repeat buyers' median mean gap, and each buyer's gap shrunk to it.
    gap = (buyers.recency / buyers.frequency)[buyers.frequency > 0].median()
    assert builder.typical_gap_days_ == pytest.approx(gap, rel=1e-12)
    gaps = buyers.recency_days / ((buyers.recency + gap) / (buyers.frequency + 1))
    np.testing.assert_allclose(buyers.recency_gaps, gaps, rtol=1e-12)
    lapsed = buyers.recency_days > 90
    assert (buyers.lapsed == lapsed).all()
    now = ~lapsed & (gaps <= builder.activity.active_within_gaps)
    named_r = np.where(lapsed, np.minimum(buyers.r_score, 2), np.where(now, np.maximum(buyers.r_score, 3),
                                                                         buyers.r_score))
    assert (named_r < buyers.r_score).sum() > 100  # lapsed customers the grid alone would name from R3-5
    fm = (buyers.f_score + buyers.m_score + 1) // 2
    expected = [rfm.segment_of(int(r), x) for r, x in zip(named_r, fm, strict=True)]
    assert buyers.rfm_segment.tolist() == expected
    assert f[f.orders == 0].rfm_segment.isna().all()


def test_order_behaviour_matches_pandas_on_the_simulated_shop(shop):
    """Gaps between purchase days, first-day spend and spend std against a plain pandas computation."""
    as_of = date(2025, 6, 30)
    data = load(transactions=shop.transactions)
    f = FeatureBuilder().fit(data, as_of).transform(data, as_of).df().set_index("customer_id")
    orders = shop.transactions[shop.transactions.timestamp < pd.Timestamp(as_of) + timedelta(days=1)]
    days = orders.assign(day=orders.timestamp.dt.normalize()).groupby(["customer_id", "day"]).amount.sum()
    purchase_days = days.reset_index()
    gaps = purchase_days.groupby("customer_id").day.diff().dt.days.groupby(purchase_days.customer_id)
    expected = pd.DataFrame({
        "mean_days_between": gaps.mean(), "std_days_between": gaps.std(ddof=1),
        "first_order_value": days.groupby(level="customer_id").first(),
        "spend_std": orders.groupby("customer_id").amount.std(ddof=1),
    })
    got = f.loc[expected.index, expected.columns]
    assert got.std_days_between.notna().sum() > 500  # customers with three or more purchase days
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, check_names=False)


def test_segment_grid_names_every_cell():
    cells = {(r, fm): rfm.segment_of(r, fm) for r in range(1, 6) for fm in range(1, 6)}
    assert cells[5, 5] == "Champions" and cells[1, 1] == "Lost" and cells[2, 5] == "Can't lose"
    assert cells[5, 1] == "New" and cells[3, 3] == "Need attention" and cells[2, 1] == "Hibernating"
    assert {name for name, _, _ in rfm.SEGMENTS} == set(cells.values())  # every segment is reachable
    with pytest.raises(ValueError):
        rfm.segment_of(0, 3)


def test_quantiles_of_counts_by_hand():
    # 1, 1, 3, 3: quantile q sits at rank 3q. Ranks 0.6 and 2.4 fall between equal values (1 and 3);
    # rank 1.2 is 0.2 of the way from the second 1 to the first 3 (1.4), rank 1.8 is 0.8 of it (2.6).
    assert rfm.quantiles_of_counts([(1, 2), (3, 2)]) == pytest.approx([1.0, 1.4, 2.6, 3.0])
    assert rfm.quantiles_of_counts([(7, 1)]) == [7.0, 7.0, 7.0, 7.0]  # a single buyer


@given(st.lists(st.integers(0, 30), min_size=1, max_size=80))
def test_quantiles_of_counts_equal_numpy_on_the_values(values):
    counts = sorted(Counter(values).items())
    quantiles = (0.0, 0.2, 0.33, 0.5, 0.8, 1.0)
    np.testing.assert_allclose(rfm.quantiles_of_counts(counts, quantiles), np.quantile(values, quantiles), rtol=1e-13)


def _frames(shop, before=None):
    """The shop's tables, optionally only the rows before a timestamp."""
    tx, ev, cu = shop.transactions, shop.events, shop.customers
    if before is not None:
        tx, ev, cu = tx[tx.timestamp < before], ev[ev.timestamp < before], cu[cu.signup_date < before]
    return {"transactions": tx, "events": ev, "customers": cu}


def test_data_after_the_as_of_date_changes_no_feature(shop):
    as_of = date(2024, 12, 31)
    cutoff = pd.Timestamp(as_of) + timedelta(days=1)
    full = load(**_frames(shop))
    builder = FeatureBuilder().fit(full, as_of)
    with_future = builder.transform(full, as_of).df().sort_values("customer_id", ignore_index=True)
    past = load(**_frames(shop, before=cutoff))
    only_past = builder.transform(past, as_of).df().sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(with_future, only_past)
    assert len(with_future) > 2000 and with_future.session_30d.sum() > 0
    # Fitting is point-in-time too: the learned edges ignore the future.
    assert FeatureBuilder().fit(past, as_of).rfm_edges_ == builder.rfm_edges_


def test_one_customer_scored_alone_gets_the_row_of_the_full_table(shop):
    """What online scoring relies on: the fitted builder, not the batch, defines the features."""
    as_of = date(2025, 3, 31)
    full = load(**_frames(shop))
    builder = FeatureBuilder().fit(full, as_of)
    table = builder.transform(full, as_of).df().set_index("customer_id")
    for customer in table[table.orders > 2].index[:3].tolist() + table[table.orders == 0].index[:2].tolist():
        alone = load(**{name: frame[frame.customer_id == customer] for name, frame in _frames(shop).items()})
        row = builder.transform(alone, as_of).df().set_index("customer_id")
        expected = table.loc[[customer]]
        pd.testing.assert_frame_equal(_nulls_as_none(row), _nulls_as_none(expected), check_index_type=False)
        numeric = table.select_dtypes("number").columns
        assert row[numeric].dtypes.equals(table[numeric].dtypes)  # stable types whatever the batch holds


def _nulls_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    """One marker for SQL NULL, whichever pandas picked for the column (None, NaN, pd.NA)."""
    return frame.astype(object).where(frame.notna(), None)


def test_without_events_or_customers_the_schema_has_no_engagement_columns(shop):
    data = load(transactions=shop.transactions)
    f = FeatureBuilder().fit(data, date(2025, 6, 30)).transform(data, date(2025, 6, 30)).df()
    assert not any(c.startswith("session_") or c == "acquisition_channel" for c in f.columns)
    assert set(f.stage) <= {"conversion", "retention", "advocacy"}


def test_fit_transform_equals_fit_then_transform(shop):
    data = load(**_frames(shop))
    as_of = date(2025, 1, 31)
    fitted = FeatureBuilder().fit(data, as_of)
    once = FeatureBuilder()
    together = once.fit_transform(data, as_of).df().sort_values("customer_id", ignore_index=True)
    for score, edges in fitted.rfm_edges_.items():
        np.testing.assert_allclose(once.rfm_edges_[score], edges, rtol=1e-12)
    apart = fitted.transform(data, as_of).df().sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(together, apart, check_exact=False, rtol=1e-12)


def test_unfitted_builder_and_too_few_buyers_are_clear_errors():
    data = load(transactions=pd.DataFrame(ORDERS[:4], columns=["customer_id", "timestamp", "amount"]))
    with pytest.raises(NotFittedError, match="FeatureBuilder is not fitted"):
        FeatureBuilder().transform(data, AS_OF)
    with pytest.raises(LifecycleError, match="only 1 customers bought by the as-of date"):
        FeatureBuilder().fit(data, AS_OF)


def test_the_purchase_cycle_is_the_quantile_of_repeat_gaps_and_a_sample_finds_it_on_large_shops(shop, monkeypatch):
    """The cycle behind the auto churn horizon against pandas (gaps between a customer's consecutive purchase days,
    the 75th percentile interpolated); above ``MOST_CUSTOMERS`` it is measured on a hash sample of the customers,
    the same one every time, near the whole base's."""
    from features import cycle

    data = load(transactions=shop.transactions)
    as_of = data.date_range()[1].date()
    days = shop.transactions.assign(day=shop.transactions.timestamp.dt.normalize())[["customer_id", "day"]]
    days = days.drop_duplicates().sort_values(["customer_id", "day"])
    gaps = (days.day - days.groupby("customer_id").day.shift()).dt.days.dropna()
    whole = cycle.purchase_cycle(data, as_of)
    assert whole.gap_days == pytest.approx(np.quantile(gaps, 0.75), abs=1e-9) and whole.gaps == len(gaps)
    assert whole.history_days == (pd.Timestamp(as_of) - days.day.min()).days + 1 and not whole.sampled
    monkeypatch.setattr(cycle, "MOST_CUSTOMERS", 1000)  # of the shop's 3,000
    sampled = cycle.purchase_cycle(data, as_of)
    assert sampled == cycle.purchase_cycle(data, as_of) and sampled.sampled
    assert 0.2 < sampled.gaps / whole.gaps < 0.5 and sampled.history_days == whole.history_days
    # a sample of customers with all their orders (a sample of orders would see gaps several times longer); within
    # 15 % on a third of 3,000 customers (74 days for 67), within a day or two on 250,000
    assert sampled.gap_days == pytest.approx(whole.gap_days, rel=0.15)
    assert sampled.churn_horizon == whole.churn_horizon
    assert "of a sample of customers" in sampled.describe(sampled.churn_horizon)
