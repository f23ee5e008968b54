"""The Spark engine (real Spark, local[2]) gives the records of the local engine on the same data."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.helpers import ONE_CUT, assert_logged_backtest, forget_mlflow_uris, run

SPARK = {"LIFECYCLE_SPARK__MASTER": "local[2]", "LIFECYCLE_SPARK__PARTITIONS": "3"}
CONNECT = {"SPARK_REMOTE": "local[2]", "LIFECYCLE_SPARK__PARTITIONS": "3"}  # a Spark Connect server started here
TRAINED = {**ONE_CUT, "LIFECYCLE_CLV__MODEL": "btyd"}  # both trainings of the shop


def submit(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``lifecycle args`` as a spark-submit application on local[2] (docs/serving.md's recipe)."""
    import lifecycle

    command = [str(Path(sys.executable).with_name("spark-submit")), "--master", "local[2]",
               str(Path(lifecycle.__file__).with_name("__main__.py")), *args]
    environment = {**os.environ, "COLUMNS": "200", "PYSPARK_PYTHON": sys.executable, **env}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A small simulated shop (orders, events, customer table) with two bad orders, trained twice: here, with the
    local engine (version 1, the champion), then on Spark through Spark Connect (version 2, gated against version 1,
    which is judged on Spark). A customer list names all but three of the customers with orders, and one nobody has
    seen. It is scored with its events as a Parquet dataset partitioned by day, whose folder for a later day holds a
    file that is not Parquet. Returns the folder, the tables' flags, the listed customers known and the local run."""
    from lifecycle.config import Settings
    from lifecycle.training import run_training

    folder = tmp_path_factory.mktemp("spark")
    assert run("data", "simulate", "--customers", "1000", "--seed", "5", "--out", "sim", cwd=folder).returncode == 0
    orders = pd.read_parquet(folder / "sim/transactions.parquet")
    bad = pd.DataFrame({"customer_id": [orders.customer_id.iloc[0]] * 2, "timestamp": ["someday", "2025-01-02"],
                        "amount": [10.0, -3.0]})
    pd.concat([orders.astype({"timestamp": str}), bad]).to_csv(folder / "orders.csv", index=False)
    tables = ["--transactions", "orders.csv", "--events", "sim/events.parquet",
              "--customers", "sim/customers.parquet"]
    with pytest.MonkeyPatch.context() as here:
        forget_mlflow_uris(here)
        for name, value in TRAINED.items():
            here.setenv(name, value)
        local = run_training(Settings(inputs={name.strip("-"): {"path": str(folder / path)}
                                              for name, path in zip(tables[::2], tables[1::2], strict=True)},
                                      state_dir=folder / ".lifecycle"))
    trained = run("train", *tables, "--engine", "spark", cwd=folder, env={**TRAINED, **CONNECT})
    assert trained.returncode == 0, trained.stderr
    assert "clv: the BTYD CLV (clv.model is btyd)" in " ".join(trained.stdout.split())  # chosen, not judged
    duckdb.sql(f"COPY (SELECT *, CAST(timestamp AS DATE) AS day FROM '{folder}/sim/events.parquet') TO "
               f"'{folder}/events' (FORMAT parquet, PARTITION_BY (day))")
    (folder / "events/day=2026-03-01").mkdir()
    (folder / "events/day=2026-03-01/data_0.parquet").write_bytes(b"not parquet")  # after every as-of day
    tables[3] = "events"
    known = orders.customer_id.drop_duplicates().astype(str).iloc[3:].tolist()
    pd.DataFrame({"customer_id": [*known, "never-seen"]}).to_csv(folder / "list.csv", index=False)
    return folder, tables, len(known), local


def scores(path) -> pd.DataFrame:
    """Records in customer order, dates as text (each engine writes them in its own Parquet type)."""
    table = pd.read_parquet(path)
    table["next_order_date"] = pd.to_datetime(table.next_order_date).dt.strftime("%Y-%m-%d")
    return table.astype({"customer_id": str, "as_of": str}).sort_values("customer_id", ignore_index=True)


def test_spark_gives_the_records_and_rejects_of_the_local_engine(shop, cli):
    """The listed customers, nearly all, at a day; neither engine opens the events' later partitions. Spark runs twice
    (a JVM and its Python workers each time): submitted with spark-submit, whose master it keeps, and through Spark
    Connect, where the executors load the registered model themselves (MLflow's Connect path), scoring everyone: the
    same records again, and each feature's drift from the training population, as the local engine measures it."""
    folder, tables, known, _ = shop
    extra = ["--as-of", "2025-12-30", "--customer-list", "list.csv"]
    local = cli("score", *tables, *extra, "--out", "local.parquet", cwd=folder)
    spark = submit("score", *tables, *extra, "--engine", "spark", "--out", "spark.parquet", cwd=folder,
                   env={"LIFECYCLE_SPARK__PARTITIONS": "3"})
    assert local.returncode == 0 and spark.returncode == 0, spark.stdout + spark.stderr[-3000:]
    expected, got = scores(folder / "local.parquet"), scores(folder / "spark.parquet")
    assert len(got) == len(expected) == known + 1
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-12)
    # drivers arrive as the classifier's features wherever it gives the churn probability, and as an empty list for
    # the buyers whose probability is the purchase model's (it serves them on this shop)
    by_btyd = got.churn_probability == got.btyd_churn_probability
    assert (got.churn_drivers[by_btyd] == "[]").all() and (~by_btyd).any()
    assert got.churn_drivers[~by_btyd].str.startswith('[{"feature": ').all()
    assert got.next_order_date.notna().sum() > 100  # dates made it through Spark, not just nulls
    rejects = pd.read_parquet(folder / "spark.rejects.parquet")
    assert sorted(rejects.reason) == sorted(pd.read_parquet(folder / "local.rejects.parquet").reason) == [
        "negative amount", "unparseable timestamp"]
    assert "2 rejected" in spark.stdout and "1 without history" in spark.stdout
    assert "on Spark (local[2])" in spark.stdout
    day = ["--as-of", "2025-08-31"]  # months before the training data ends: the features have drifted
    everyone = cli("score", *tables, *day, "--out", "everyone.parquet", cwd=folder)
    elsewhere = f"sqlite:///{folder / 'elsewhere.db'}"  # a server whose environment names another registry
    connect = run("score", *tables, *day, "--engine", "spark", "--out", "connect.parquet", cwd=folder,
                  env={**CONNECT, "MLFLOW_REGISTRY_URI": elsewhere, "MLFLOW_TRACKING_URI": elsewhere})
    assert everyone.returncode == 0 and connect.returncode == 0, connect.stdout + connect.stderr[-3000:]
    said = " ".join(connect.stdout.split())
    assert "on Spark (local[2] through Spark Connect)" in said and "drift from the training data of version 2" in said
    pd.testing.assert_frame_equal(scores(folder / "connect.parquet"), scores(folder / "everyone.parquet"),
                                  check_dtype=False, rtol=1e-12)
    assert sorted(pd.read_parquet(folder / "connect.rejects.parquet").reason) == sorted(rejects.reason)
    drift = [pd.read_csv(path).sort_values("feature", ignore_index=True) for path in (
        folder / "everyone.drift.csv", *(folder / "connect.drift.csv").glob("*.csv"))]
    assert len(drift) == 2 and len(drift[0]) > 10 and drift[0].psi.gt(0).any()
    pd.testing.assert_frame_equal(drift[1], drift[0], rtol=1e-9)


def test_spark_needs_the_scoring_day(shop, cli):
    folder, tables, _, _ = shop
    result = cli("score", *tables, "--engine", "spark", "--out", "spark.parquet", cwd=folder, env=SPARK)
    assert result.returncode != 0 and "pass --as-of" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def spark():
    from features.spark import session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    live = session("local[2]", "lifecycle tests")
    yield live
    live.stop()


def test_a_customers_rows_meet_in_one_partition_however_the_id_is_padded(spark, tmp_path):
    """The local engine compares ids trimmed; the hash that sends a row to its partition of customers does too."""
    from features.spark import BUCKET, Reading, partitioned
    from features.tables import TableSource

    ids = [f"{pad}{n}{end}" for n in range(100) for pad, end in (("", ""), (" ", ""), ("", "  "))]
    pd.DataFrame({"customer_id": ids, "timestamp": "2025-01-01", "amount": 1.0}).to_csv(tmp_path / "o.csv", index=False)
    shop = partitioned(spark, {"transactions": TableSource(path=str(tmp_path / "o.csv"))}, None,
                       Reading(now=datetime(2026, 1, 1)), partitions=16)
    rows = shop.rows.select("customer_id", BUCKET).toPandas()
    assert len(rows) == 300 and (rows.customer_id != rows.customer_id.str.strip()).sum() == 200
    assert rows.groupby(rows.customer_id.str.strip())[BUCKET].nunique().eq(1).all()
    assert rows[BUCKET].nunique() > 8  # the customers are spread, not all in one partition


def test_the_buyers_merged_on_spark_are_the_local_engines_on_cdnow(spark, tmp_path):
    """At each date, what a feature builder's fit learns (RFM edges, typical gap) and the BTYD fits' distinct rows
    with their counts, merged on Spark from 3 partitions of customers, equal the local engine's on the whole of
    CDNOW; so do the purchase model and Gamma-Gamma fitted on them."""
    from features import cdnow
    from features.build import FeatureBuilder
    from features.sources import connect, load
    from features.spark import Reading, partitioned
    from features.tables import TableSource
    from models.bgnbd import BGNBD
    from models.rows import buyer_rows
    from training.fitter import Fitter
    from training.spark import buyers

    path = cdnow.write_master(tmp_path)
    reading = Reading(now=datetime(2026, 1, 1))
    shop = partitioned(spark, {"transactions": TableSource(path=str(path))}, date(1998, 6, 30), reading, partitions=3)
    dates = [date(1997, 1, 31), date(1997, 9, 30), date(1998, 6, 30)]
    merged = buyers(shop, reading, FeatureBuilder(), dates)
    data = load(connect(), {"transactions": TableSource(path=str(path))}, now=reading.now)
    assert sorted(merged) == dates and shop.counts == {"transactions": 69_659}
    for day in dates:
        local = FeatureBuilder().fit(data, day)
        on_spark = FeatureBuilder().learn(merged[day].learned)
        assert on_spark.typical_gap_days_ == pytest.approx(local.typical_gap_days_, rel=1e-12)
        for score, edges in local.rfm_edges_.items():
            assert on_spark.rfm_edges_[score] == pytest.approx(edges, rel=1e-12), score
        rows = buyer_rows(local.summary(data, day), "true")
        assert merged[day].learned.buyers == rows.customers
        pd.testing.assert_frame_equal(merged[day].rows.purchases, rows.purchases, check_dtype=False)
        pd.testing.assert_frame_equal(merged[day].rows.spend, rows.spend, check_dtype=False, rtol=1e-12)
        fitted, expected = (Fitter().btyd(r, BGNBD, "test") for r in (merged[day].rows, rows))
        for got, want in zip(fitted, expected, strict=True):
            assert got.params_ == pytest.approx(want.params_, rel=1e-9)
    assert merged[date(1997, 1, 31)].learned.buyers < merged[date(1998, 6, 30)].learned.buyers == 23_570


def test_spark_training_through_connect_gives_the_local_model(shop):
    """``lifecycle train`` on Spark through Spark Connect (3 partitions of customers) trains the model of the local
    engine on the same shop, which is smaller than both samples: the same purchase model and Gamma-Gamma to 1e-6, RFM
    edges, decisions, notes, metrics and baselines, forecast and customers; it is logged, registered and gated like a
    local run, against the local champion judged on Spark, whose gated metrics are then its own."""
    import mlflow

    from models.pyfunc import load
    from training import registry

    folder, _, _, local = shop
    ours = local.result
    client = registry.connect(registry.local_tracking_uri(folder / ".lifecycle"))
    theirs = load(f"models:/{registry.MODEL_NAME}/2").model
    version = client.get_model_version(registry.MODEL_NAME, "2")
    run = client.get_run(version.run_id)

    def artifact(name: str) -> Path:
        return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name))

    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    notes = artifact(registry.NOTES_ARTIFACT).read_text().splitlines() if registry.NOTES_ARTIFACT in logged else []
    assert run.data.params["engine"] == "local[2] through Spark Connect" and local.version == "1"
    assert theirs.purchases.name == ours.model.purchases.name
    assert theirs.purchases.params_ == pytest.approx(ours.model.purchases.params_, rel=1e-6)
    assert theirs.spend.params_ == pytest.approx(ours.model.spend.params_, rel=1e-6)
    assert theirs.builder.rfm_edges_.keys() == ours.model.builder.rfm_edges_.keys()
    for score, edges in ours.model.builder.rfm_edges_.items():  # to the last bits of the amounts' sums
        assert theirs.builder.rfm_edges_[score] == pytest.approx(edges, rel=1e-12), score
    assert theirs.decisions == ours.model.decisions and notes == ours.notes
    summaries = [{k: v for k, v in client.get_run(r).data.params.items() if k.startswith("data_")}
                 for r in (local.run_id, run.info.run_id)]  # the orders, the rejected rows, the customers, the days
    assert summaries[1] == summaries[0] and summaries[0]["data_rejected"] == "2" and len(ours.cuts) == 1
    assert_logged_backtest(client, run.info.run_id, ours.backtest, rel=1e-6)
    forecast = pd.read_csv(artifact(registry.FORECAST_ARTIFACT))
    pd.testing.assert_frame_equal(forecast, ours.forecast, rtol=1e-6, check_dtype=False)
    # gated against version 1, the local model, judged on Spark on version 2's cut dates: its metrics are version 2's
    tags = version.tags
    assert tags["gate_champion_version"] == "1" and tags[registry.GATE_TAG] == "True"
    gated = [key.removeprefix("gate_challenger_") for key in tags if key.startswith("gate_challenger_")]
    assert gated and [float(tags[f"gate_champion_{k}"]) for k in gated] == pytest.approx(
        [float(tags[f"gate_challenger_{k}"]) for k in gated], rel=1e-6)
    assert not any((folder / ".lifecycle").glob("spark-sample-*"))  # the samples' folder is removed


def test_spark_training_refuses_too_little_data_as_the_local_engine_does(spark, tmp_path):
    """A shop too small to learn from gets the local engine's one-line refusal on Spark too (counted on the merged
    buyers), and nothing is registered."""
    from features.errors import LifecycleError
    from lifecycle.config import Settings
    from lifecycle.training import run_training

    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(np.arange(0, 720, 6), unit="D")
    orders = pd.DataFrame({"customer_id": np.arange(len(days)) % 30, "timestamp": days.strftime("%Y-%m-%d"),
                           "amount": 10.0})
    orders.to_csv(tmp_path / "orders.csv", index=False)
    settings = Settings(inputs={"transactions": {"path": str(tmp_path / "orders.csv")}},
                        state_dir=tmp_path / "state")  # the default partitions: twice the 2 cores of local[2]
    with pytest.raises(LifecycleError, match="too little data to train") as local:
        run_training(settings)
    with pytest.raises(LifecycleError, match="too little data to train") as on_spark:
        run_training(settings, spark=spark)
    assert str(on_spark.value) == str(local.value)


def test_the_backtest_is_judged_in_the_partitions_on_customers_the_driver_does_not_hold(spark, cdnow_run, tmp_path):
    """The judged tables and every prediction are computed in Spark's partitions of customers: with only the rows of
    about 300 trained customers on the driver, the local CDNOW run's twins judged on Spark give its evaluations, every
    one of the 23,570 customers' rows and every metric; judged on a tenth of the customers (the partitions then load
    only theirs), the local engine's judging of the same tenth."""
    from features import cdnow
    from features.spark import Reading, partitioned
    from features.tables import TableSource
    from training.base import Base
    from training.judging import judge
    from training.spark import spark_base
    from training.tables import Sample

    data, run = cdnow_run
    reading = Reading(now=datetime(2026, 1, 1))
    shop = partitioned(spark, {"transactions": TableSource(path=str(cdnow.write_master(tmp_path)))}, None, reading,
                       partitions=3)
    base = spark_base(shop, reading, 300, tmp_path / "sample")
    assert 200 < base.data.customers_count() < 400 and base.customers() == 23_570
    tenth = Sample(0.1)
    for sample, expected in ((Sample.judged(base.customers()), run.backtest),
                             (tenth, judge(Base(data), run.twins, run.cuts, run.model.horizons, tenth))):
        evaluations = judge(base, run.twins, run.cuts, run.model.horizons, sample)
        for mine, yours in zip(evaluations, expected, strict=True):
            for table in ("churn", "next_stage", "holdout", "value"):
                pd.testing.assert_frame_equal(getattr(mine, table).reset_index(drop=True),
                                              getattr(yours, table).reset_index(drop=True), rtol=1e-12)
            assert len(mine.churn) == (23_570 if sample.share == 1 else pytest.approx(2_357, rel=0.1))
            assert mine.metrics == pytest.approx(yours.metrics, rel=1e-12, nan_ok=True)
            assert mine.baselines == pytest.approx(yours.baselines, rel=1e-12, nan_ok=True)
            assert mine.next_stage_auc_by_stage == pytest.approx(yours.next_stage_auc_by_stage, rel=1e-12)
