"""The BTYD summary equals lifetimes.utils.summary_data_from_transaction_data.

frequency, recency and T are compared exactly. monetary_value is a mean of sums of floats:
lifetimes (pandas) adds with Kahan compensation in sorted order, DuckDB in parallel, so the two
agree to a few units in the last place (np.testing.assert_array_max_ulp), not bit for bit.
"""

from __future__ import annotations

import warnings
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lifetimes.utils import summary_data_from_transaction_data

from features import cdnow
from features.build import FeatureBuilder
from tests.helpers import load

MONETARY_ULPS = 4
COLUMNS = {"D": ("frequency", "recency", "T", "monetary_value"),
           "W": ("frequency_weeks", "recency_weeks", "T_weeks", "monetary_value_weeks")}


def assert_equal_to_lifetimes(log: pd.DataFrame, as_of: date) -> None:
    """Our features at ``as_of`` against lifetimes on the orders up to ``as_of``, in days and weeks."""
    data = load(transactions=log[["customer_id", "timestamp", "amount"]])
    ours = FeatureBuilder().fit(data, as_of).transform(data, as_of).df().set_index("customer_id")
    seen = log[log.timestamp < pd.Timestamp(as_of) + timedelta(days=1)]
    for freq, columns in COLUMNS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = summary_data_from_transaction_data(
                seen, "customer_id", "timestamp", monetary_value_col="amount",
                observation_period_end=pd.Timestamp(as_of), freq=freq,
            )
        got = ours.loc[ref.index, list(columns)].to_numpy()
        for i, name in enumerate(("frequency", "recency", "T")):
            np.testing.assert_array_equal(got[:, i], ref[name].to_numpy(), err_msg=f"{name} ({freq})")
        np.testing.assert_array_max_ulp(got[:, 3], ref["monetary_value"].to_numpy(), maxulp=MONETARY_ULPS)
    assert len(ours) == seen.customer_id.nunique()
    # The summary alone (training's holdout tables) is the feature table's, row for row.
    summary = FeatureBuilder().summary(data, as_of).df().set_index("customer_id")
    pd.testing.assert_frame_equal(summary.sort_index(), ours.loc[summary.index, list(COLUMNS["D"])].sort_index())
    assert set(summary.index) == set(seen.customer_id)


def test_cdnow_master_whole_period(cdnow_master):
    assert_equal_to_lifetimes(cdnow_master, date(1998, 6, 30))


def test_cdnow_master_at_the_end_of_the_calibration_period(cdnow_master):
    """Orders after the as-of date are present in the data and must not leak into the summary."""
    assert_equal_to_lifetimes(cdnow_master, date(1997, 9, 30))


def test_published_cdnow_summary_is_reproduced():
    """lifetimes' 2,357-customer summary (weeks 1-39) behind the published BG/NBD estimates."""
    log = cdnow.read_sample()
    data = load(transactions=log)
    as_of = cdnow.CALIBRATION_END.date()
    ours = FeatureBuilder().fit(data, as_of).transform(data, as_of).df().set_index("customer_id")
    ref = pd.read_csv(cdnow.dataset_path("cdnow_customers_summary_with_transactions.csv"), dtype={"ID": str})
    ref = ref.set_index("ID")
    ours = ours.loc[ref.index]
    assert len(ours) == 2357
    np.testing.assert_array_equal(ours.frequency, ref.x)
    np.testing.assert_array_equal(np.round(ours.recency / 7, 2), ref.t_x)
    np.testing.assert_array_equal(np.round(ours["T"] / 7, 2), ref["T"])
    # The published mean repeat spend is rounded half-up to cents.
    np.testing.assert_array_equal(np.floor(ours.monetary_value * 100 + 0.5 + 1e-9) / 100, ref.zbar)


START = datetime(2021, 1, 1)


@st.composite
def order_logs(draw):
    n = draw(st.integers(1, 40))
    customers = draw(st.lists(st.sampled_from([f"c{i}" for i in range(8)]), min_size=n, max_size=n))
    minutes = draw(st.lists(st.integers(0, 700 * 24 * 60), min_size=n, max_size=n))
    cents = draw(st.lists(st.integers(0, 100_000), min_size=n, max_size=n))
    # Draw amounts as cents (prices) or arbitrary doubles, to exercise float summation.
    if draw(st.booleans()):
        amounts = [c / 100 for c in cents]
    else:
        amounts = draw(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=n, max_size=n))
    log = pd.DataFrame({"customer_id": customers,
                        "timestamp": [START + timedelta(minutes=m) for m in minutes],
                        "amount": amounts})
    as_of = (log.timestamp.min() + timedelta(days=draw(st.integers(0, 720)))).date()
    return log, as_of


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order_logs())
def test_random_logs_equal_lifetimes(case):
    log, as_of = case
    if (log.timestamp < pd.Timestamp(as_of) + timedelta(days=1)).sum() == 0:
        return
    seen = log[log.timestamp < pd.Timestamp(as_of) + timedelta(days=1)]
    if seen.customer_id.nunique() < 5:  # fit needs five buyers; pad with far-past single orders
        pads = pd.DataFrame({"customer_id": [f"pad{i}" for i in range(5)],
                             "timestamp": [START - timedelta(days=400)] * 5, "amount": [1.0] * 5})
        log = pd.concat([log, pads], ignore_index=True)
    assert_equal_to_lifetimes(log, as_of)
