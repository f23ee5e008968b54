"""Batch scoring on Spark, for shops whose logs outgrow one machine (``lifecycle score --engine spark``).

Every customer's rows meet in one partition (``features.spark.partitioned``), where the very code of the local
engine runs on them: ``features.sources.load`` validates (rejected rows come back with their reasons) and the model's
own fitted ``FeatureBuilder`` computes the features in DuckDB, so every feature still has one implementation, and
anything relative to the population (RFM edges) comes from training, never from the partition. The features are then
scored by ``mlflow.pyfunc.spark_udf`` on the registered model, and (scoring everyone) each feature's drift from the
training population is measured as ``serving.batch`` measures it, its bins counted in Spark's batches and summed.
Output, rejects and drift are Spark folders of part files (Parquet or CSV by the output's extension; drift: CSV).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import mlflow
import pandas as pd

from features.errors import LifecycleError
from features.spark import BUCKET, TABLE, Reading, is_parquet, partition_dataset, partitioned, read
from features.tables import TableSource
from models.drift import FeatureProfile
from models.pyfunc import load as load_model
from serving.batch import LIST_TABLE

REJECT_COLUMNS = ("input_table", "reason", "record")
LIST = "_list"  # the customer list's rows travel with the tables, tagged so


@dataclass
class SparkRun:
    """What one Spark scoring run read and wrote."""

    as_of: date
    version: str  # the model's registered version
    out: str  # Spark paths: local folders, or s3a://, hdfs://, ...
    rejects: str | None
    scored: int
    without_history: int  # listed customers without any order
    rows: dict[str, int]  # input rows per table
    rejected: dict[str, int]  # rejected rows per table
    drift: dict[str, float]  # PSI of each feature against the training population; empty for a list
    drift_path: str | None  # the same as CSV (feature, psi), beside the output


def score_spark(spark, model_uri: str, sources: dict[str, TableSource | None], as_of: date, out: str | Path,
                reading: Reading, customer_list: str | Path | None = None, partitions: int | None = None) -> SparkRun:
    """Score every customer in ``sources`` (or those in ``customer_list``) at ``as_of`` into ``out``, with
    the model at ``model_uri``; as ``serving.batch.score_batch`` does on one machine.

    ``spark`` is a live SparkSession; ``partitions`` (default: ``features.spark.default_partitions``) is how many groups
    of customers the features are built in; ``reading`` how their rows are read (a currency column needs the
    currency setting: a partition cannot see the others').
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType, TimestampType

    registered = load_model(model_uri)
    builder, version = registered.model.builder, registered.model.version
    # the version's own files, not models:/name/version: through Spark Connect the executors load the model themselves
    # and would look that name up in their own registry (the server's MLFLOW_REGISTRY_URI), not in ours
    pinned = (mlflow.MlflowClient().get_model_version_download_uri(registered.version.name, version)
              if registered.version else model_uri)
    inputs = _spark_schema(registered.metadata.get_input_schema())
    features_schema = StructType([StructField(f.name, f.dataType, True) for f in inputs.fields]
                                 + [StructField(c, StringType(), True) for c in REJECT_COLUMNS])
    listed = {LIST: _listed(spark, customer_list)} if customer_list is not None else None
    shop = partitioned(spark, sources, as_of, reading, partitions, listed)
    rows = shop.counts

    def features_of(group: pd.DataFrame) -> pd.DataFrame:
        data = partition_dataset(group, reading)
        if customer_list is not None:
            data.con.register("listed", group.loc[group[TABLE] == LIST, ["customer_id"]])
            data.con.execute(f"CREATE TEMP TABLE {LIST_TABLE} AS SELECT DISTINCT customer_id FROM listed")
        features = builder.transform(data, as_of, LIST_TABLE if customer_list is not None else None).df()
        rejects = data.con.sql("SELECT input_table, reason, CAST(record AS VARCHAR) AS record FROM rejects").df()
        both = pd.concat([_plain(features, inputs), _plain(rejects)], ignore_index=True)
        return both[features_schema.fieldNames()]

    built = shop.rows.groupBy(BUCKET).applyInPandas(features_of, features_schema).persist()
    try:
        rejects = built.where(F.col("reason").isNotNull()).select(*REJECT_COLUMNS)
        rejected = {row["input_table"]: row["count"] for row in rejects.groupBy("input_table").count().collect()}
        outputs = _spark_schema(registered.metadata.get_output_schema())
        # spark_udf returns no timestamps, and the pickled model does not know its registered version: both
        # are the same for every row, so Spark adds them; other dates come back as text and are read as dates
        dates = [f.name for f in outputs.fields if f.dataType == TimestampType() and f.name != "as_of"]
        returned = StructType([StructField(f.name, StringType(), True) if f.name in dates else f
                               for f in outputs.fields if f.name not in ("as_of", "model_version")])
        score = mlflow.pyfunc.spark_udf(spark, pinned, result_type=returned, env_manager="local")
        features = built.where(F.col("reason").isNull()).select(*inputs.fieldNames())
        scored = features.select(score(F.struct(*inputs.fieldNames())).alias("scores")).select(
            "scores.*", F.lit(as_of).alias("as_of"), F.lit(version).alias("model_version"))
        scored = scored.select(*(_as_written(f, f.name in dates) for f in outputs.fields))
        out, rejects_path, drift_path = str(out), None, None  # text, not Path: Path would fold s3a://bucket/'s //
        _write(scored, out)
        if rejected:
            rejects_path = _beside(out, "rejects")
            _write(rejects, rejects_path)
        count = features.count()
        without_history = features.where(F.col("orders") == 0).count() if customer_list is not None else 0
        profile = registered.model.profile
        drift = _drift(features, profile) if customer_list is None and profile is not None else {}
        if drift:
            drift_path = _beside(out, "drift", "csv")
            _write(spark.createDataFrame(pd.DataFrame({"feature": list(drift), "psi": list(drift.values())}))
                   .coalesce(1), drift_path)
    finally:
        built.unpersist()
    return SparkRun(as_of, version, out, rejects_path, count, without_history, rows,
                    {name: rejected.get(name, 0) for name in rows}, drift, drift_path)


def _beside(out: str, kind: str, suffix: str | None = None) -> str:
    """The path of what goes beside the output ``out``: its ``kind`` (rejects, drift) with ``out``'s extension, or
    ``suffix``."""
    stem, dot, extension = out.rpartition(".")
    if not (dot and "/" not in extension):
        stem, extension = out, ""
    return f"{stem}.{kind}.{suffix or extension}".rstrip(".")


def _drift(features, profile: FeatureProfile) -> dict[str, float]:
    """Each feature's PSI against the population the model was fitted on: ``profile``'s bins counted in each of
    Spark's batches of ``features`` and summed."""
    from pyspark.sql import functions as F

    def counted(batches):
        for batch in batches:
            yield pd.DataFrame([(name, k, int(n)) for name, bins in profile.counts(batch).items()
                                for k, n in enumerate(bins)], columns=["feature", "bin", "rows"])

    summed = features.mapInPandas(counted, "feature string, bin int, rows long").groupBy("feature", "bin").agg(
        F.sum("rows").alias("rows")).toPandas().sort_values(["feature", "bin"])
    if summed.empty:  # nobody scored
        return {}
    return profile.psi({name: bins["rows"].to_numpy() for name, bins in summed.groupby("feature")})


def _listed(spark, path: str | Path):
    """The ids of a customer list (CSV or Parquet: its ``customer_id`` column, or its only column), as text."""
    from pyspark.sql import functions as F

    frame = read(spark, "customer list", TableSource(path=str(path)))
    column = "customer_id" if "customer_id" in frame.columns else frame.columns[0] if len(frame.columns) == 1 else None
    if column is None:
        raise LifecycleError(f"customer list {str(path)!r} needs a customer_id column; it has {frame.columns}")
    ids = F.trim(F.col(column).cast("string"))
    return frame.select(ids.alias("customer_id")).where(ids.isNotNull() & (ids != "")).distinct()


def _plain(frame: pd.DataFrame, schema=None) -> pd.DataFrame:
    """``frame`` as Spark's Arrow bridge takes it: text as Python strings (None for missing), and the integer
    columns of ``schema`` as integers (ids are text inside a partition)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    for field in schema.fields if schema is not None else ():
        if field.name in out and field.dataType.typeName() in ("long", "integer"):
            out[field.name] = pd.to_numeric(out[field.name]).astype("Int64")
    return out


def _as_written(field, is_date: bool):
    """One output column of the UDF's result as the output holds it: text that stands for a missing value made
    NULL (spark_udf casts text with numpy's str, so a missing value arrives as "nan", "None" or "NaT"), and a
    date, which came back as text, read as a date."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    column = F.col(field.name)
    if field.name == "customer_id" or not (is_date or field.dataType == StringType()):
        return column
    value = F.to_date(F.substring(field.name, 1, 10)) if is_date else column
    return F.when(~column.isin("nan", "None", "NaT"), value).alias(field.name)


def _spark_schema(schema):
    """An MLflow signature schema as a Spark schema, every column nullable; a column the signature could
    not type (no value in the example, like the model version) is text."""
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType([StructField(spec.name, spec.type.to_spark() if hasattr(spec.type, "to_spark") else StringType(),
                                   True) for spec in schema.inputs])


def _write(frame, path: str) -> None:
    writer = frame.write.mode("overwrite")
    if is_parquet(path):
        writer.parquet(str(path))
    else:
        writer.option("header", True).csv(str(path))
