"""The training job. Only the commands that train or read the registry import it: MLflow is slow to import."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from features.errors import LifecycleError
from features.sources import Dataset
from lifecycle.config import Settings
from lifecycle.pipeline import open_dataset
from models import pyfunc
from models.lifecycle import Horizons, LifecycleModel
from training import registry
from training.train import TrainingResult, train


@dataclass
class TrainRun:
    """One `lifecycle train`: the result, where it was logged, and what the gate decided."""

    result: TrainingResult
    run_id: str
    version: str
    decision: registry.Decision
    tracking_uri: str
    drift: dict[str, float]  # each feature's PSI against the champion's training population, largest first


def horizons(settings: Settings) -> Horizons:
    """What the predictions are about, from the configuration."""
    return Horizons(settings.churn_horizon_days, settings.clv_horizon_days, settings.annual_discount_rate)


def open_registry(settings: Settings):
    """An MLflow client on the configured store (default: SQLite and artifacts in the state folder)."""
    uri = settings.mlflow.tracking_uri or registry.local_tracking_uri(settings.state_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return registry.connect(uri, settings.state_dir / "mlartifacts"), uri


def run_training(settings: Settings, data: Dataset | None = None) -> TrainRun:
    """Validate, train out of time, log and register, gate, then move the aliases (only at the end)."""
    data = data or open_dataset(settings)
    client, uri = open_registry(settings)
    result = train(data, settings.feature_builder, horizons(settings), seed=settings.seed,
                   purchase_model=settings.btyd.model)
    drift = registry.drift_from_champion(client, result.features)
    first, last = data.date_range()
    report = data.report["transactions"]
    summary = {"orders": report.rows, "rejected": report.rejected_total, "customers": data.customers_count(),
               "first_order": str(first), "last_order": str(last)}
    params = _flatten(settings.model_dump(mode="json", exclude={"inputs", "state_dir"}))
    run_id, version = registry.record(result, params, summary, drift)
    decision = registry.gate(client, data, result, settings.mlflow.gate_tolerance)
    registry.conclude(client, version, decision)
    return TrainRun(result, run_id, version, decision, uri, drift)


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
    open_registry(settings)
    uri = uri or f"models:/{registry.MODEL_NAME}@champion"
    try:
        return pyfunc.load(uri).model
    except (MlflowException, OSError) as exc:
        raise LifecycleError(f"cannot load the model {uri!r}: {str(exc).splitlines()[0]}") from None
