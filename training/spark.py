"""Training on Spark (``lifecycle train --engine spark``): the protocol of ``training.train``, with what it asks of the
whole base computed on Spark.

Every customer's rows meet in one partition (``features.spark.partitioned``), where the local engine's code runs on
them. The passes over the partitions, each merged on Spark or gathered on the driver:

- the census: rows read and rejected per table, the first and last order, customers with an order and known;
- at each date the protocol fits at, each buyer's BTYD summary and RFM measures (``FeatureBuilder.buyer_measures``),
  merged per date into what the feature builder's fit learns (``features.build.Learned``: the exact, interpolated
  quantiles DuckDB's ``quantile_cont`` gives locally) and the BTYD fits' distinct rows with their counts
  (``models.rows.BuyerRows``), which are fitted on the driver;
- the training sample: the rows of the trained customers (``training.tables.Sample.trained``: a share of the
  customers by a hash of the id, the same customers as on one machine), written as Parquet and loaded into the
  driver's DuckDB, where the protocol fits the classifiers and the learned CLV;
- the backtest (``SparkBase.gather``): the judged customers' holdout tables at every cut date, then, once the twins are
  fitted, their judged tables and every prediction of every twin (and, at the gate, of the champion's), computed in
  the partitions; the driver computes the metrics from those rows (``training.judging.judge``);
- the forecast: the served models' sums over every buyer (``models.forecast.sums_of``).

Nothing per customer of the whole base reaches the driver: it holds the training sample, the judged customers'
predictions, and per date the distinct rows.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from features import rfm
from features.build import FeatureBuilder, Learned
from features.errors import LifecycleError
from features.sources import Dataset, TableReport, connect, load
from features.spark import BUCKET, TABLE, TEXT_COLUMNS, Partitioned, Reading, partition_dataset
from features.tables import SCHEMAS, TableSource
from models.btyd import PurchaseModel
from models.forecast import COLUMNS, sums_of, totals
from models.gamma_gamma import SpendModel
from models.lifecycle import Horizons
from models.rows import BuyerRows
from training.base import Base, Fitted, T, ids_sql
from training.tables import Sample
from training.windows import windows

_BATCH = 100_000  # sampled rows written at a time
_SUMMARY = ["frequency", "recency", "T", "monetary_value"]
_MEASURES = {"as_of": "date", **dict.fromkeys(_SUMMARY, "double"), "recency_days": "long", "orders": "long",
             "total_spend": "double", "gap_days": "double"}


@dataclass(frozen=True)
class Buyers:
    """The whole base's buyers at a date, as the protocol fits on them."""

    learned: Learned  # what a feature builder's fit learns there
    repeat: int  # buyers who had ordered on two or more days
    rows: BuyerRows  # what the BTYD models are fitted on


@dataclass(frozen=True)
class Census:
    """The whole shop as read: rows per table, the first and last valid order, customers with an order and known."""

    report: dict[str, TableReport]
    first: datetime | None
    last: datetime | None
    customers: int
    known: int


class SparkBase(Base):
    """The whole base of a shop on Spark: ``data`` holds the sampled customers' rows (the judged and the trained), and
    what the protocol asks of everyone comes from the partitions, merged on Spark (``measure`` first, once the
    horizons are known)."""

    def __init__(self, shop: Partitioned, reading: Reading, census: Census, data: Dataset):
        super().__init__(data)
        self.shop, self.reading, self.census = shop, reading, census
        self.merged: dict[date, Buyers] = {}

    def measure(self, horizons: Horizons, cuts: int) -> None:
        """Merge the buyers at every date a run of up to ``cuts`` cut dates with ``horizons`` fits at."""
        first, end = self.census.first, self.data.as_of or (self.census.last and self.census.last.date())
        if first is not None and end is not None:
            self.merged = buyers(self.shop, self.reading, FeatureBuilder(), _fit_dates(first.date(), end, horizons,
                                                                                         cuts))

    def date_range(self) -> tuple[datetime | None, datetime | None]:
        return self.census.first, self.census.last

    def customers(self) -> int:
        return self.census.customers

    def known(self) -> int:
        return self.census.known

    def buyers(self, day: date) -> tuple[int, int]:
        return self._at(day).learned.buyers, self._at(day).repeat

    def rows(self, day: date) -> BuyerRows:
        return self._at(day).rows

    def fit(self, builder: FeatureBuilder, day: date) -> Fitted:
        builder.learn_schema(self.census.report).learn(self._at(day).learned)  # refuses a day with too few buyers
        return Fitted(builder, day, builder.transform(self.data, day), self._at(day).rows)

    def _at(self, day: date) -> Buyers:
        """The buyers at ``day`` (none where nobody had ordered by then)."""
        return self.merged.get(day) or Buyers(Learned(0, None, {}), 0, BuyerRows(
            pd.DataFrame(columns=["frequency", "recency", "T", "count"], dtype=float),
            pd.DataFrame(columns=["frequency", "monetary_value", "count"], dtype=float)))

    def forecast(self, purchases: PurchaseModel, spend: SpendModel, horizons: Horizons, fitted: Fitted
                 ) -> pd.DataFrame:
        return totals(purchases, spend, horizons, forecast_sums(self.shop, self.reading, fitted.builder, fitted.day,
                                                                purchases, spend, horizons.clv_days), fitted.rows)

    def gather(self, work: Callable[[Dataset], T], sample: Sample | None = None) -> list[T]:
        reading, as_of, span = self.reading, self.data.as_of, self.data.span
        keep = None if sample is None or sample.share >= 1 else sample.condition()

        def done(group: pd.DataFrame) -> pd.DataFrame:
            data = partition_dataset(group if keep is None else _rows_of(group, keep), reading)
            if as_of is not None:
                data.until(as_of)
            data.span = span  # a partition's customers stand in the whole shop's dates (label windows are checked)
            return pd.DataFrame({"result": [pickle.dumps(work(data))]})

        parts = self.shop.rows.groupBy(BUCKET).applyInPandas(done, "result binary").toPandas()
        return [pickle.loads(result) for result in parts.result]


def spark_base(shop: Partitioned, reading: Reading, sample_customers: int, folder: Path, as_of: date | None = None,
               memory_limit: str | None = None, threads: int | None = None) -> SparkBase:
    """The ``SparkBase`` of ``shop`` (read up to ``as_of``, default: its last order) for a run whose classifiers learn
    from about ``sample_customers``: its census, and its samples written under ``folder`` and loaded into a DuckDB of
    ``memory_limit`` and ``threads``, spilling there."""
    shop.rows.persist()  # read by every pass
    census = take_census(shop, reading, as_of)
    trained = Sample.trained(sample_customers, census.known)
    data = _load(write_sample(shop, reading, [trained], folder), reading, memory_limit, folder, threads)
    if as_of is not None:
        data.until(as_of)
    data.report, data.span = census.report, (census.first, census.last)  # they stand for the whole shop
    return SparkBase(shop, reading, census, data)


def _fit_dates(first: date, end: date, horizons: Horizons, cuts: int) -> list[date]:
    """Every date the protocol may fit at or count buyers at, over up to ``cuts`` cut dates (``cut_windows``)."""
    dates = set()
    for k in range(cuts):
        try:
            win = windows(first, end - timedelta(days=k * horizons.churn_days), horizons)
        except LifecycleError:
            break
        dates |= {win.t0, win.t1, win.end, win.btyd_calibration_end, win.clv_fitted, win.clv_judged}
    return sorted(dates)


def take_census(shop: Partitioned, reading: Reading, as_of: date | None = None) -> Census:
    """The ``Census`` of ``shop``, from its partitions: its rows as read, its orders and customers up to ``as_of``."""

    def counted(group: pd.DataFrame) -> pd.DataFrame:
        data = partition_dataset(group, reading)
        report = {name: [r.rows, r.valid, r.rejected] for name, r in data.report.items()}
        if as_of is not None:
            data.until(as_of)
        first, last = data.date_range()
        return pd.DataFrame({"first": [None if first is None else first.isoformat()],
                             "last": [None if last is None else last.isoformat()],
                             "customers": [data.customers_count()], "known": [Base(data).known()],
                             "report": [json.dumps(report)]})

    parts = shop.rows.groupBy(BUCKET).applyInPandas(
        counted, "first string, last string, customers long, known long, report string").toPandas()
    report: dict[str, TableReport] = {}
    for text in parts.report:
        for name, (rows, valid, rejected) in json.loads(text).items():
            if name not in shop.counts:  # an empty table standing in for one the shop does not have
                continue
            total = report.setdefault(name, TableReport(0, 0, {}))
            total.rows, total.valid = total.rows + rows, total.valid + valid
            for reason, n in rejected.items():
                total.rejected[reason] = total.rejected.get(reason, 0) + n
    stamps = {end: pd.to_datetime(parts[end].dropna()) for end in ("first", "last")}
    first = stamps["first"].min().to_pydatetime() if len(stamps["first"]) else None
    last = stamps["last"].max().to_pydatetime() if len(stamps["last"]) else None
    return Census(report, first, last, int(parts.customers.sum()), int(parts.known.sum()))


def buyers(shop: Partitioned, reading: Reading, builder: FeatureBuilder, dates: list[date]) -> dict[date, Buyers]:
    """The ``Buyers`` of ``shop`` at each of ``dates`` with any, merged on Spark from its partitions of customers
    (``builder``, fitted or not, gives the measures' SQL)."""
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
        learned = {row["as_of"]: (Learned(row["buyers"], row["gap"], {s: list(row[s]) for s in rfm.MEASURES}),
                                  row["repeat"])
                   for row in measures.groupBy("as_of").agg(
                       F.count("*").alias("buyers"), F.count("gap_days").alias("repeat"),
                       F.percentile("gap_days", 0.5).alias("gap"),
                       *(F.percentile(column, quantiles).alias(score) for score, column in rfm.MEASURES.items())
                   ).collect()}
        purchases = _counted(measures, ["frequency", "recency", "T"])
        spend = _counted(measures, ["frequency", "monetary_value"])
    finally:
        measures.unpersist()
    return {day: Buyers(*learned[day], BuyerRows(_at(purchases, day), _at(spend, day))) for day in dates
            if day in learned}


def _counted(measures, columns: list[str]) -> pd.DataFrame:
    """How many buyers have each distinct value of ``columns``, per date: a row each, the count as a double."""
    from pyspark.sql import functions as F

    return measures.groupBy("as_of", *columns).agg(F.count("*").cast("double").alias("count")).toPandas()


def _at(counted: pd.DataFrame, day: date) -> pd.DataFrame:
    """``counted``'s rows of ``day``, sorted as ``models.rows.buyer_rows`` sorts them."""
    rows = counted[counted.as_of == day].drop(columns="as_of")
    return rows.sort_values(list(rows.columns[:-1]), ignore_index=True)


def _rows_of(group: pd.DataFrame, keep: str) -> pd.DataFrame:
    """``group``'s rows of the customers whose id (as validation leaves it: trimmed text) meets the SQL condition
    ``keep``, chosen before the rows are loaded and validated."""
    ids = pd.DataFrame({"customer_id": group.customer_id.str.strip(" ").dropna().unique()})
    con = duckdb.connect()
    con.register("ids", ids)
    kept = con.sql(f"SELECT customer_id FROM ids WHERE {keep}").df().customer_id
    return group[group.customer_id.str.strip(" ").isin(set(kept))]


def write_sample(shop: Partitioned, reading: Reading, samples: list[Sample], folder: Path) -> dict[str, Path | None]:
    """Write the rows of the customers in any of ``samples`` as they were read, a Parquet file per table under
    ``folder`` on the driver (streamed a partition at a time); each table's file (None where no row was sampled)."""
    from pyspark.sql import functions as F

    keep = " OR ".join(f"({sample.condition()})" for sample in samples)

    def chosen(group: pd.DataFrame) -> pd.DataFrame:
        data = partition_dataset(group, reading)
        ids = data.con.sql(f"SELECT DISTINCT CAST(customer_id AS VARCHAR) AS id FROM ({ids_sql(data)}) "
                           f"WHERE {keep}").df().id
        return group[group.customer_id.str.strip(" ").isin(set(ids))][[TABLE, *TEXT_COLUMNS]]

    schema = ", ".join(f"{column} string" for column in [TABLE, *TEXT_COLUMNS])
    rows = shop.rows.groupBy(BUCKET).applyInPandas(chosen, schema).persist()
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    try:
        for name in shop.counts:
            path = folder / f"{name}.parquet"
            table = rows.where(F.col(TABLE) == name).select(*SCHEMAS[name])
            written[name] = path if _stream(table, path) else None
    finally:
        rows.unpersist()
    return written


def _stream(frame, path: Path) -> bool:
    """Write ``frame``'s rows (text columns) to a Parquet file at ``path`` on the driver, ``_BATCH`` rows at a time
    (a partition at a time from Spark); whether there were any."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, batch = None, []
    rows = frame.toLocalIterator()
    while True:
        row = next(rows, None)
        if row is not None:
            batch.append(row)
        if batch and (row is None or len(batch) == _BATCH):
            table = pa.table({c: pa.array([r[k] for r in batch], pa.string()) for k, c in enumerate(frame.columns)})
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            batch = []
        if row is None:
            break
    if writer is not None:
        writer.close()
    return writer is not None


def _load(tables: dict[str, Path | None], reading: Reading, memory_limit: str | None, folder: Path,
          threads: int | None) -> Dataset:
    """The sampled rows in a DuckDB on the driver, loaded as the local engine loads a shop's files."""
    sources = {name: TableSource(path=str(path)) if path else pd.DataFrame(columns=list(SCHEMAS[name]), dtype=object)
               for name, path in tables.items()}
    return load(connect(memory_limit, folder / "duckdb_tmp", threads), sources, now=reading.now,
                future_tolerance_days=reading.future_tolerance_days, emails=reading.emails, currency=reading.currency)


def forecast_sums(shop: Partitioned, reading: Reading, builder: FeatureBuilder, day: date, purchases: PurchaseModel,
                  spend: SpendModel, days: int) -> pd.DataFrame | None:
    """``models.forecast.sums_of`` over every buyer of ``shop`` at ``day`` (``builder`` fitted there), summed on Spark;
    None without buyers."""
    from pyspark.sql import functions as F

    names = ["customers", "purchases", "spend", "purchases_variance", "spend_variance",
             *(f"{total}_by_purchases_{p}" for total in ("purchases", "spend") for p in purchases.params_),
             *(f"spend_by_spend_{p}" for p in spend.params_)]

    def summed(group: pd.DataFrame) -> pd.DataFrame:
        buyers = builder.transform(partition_dataset(group, reading), day).filter("orders > 0").select(COLUMNS).df()
        if buyers.empty:
            return pd.DataFrame(columns=["group", "value", *names])
        return sums_of(purchases, spend, days, buyers).reset_index()[["group", "value", *names]]

    schema = ", ".join(["group string", "value string", *(f"`{name}` double" for name in names)])
    parts = shop.rows.groupBy(BUCKET).applyInPandas(summed, schema)
    sums = parts.groupBy("group", "value").agg(*(F.sum(f"`{name}`").alias(name) for name in names)).toPandas()
    return None if sums.empty else sums.set_index(["group", "value"])
