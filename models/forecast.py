"""The base's forecast: total purchases and spend over the CLV horizon, with prediction intervals.

For the whole base of buyers and for each RFM segment and stage. A total is a sum over customers,
so its spread has two parts: each customer's own randomness (the variances of their predictive
distributions, summed: customers are independent given the parameters) and what the data leave
unsure about the parameters, by the delta method: the expected totals' gradients in the
log-parameters (central differences) through each fit's covariance (``log_parameter_covariance``).
The interval is normal with both variances added: a total over many customers is close to normal
(docs/models.md shows its coverage on repeated simulations).
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import norm

from features.errors import LifecycleError
from models.btyd import PurchaseModel, holding
from models.gamma_gamma import SpendModel
from models.lifecycle import Horizons
from models.rows import BuyerRows, buyer_rows

GROUPINGS = ("rfm_segment", "stage")
COLUMNS = "customer_id, orders, frequency, recency, T, monetary_value, rfm_segment, stage"  # that ``forecast`` reads
STEP = 1e-4  # of the central differences, in log-parameters
CHUNK = 250_000  # buyers read at a time


def forecast(purchases: PurchaseModel, spend: SpendModel, horizons: Horizons, features: duckdb.DuckDBPyRelation,
             chunk: int = CHUNK) -> pd.DataFrame:
    """One row per group (``all`` buyers, then each RFM segment and stage): its customers, and their total
    purchases and spend over the CLV horizon with ``*_low`` / ``*_high`` at the interval level of ``horizons``.

    ``features`` is the feature table the two models were fitted on (the training population at its end). Its buyers
    are read ``chunk`` at a time, in customer order (the same sums whoever computes them, in bounded memory); the
    parameters' covariances come from their distinct rows (``models.rows.buyer_rows``).
    """
    sums = None
    for part in _chunks(features.filter("orders > 0").select(COLUMNS).order("customer_id"), chunk):
        found = sums_of(purchases, spend, horizons.clv_days, part)
        sums = found if sums is None else sums.add(found, fill_value=0)
    return totals(purchases, spend, horizons, sums, buyer_rows(features))


def totals(purchases: PurchaseModel, spend: SpendModel, horizons: Horizons, sums: pd.DataFrame | None,
           rows: BuyerRows) -> pd.DataFrame:
    """``forecast``'s table from the sums of ``sums_of`` over every buyer (None: there was none) and the buyers'
    distinct rows, which give the parameters' covariances."""
    if sums is None or sums.empty:
        raise LifecycleError("no buyers to forecast")
    sums = sums.sort_index()  # all, rfm_segment, stage; their values in order
    purchase_covariance = purchases.log_parameter_covariance(*_columns(rows.purchases))
    spend_covariance = spend.log_parameter_covariance(*_columns(rows.spend))
    by_purchases = {name: sums[[f"{name}_by_purchases_{p}" for p in purchases.params_]].to_numpy().T
                    for name in ("purchases", "spend")}
    by_spend = sums[[f"spend_by_spend_{p}" for p in spend.params_]].to_numpy().T
    parameter_variance = {
        "purchases": _through(by_purchases["purchases"], purchase_covariance),
        "spend": _through(by_purchases["spend"], purchase_covariance) + _through(by_spend, spend_covariance)}
    out = sums.index.to_frame(index=False)
    out["customers"] = sums["customers"].to_numpy().astype(int)
    z = norm.ppf((1 + horizons.interval) / 2)
    for name in ("purchases", "spend"):
        centre = sums[name].to_numpy()
        half = z * np.sqrt(sums[f"{name}_variance"].to_numpy() + parameter_variance[name])
        out[name], out[f"{name}_low"], out[f"{name}_high"] = centre, np.maximum(centre - half, 0), centre + half
    return out


def sums_of(purchases: PurchaseModel, spend: SpendModel, days: int, buyers: pd.DataFrame) -> pd.DataFrame:
    """Per group of ``buyers`` (``COLUMNS`` of a feature table's buyers): customers, expected purchases and spend over
    ``days``, their variances, and the expected totals' derivatives in each log-parameter of either model
    (``{total}_by_{model}_{parameter}``); indexed by (group, value). Sums: those of any split of the buyers add up."""
    f, r, t, m = (buyers[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    counts = purchases.future_purchases(days, f, r, t)
    money = spend.future_spend(counts, f, m)
    expected, order_value = counts.mean(), spend.expected_order_value(f, m)
    values = {"customers": np.ones(len(f)), "purchases": expected, "spend": money.mean(),
              "purchases_variance": counts.variance(), "spend_variance": money.variance()}
    for name, (up, down) in _shifted(purchases):  # purchases, and spend at today's order values
        change = (up.expected_purchases(days, f, r, t) - down.expected_purchases(days, f, r, t)) / (2 * STEP)
        values[f"purchases_by_purchases_{name}"], values[f"spend_by_purchases_{name}"] = change, change * order_value
    for name, (up, down) in _shifted(spend):
        change = (up.expected_order_value(f, m) - down.expected_order_value(f, m)) / (2 * STEP)
        values[f"spend_by_spend_{name}"] = expected * change
    table = pd.DataFrame(values)
    groups = [table.sum().to_frame().T.set_axis(pd.MultiIndex.from_tuples([("all", "all buyers")],
                                                                          names=["group", "value"]))]
    for column in GROUPINGS:
        summed = table.groupby(buyers[column].astype(str).to_numpy()).sum()
        groups.append(summed.set_axis(pd.MultiIndex.from_product([[column], summed.index], names=["group", "value"])))
    return pd.concat(groups)


def _shifted(model):
    """Each parameter's name with the model at it times exp(+STEP) and exp(-STEP) (central differences)."""
    for name, value in model.params_.items():
        yield name, tuple(holding(model, model.params_ | {name: value * np.exp(side * STEP)}) for side in (1, -1))


def _columns(rows: pd.DataFrame) -> list[pd.Series]:
    """A ``BuyerRows`` table's columns as a fit takes them: the values, then the counts as weights."""
    return [rows[c] for c in rows.columns]


def _chunks(relation: duckdb.DuckDBPyRelation, size: int) -> Iterator[pd.DataFrame]:
    """``relation``'s rows ``size`` at a time, in its order (the chunks' bounds do not depend on DuckDB's batches)."""
    pending, rows = [], 0
    for batch in relation.to_arrow_reader(size):
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size).to_pandas()
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending).to_pandas()


def _through(gradient: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Each group's variance ``g' C g`` by the delta method."""
    return np.einsum("pg,pq,qg->g", gradient, covariance, gradient)
