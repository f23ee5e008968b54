"""The whole base: what the protocol asks of every customer rather than of a sample.

The purchase models, Gamma-Gamma and the feature builder's RFM edges are fitted on every buyer, the samples are
shares of every customer, and the forecast sums every buyer. ``Base`` answers from the data in DuckDB on this
machine; ``training.spark.SparkBase`` answers the same questions from partitions of customers merged on Spark, while
its DuckDB holds only the sampled customers' rows, on which the protocol builds its tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, TypeVar

import duckdb
import pandas as pd

from features.build import FeatureBuilder, orders_sql
from features.sources import Dataset
from models.btyd import PurchaseModel
from models.forecast import forecast
from models.gamma_gamma import SpendModel
from models.lifecycle import Horizons
from models.rows import BuyerRows, buyer_rows

if TYPE_CHECKING:
    from training.tables import Sample

T = TypeVar("T")


@dataclass(frozen=True)
class Fitted:
    """``builder`` fitted at ``day`` on every buyer: its features (of the customers the data holds) and every buyer's
    ``BuyerRows`` there."""

    builder: FeatureBuilder
    day: date
    features: duckdb.DuckDBPyRelation
    rows: BuyerRows


class Base:
    """The whole base of a shop whose every row is in ``data``."""

    def __init__(self, data: Dataset):
        self.data = data

    def date_range(self) -> tuple[datetime | None, datetime | None]:
        """The first and last valid order."""
        return self.data.date_range()

    def customers(self) -> int:
        """Customers with a valid order."""
        return self.data.customers_count()

    def known(self) -> int:
        """Customers known from any table: the rows of a feature table at the end of the data."""
        return self.data.con.execute(f"SELECT count(DISTINCT customer_id) FROM ({ids_sql(self.data)})").fetchall()[0][0]

    def buyers(self, day: date) -> tuple[int, int]:
        """Customers who had ordered by ``day``, and those of them who had on two or more days."""
        return self.data.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE days > 1) FROM "
            f"(SELECT count(DISTINCT day) AS days FROM ({orders_sql(day)}) GROUP BY customer_id)").fetchall()[0]

    def rows(self, day: date) -> BuyerRows:
        """Every buyer at ``day`` as the BTYD fits take them."""
        return buyer_rows(FeatureBuilder().summary(self.data, day), "true")

    def fit(self, builder: FeatureBuilder, day: date) -> Fitted:
        """``builder`` fitted at ``day``, with its features and the buyers' rows there (reading the orders once)."""
        features = builder.fit_transform(self.data, day)
        return Fitted(builder, day, features, buyer_rows(features))

    def forecast(self, purchases: PurchaseModel, spend: SpendModel, horizons: Horizons, fitted: Fitted
                 ) -> pd.DataFrame:
        """The base's totals over the coming horizons (``models.forecast``), by the models fitted on ``fitted``."""
        return forecast(purchases, spend, horizons, fitted.features)

    def gather(self, work: Callable[[Dataset], T], sample: Sample | None = None) -> list[T]:
        """``work`` done where the base's customers are, each result in the list: here once, on ``data``. On Spark,
        once per partition of customers (``training.spark.SparkBase``), on the rows of ``sample``'s customers only
        where one is given (``work`` reads no one else), so ``work`` must be picklable and its result bounded (a
        sample's rows, not everyone's)."""
        return [work(self.data)]


def ids_sql(data: Dataset) -> str:
    """SQL for the customer id of every row of every given table (``customer_id``; repeated)."""
    return " UNION ALL ".join(f"SELECT customer_id FROM {table}" for table in data.report)
