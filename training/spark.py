"""What training needs of the whole base, computed on Spark (``lifecycle train --engine spark``).

Every customer's rows meet in one partition (``features.spark.partitioned``), where the local engine's code computes,
at each date the protocol fits at, each buyer's BTYD summary and RFM measures (``FeatureBuilder.buyer_measures``).
Spark merges them per date into what the feature builder's fit learns (``features.build.Learned``: the same exact,
interpolated quantiles that DuckDB's ``quantile_cont`` gives locally) and into the BTYD fits' distinct rows with their
counts (``models.rows.BuyerRows``), which are fitted on the driver. Nothing per customer reaches the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd

from features import rfm
from features.build import FeatureBuilder, Learned
from features.spark import BUCKET, Partitioned, Reading, partition_dataset
from models.rows import BuyerRows

_SUMMARY = ["frequency", "recency", "T", "monetary_value"]
_MEASURES = {"as_of": "date", **dict.fromkeys(_SUMMARY, "double"), "recency_days": "long", "orders": "long",
             "total_spend": "double", "gap_days": "double"}


@dataclass(frozen=True)
class Buyers:
    """The whole base's buyers at a date, as the protocol fits on them."""

    learned: Learned  # what a feature builder's fit learns there
    rows: BuyerRows  # what the BTYD models are fitted on


def buyers(shop: Partitioned, reading: Reading, builder: FeatureBuilder, dates: list[date]) -> dict[date, Buyers]:
    """The ``Buyers`` of ``shop`` at each of ``dates``, merged on Spark from its partitions of customers (``builder``,
    fitted or not, gives the measures' SQL)."""
    from pyspark.sql import functions as F

    dates = sorted(set(dates))

    def measured(group: pd.DataFrame) -> pd.DataFrame:
        data = partition_dataset(group, reading)
        frames = [builder.buyer_measures(data, day).df().assign(as_of=day) for day in dates]
        return pd.concat(frames, ignore_index=True)[list(_MEASURES)]

    schema = ", ".join(f"{name} {kind}" for name, kind in _MEASURES.items())
    measures = shop.rows.groupBy(BUCKET).applyInPandas(measured, schema).persist()
    try:
        quantiles = list(rfm.QUANTILES)
        learned = {row["as_of"]: Learned(row["buyers"], row["gap"], {score: list(row[score]) for score in rfm.MEASURES})
                   for row in measures.groupBy("as_of").agg(
                       F.count("*").alias("buyers"), F.percentile("gap_days", 0.5).alias("gap"),
                       *(F.percentile(column, quantiles).alias(score) for score, column in rfm.MEASURES.items())
                   ).collect()}
        purchases = _counted(measures, ["frequency", "recency", "T"])
        spend = _counted(measures, ["frequency", "monetary_value"])
    finally:
        measures.unpersist()
    return {day: Buyers(learned[day], BuyerRows(_at(purchases, day), _at(spend, day))) for day in dates
            if day in learned}


def _counted(measures, columns: list[str]) -> pd.DataFrame:
    """How many buyers have each distinct value of ``columns``, per date: a row each, the count as a double."""
    from pyspark.sql import functions as F

    return measures.groupBy("as_of", *columns).agg(F.count("*").cast("double").alias("count")).toPandas()


def _at(counted: pd.DataFrame, day: date) -> pd.DataFrame:
    """``counted``'s rows of ``day``, sorted as ``models.rows.buyer_rows`` sorts them."""
    rows = counted[counted.as_of == day].drop(columns="as_of")
    return rows.sort_values(list(rows.columns[:-1]), ignore_index=True)
