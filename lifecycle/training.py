"""The training job. Only the commands that train or read the registry import it: MLflow is slow to import."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException

from features.errors import LifecycleError
from features.sources import Dataset
from features.spark import partitioned
from features.spark import where as spark_where
from lifecycle.config import Settings
from lifecycle.pipeline import open_dataset, reading, with_churn_horizon
from models import pyfunc
from models.lifecycle import Horizons, LifecycleModel
from models.risk import RiskBands
from training import registry
from training.base import Base
from training.train import TrainingConfig, TrainingResult, train

GATE_ATTEMPTS = 3  # gates against a champion that moved meanwhile (remote stores) before giving up


@dataclass
class TrainRun:
    """One `lifecycle train`: the result, where it was logged, and what the gate decided."""

    result: TrainingResult
    run_id: str
    version: str
    decision: registry.Decision
    tracking_uri: str
    drift: dict[str, float]  # each feature's PSI against the champion's training population, largest first
    cleaned: list[str]  # what earlier, interrupted runs left behind and this one marked


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def horizons(settings: Settings) -> Horizons:
    """What the predictions are about, from the configuration (its churn horizon resolved: ``with_churn_horizon``)."""
    return Horizons(settings.churn_days, settings.clv_horizon_days, settings.annual_discount_rate,
                    settings.prediction_interval, RiskBands(settings.churn_risk.medium, settings.churn_risk.high))


def training_config(settings: Settings) -> TrainingConfig:
    """What training is told, from the configuration (its churn horizon resolved: ``with_churn_horizon``)."""
    return TrainingConfig(settings.feature_builder, horizons(settings), seed=settings.seed,
                          purchase_model=settings.btyd.model, penalizer=settings.btyd.penalizer,
                          clv_model=settings.clv.model, mape_slack=settings.clv.mape_slack, cuts=settings.backtest_cuts,
                          sample_customers=settings.sample_customers)


def open_registry(settings: Settings, on_wait: Callable[[str], None] = _to_stderr):
    """An MLflow client on the configured store (default: SQLite and artifacts in the state folder), connected
    under the registry lock: the first connection creates and migrates the store, which two at once break."""
    uri = tracking_uri(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with registry_lock(settings, on_wait):
        return registry.connect(uri, settings.state_dir / "mlartifacts"), uri


def tracking_uri(settings: Settings) -> str:
    """The configured MLflow store, or the default SQLite file in the state folder."""
    return settings.mlflow.tracking_uri or registry.local_tracking_uri(settings.state_dir)


def lock_path(settings: Settings) -> Path | None:
    """The local store's lock file, created if missing (so an unwritable state folder fails here, before any
    work); None for a remote store."""
    uri = tracking_uri(settings)
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///")).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


@contextmanager
def registry_lock(settings: Settings, on_wait: Callable[[str], None] = _to_stderr) -> Iterator[bool]:
    """Hold the local store's lock (a file next to its SQLite file) while a command writes the registry;
    yields whether this command is now the store's only writer (False for a remote store: no lock).

    ``train``, ``promote`` and ``rollback`` hold it from the champion's first read to the last alias
    move, so no gate decides against a champion that is about to change. A second command says it
    is waiting (``on_wait``) and gives up after ``mlflow.lock_timeout_seconds``. A remote tracking
    server has no lock here (see docs/models.md); ``run_training`` re-reads the champion before
    moving an alias there.
    """
    path = lock_path(settings)
    if path is None:
        yield False
        return
    lock, timeout = FileLock(path), settings.mlflow.lock_timeout_seconds
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait(f"waiting for another lifecycle command to finish with the registry (lock {path}, "
                f"up to {timeout:.0f} s)...")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LifecycleError(f"the registry is still locked after {timeout:.0f} s by another lifecycle "
                                 f"command ({path}); raise mlflow.lock_timeout_seconds or try later") from None
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def writing(settings: Settings, client, on_wait: Callable[[str], None] = _to_stderr) -> Iterator[list[str]]:
    """Hold the registry lock and first mark what interrupted runs left behind (``registry.clean_interrupted``);
    yields one line per thing marked."""
    with registry_lock(settings, on_wait) as exclusive:
        yield registry.clean_interrupted(client, exclusive)


def run_training(settings: Settings, data: Dataset | None = None, on_wait: Callable[[str], None] = _to_stderr,
                 spark=None) -> TrainRun:
    """Validate, train out of time, then under the registry lock: log and register, gate, move the aliases.

    Training itself runs outside the lock, so two runs overlap there and are gated one after the
    other. The champion is read again just before the aliases move; if it moved (another host, on
    a remote store), the gate is run again against the new one. With ``spark`` (a SparkSession), what the protocol
    asks of the whole base is computed on Spark (``training.spark``).
    """
    lock_path(settings)  # a read-only state folder stops the run now, not after the training
    with _whole_base(settings, data, spark) as base:
        client, uri = open_registry(settings, on_wait)
        horizon = with_churn_horizon(settings, base.data)
        settings = horizon.settings
        if spark is not None:
            base.measure(horizons(settings), settings.backtest_cuts)
        result = train(base, training_config(settings))
        result.model.decisions = {"churn_horizon": horizon.why, **result.model.decisions}
        if horizon.warning:
            result.notes.insert(0, horizon.warning)
        first, last = base.date_range()
        report = base.data.report["transactions"]
        summary = {"orders": report.rows, "rejected": report.rejected_total, "customers": base.customers(),
                   "first_order": str(first), "last_order": str(last)}
        params = _flatten(settings.model_dump(mode="json", exclude={"inputs", "state_dir"}))
        params["engine"] = spark_where(spark) if spark is not None else "local"
        with writing(settings, client, on_wait) as cleaned:
            drift = registry.drift_from_champion(client, result.features)
            run_id, version = registry.record(result, params, summary, drift)
            for _ in range(GATE_ATTEMPTS):
                decision = registry.gate(client, base, result, settings.mlflow.gate_tolerance)
                if registry.alias_version(client, "champion") == decision.champion_version:
                    break
            else:
                raise LifecycleError(f"the champion kept moving while version {version} was gated: it is registered "
                                     "without a gate decision; train again when the other writers are done")
            registry.conclude(client, version, decision)
    return TrainRun(result, run_id, version, decision, uri, drift, cleaned)


@contextmanager
def _whole_base(settings: Settings, data: Dataset | None, spark) -> Iterator[Base]:
    """The shop's whole base as of the configured day: the data on this machine, or on Spark with its samples in a
    folder of the state folder, removed afterwards."""
    if spark is None:
        data = data or open_dataset(settings)
        yield Base(data.until(settings.as_of) if settings.as_of else data)
        return
    from training.spark import spark_base

    folder = Path(tempfile.mkdtemp(prefix="spark-sample-", dir=settings.state_dir))
    try:
        options = reading(settings)
        shop = partitioned(spark, settings.inputs.tables(), settings.as_of, options, settings.spark.partitions)
        try:
            yield spark_base(shop, options, settings.sample_customers, folder, settings.as_of,
                             settings.duckdb.memory_limit, settings.duckdb.threads)
        finally:
            shop.rows.unpersist()  # the session may train again (lifecycle schedule)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def load_model(settings: Settings, uri: str | None = None) -> LifecycleModel:
    """The model at an MLflow ``uri`` (default: the registered champion), its ``version`` set to the
    registered version that holds it (or its run id, for an unregistered model)."""
    client, _ = open_registry(settings)
    if uri is None and registry.alias_version(client, "champion") is None:
        raise LifecycleError("there is no champion model yet: run `lifecycle train` first")
    uri = uri or f"models:/{registry.MODEL_NAME}@champion"
    try:
        return pyfunc.load(uri).model
    except (MlflowException, OSError) as exc:
        raise LifecycleError(f"cannot load the model {uri!r}: {str(exc).splitlines()[0]}") from None
