"""A shop's tables on Spark, in partitions of customers that the local engine's code works on.

The input tables are read by Spark, their columns renamed to ours by the configured column map, and
every row is sent, as text, to a partition chosen by a hash of its customer id: all of a customer's
orders, events and customer row meet in one partition. There ``partition_dataset`` loads them as the
local engine loads a shop's files (``features.sources.load``: validated, rejected rows kept with their
reasons), so every check and feature keeps one implementation. Scoring (``serving.spark``) and
training (``training.spark``) both start here.

Checks that compare rows of different customers cannot run inside a partition: an order id used by
two customers is not rejected here (the local engine rejects the second).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pandas as pd

from features.errors import LifecycleError
from features.files import until_condition
from features.sources import Dataset, connect, load
from features.tables import SCHEMAS, TIME_COLUMNS, TableSource

TEXT_COLUMNS = list(dict.fromkeys(column for schema in SCHEMAS.values() for column in schema))
TABLE, BUCKET = "_table", "_bucket"  # the columns naming each row's table and its partition of customers
ROWS_PER_PARTITION = 1_000_000  # input rows a partition of customers holds at most by default (a few hundred MB)


def session(master: str | None = None, app: str = "lifecycle", conf: dict[str, str] | None = None,
            remote: str | None = None):
    """A SparkSession in UTC with the Spark properties ``conf``.

    With ``remote`` (or pyspark's ``SPARK_REMOTE`` environment variable), a Spark Connect session: ``sc://host:15002``,
    or ``local[N]`` for a Connect server started here. Else a session on ``master``; None: Spark's own, that is
    spark-submit's ``--master`` or else ``local[*]``. Local executors run this very Python (and its packages) unless
    ``PYSPARK_PYTHON`` says otherwise."""
    from pyspark.sql import SparkSession

    remote = remote or os.environ.get("SPARK_REMOTE")
    if not remote or remote.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app)
    if remote:
        builder = builder.remote(remote)
    elif master:
        builder = builder.master(master)
    defaults = {"spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.pyspark.enabled": "true"}  # results reach pandas as Arrow batches
    if not remote:  # a Connect server's console is not ours, and its static properties are set where it starts
        defaults["spark.ui.showConsoleProgress"] = "false"
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def where(spark) -> str:
    """The session's master, and whether it is reached through Spark Connect."""
    from pyspark.sql.utils import is_remote

    master = spark.conf.get("spark.master", None) or "a Spark cluster"
    return f"{master} through Spark Connect" if is_remote() else master


def default_partitions(spark, rows: int) -> int:
    """Groups of customers for ``rows`` input rows: twice Spark's default parallelism (the cores; on Spark Connect,
    which does not tell it, twice ``spark.default.parallelism`` where set, else ``spark.sql.shuffle.partitions``), or
    one per ``ROWS_PER_PARTITION`` rows where that is more: a group is loaded whole into a Python worker."""
    from pyspark.sql.utils import is_remote

    if not is_remote():
        groups = 2 * spark.sparkContext.defaultParallelism
    elif parallelism := spark.conf.get("spark.default.parallelism", None):
        groups = 2 * int(parallelism)
    else:
        groups = int(spark.conf.get("spark.sql.shuffle.partitions"))
    return max(groups, math.ceil(rows / ROWS_PER_PARTITION))


@dataclass(frozen=True)
class Reading:
    """How the partitions' rows are read: ``features.sources.load``'s options."""

    now: datetime
    future_tolerance_days: int = 1
    emails: bool = False
    currency: str | None = None


@dataclass
class Partitioned:
    """Every input row as text (``TEXT_COLUMNS``, ``TABLE``), with its partition of customers (``BUCKET``)."""

    rows: object  # a Spark DataFrame
    counts: dict[str, int]  # input rows per table
    partitions: int


def partitioned(spark, sources: dict[str, TableSource | None], as_of: date | None, reading: Reading,
                partitions: int | None = None, tagged: dict[str, object] | None = None) -> Partitioned:
    """The tables of ``sources`` up to ``as_of`` (later rows are not read; None: all) in ``partitions`` groups of
    customers (default: ``default_partitions``), with ``tagged``'s frames of customer ids (a customer list)
    among them under their own tag."""
    from pyspark.sql import functions as F

    tables, counts = [], {}
    for name, source in sources.items():
        if source is None or source.path is None:
            continue
        check_supported(name, source, reading.currency)
        frame = read(spark, name, source, as_of)
        if reading.emails:  # before the hash that puts a customer's rows in one partition
            frame = frame.withColumn("customer_id", F.lower(F.trim(F.col("customer_id"))))
        counts[name] = frame.count()
        tables.append(_as_text(frame, name))
    if "transactions" not in counts:
        raise LifecycleError("no transactions given: pass --transactions or set inputs.transactions.path")
    tables += [_as_text(frame, tag) for tag, frame in (tagged or {}).items()]
    union = tables[0]
    for table in tables[1:]:
        union = union.unionByName(table)
    rows = sum(counts.values()) + sum(frame.count() for frame in (tagged or {}).values())
    partitions = partitions or default_partitions(spark, rows)
    bucket = F.pmod(F.xxhash64(F.trim("customer_id")), F.lit(partitions))  # ids are compared trimmed
    rows = union.withColumn(BUCKET, bucket).repartition(partitions, BUCKET)  # one shuffle, one group each
    return Partitioned(rows, counts, partitions)


def _as_text(frame, tag: str):
    from pyspark.sql import functions as F

    return frame.select(F.lit(tag).alias(TABLE), *(
        (F.col(c).cast("string") if c in frame.columns else F.lit(None).cast("string")).alias(c)
        for c in TEXT_COLUMNS))


def partition_dataset(group: pd.DataFrame, reading: Reading) -> Dataset:
    """One partition's rows (a group of ``partitioned``'s) loaded as the local engine loads a shop's tables, in a
    DuckDB of one thread (Spark runs a partition per core)."""
    frames = {name: group.loc[group[TABLE] == name, list(SCHEMAS[name])].reset_index(drop=True)
              for name in SCHEMAS if (group[TABLE] == name).any()}
    if "transactions" not in frames:  # customers here have events or are listed, but no orders
        frames["transactions"] = pd.DataFrame({c: pd.Series(dtype=object) for c in SCHEMAS["transactions"]})
    return load(connect(threads=1), frames, now=reading.now, future_tolerance_days=reading.future_tolerance_days,
                emails=reading.emails, currency=reading.currency)


def check_supported(name: str, source: TableSource, currency: str | None) -> None:
    """Refuse what the Spark engine does not do yet: each would need the user's own columns in the partitions."""
    unsupported = [what for what, used in (
        ("timestamp_format (give ISO 8601 timestamps)", source.timestamp_format),
        ("row filters (exclude, include)", source.exclude or source.include),
        ("line_items", source.line_items),
        ("an amount from several columns", " + " in source.columns.get("amount", "")
         or " - " in source.columns.get("amount", "")),
        ("a currency column without the currency setting", "currency" in source.columns and not currency),
    ) if used]
    if unsupported:
        raise LifecycleError(f"{name}: {', '.join(unsupported)} not supported with the Spark engine yet; use "
                             "the local engine, or write the orders as they should be read")


def read(spark, name: str, source: TableSource, until: date | None = None):
    """The table at ``source.path`` (CSV as text, or Parquet: a file, a glob or a dataset folder, hive-partitioned
    or not) with our column names; with ``until``, only its rows on or before that day, filtered where Spark reads
    them (``features.files.until_condition``: partitions pruned, Parquet timestamps pushed down)."""
    from pyspark.sql import functions as F

    path = source.path
    dataset = is_parquet(path) or Path(path).is_dir() or path.endswith("/")  # a folder: a Parquet dataset
    reader = spark.read.parquet if dataset else spark.read.option("header", True).csv
    try:
        frame = reader(path)
    except Exception as exc:  # Spark's AnalysisException for a missing path, and its kin
        raise LifecycleError(f"{name}: cannot read {path!r}: {str(exc).splitlines()[0]}") from None
    if until is not None and name in TIME_COLUMNS:
        kinds = dict(frame.dtypes)
        keys = set.intersection(*({part.split("=", 1)[0] for part in file.split("/") if "=" in part}
                                  for file in frame.inputFiles()))
        time_column = source.columns.get(TIME_COLUMNS[name], TIME_COLUMNS[name])
        frame = frame.where(F.expr(until_condition(until, time_column, kinds.get(time_column),
                                                   {key: kinds[key] for key in keys if key in kinds},
                                                   quote=lambda column: f"`{column.replace('`', '``')}`")))
    for ours, theirs in source.columns.items():
        if theirs in frame.columns:
            frame = frame.withColumnRenamed(theirs, ours)
    return frame


def is_parquet(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq"))
