"""The training job. Only the commands that train or read the registry import it: MLflow is slow to import."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import mlflow
import pandas as pd

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
    result = train(data, settings.feature_builder, horizons(settings), seed=settings.seed)
    example = result.model.builder.transform(data, result.windows.end).df().head(5)
    first, last = data.date_range()
    report = data.report["transactions"]
    summary = {"orders": report.rows, "rejected": report.rejected_total, "customers": data.customers_count(),
               "first_order": str(first), "last_order": str(last)}
    params = _flatten(settings.model_dump(mode="json", exclude={"inputs", "state_dir"}))
    run_id, version = registry.record(result, example, params, summary)
    decision = registry.gate(client, data, result, settings.mlflow.gate_tolerance)
    registry.conclude(client, version, decision)
    return TrainRun(result, run_id, version, decision, uri)


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def score_with_champion(settings: Settings, data: Dataset, as_of: date, out: Path) -> pd.DataFrame:
    """Score every customer at ``as_of`` with the registered champion and write the records to ``out``."""
    client, _ = open_registry(settings)
    champion = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@champion")
    model: LifecycleModel = champion.unwrap_python_model().model
    scores = pyfunc.as_records(model.predict(model.builder.transform(data, as_of).df()))
    version = registry.alias_version(client, "champion")
    scores["model_version"] = version
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        scores.to_parquet(out)
    else:
        scores.to_csv(out, index=False)
    return scores
