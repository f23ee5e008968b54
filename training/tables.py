"""The tables a run fits and is judged on: features at a date joined with what customers did after it.

DuckDB returns rows in no fixed order; every table is in customer order, so that the seeded splits, and so every
run, are reproducible.
"""

from __future__ import annotations

from datetime import date

import duckdb
import pandas as pd

from features.build import FeatureBuilder
from features.sources import Dataset
from models.lifecycle import Horizons
from training.windows import Windows

# Label columns joined to the features (orders renamed: the features have their own).
LABELS = ["purchases", "orders_in_window", "spend", "churned", "reached_next_stage"]


def labelled(data: Dataset, builder: FeatureBuilder, as_of: date, horizons: Horizons, fit: bool = False):
    """Features at ``as_of`` joined with their labels over the churn horizon, in customer order.

    DuckDB returns rows in no fixed order; sorting makes the seeded splits, and so every run,
    reproducible.
    """
    features = (builder.fit_transform(data, as_of) if fit else builder.transform(data, as_of)).df()
    labels = builder.labels(data, as_of, horizons.churn_days).df().rename(columns={"orders": "orders_in_window"})
    table = features.merge(labels[["customer_id", *LABELS]], on="customer_id", validate="one_to_one")
    return table.sort_values("customer_id", ignore_index=True)


def value_table(data: Dataset, builder: FeatureBuilder, as_of: date, days: int, fit: bool = True) -> pd.DataFrame:
    """Buyers at ``as_of`` (``builder`` fitted there unless not ``fit``): their features and ``spend`` over the
    next ``days`` days, in customer order."""
    features = (builder.fit_transform(data, as_of) if fit else builder.transform(data, as_of)).df()
    table = _with_window(features[features["orders"] > 0], builder.window(data, as_of, days), ["spend"])
    return table.sort_values("customer_id", ignore_index=True)


def _with_window(table: pd.DataFrame, window: duckdb.DuckDBPyRelation, columns: list[str]) -> pd.DataFrame:
    """``table`` (one row per customer) with ``columns`` of a ``FeatureBuilder.window``, 0 where a customer did not
    order in it."""
    done = window.df()[["customer_id", *columns]]
    return table.merge(done, on="customer_id", how="left", validate="one_to_one").fillna(dict.fromkeys(columns, 0))


def holdout_table(data: Dataset, builder: FeatureBuilder, win: Windows, horizons: Horizons) -> pd.DataFrame:
    """Buyers at the BTYD calibration end: their BTYD summary, what they did over the holdout (purchases,
    spend; ``churned``: no purchase in its first churn horizon) and their summary at the end
    (``frequency_end``, ``recency_end``, ``T_end``), in customer order."""
    cut = win.btyd_calibration_end
    table = _with_window(builder.summary(data, cut).df(), builder.window(data, cut, win.btyd_holdout_days),
                         ["purchases", "spend"])
    churn = builder.window(data, cut, horizons.churn_days).df()
    table["churned"] = ~table["customer_id"].isin(churn["customer_id"])
    end = builder.summary(data, win.end).df()[["customer_id", "frequency", "recency", "T"]]
    table = table.merge(end, on="customer_id", suffixes=("", "_end"), validate="one_to_one")
    return table.sort_values("customer_id", ignore_index=True)
