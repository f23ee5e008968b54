"""``LifecycleModel`` as one self-contained MLflow pyfunc model.

The fitted model is pickled as an artifact; the ``features`` and ``models`` packages travel with
it (``code_paths``) and its pip requirements are pinned to the versions it was trained with, so
it loads in a fresh process, in the API and in Spark. Input: feature rows (the feature table's
columns); output: the design's records, with the drivers as JSON text.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature

import features
import models
from models.lifecycle import LifecycleModel

REQUIREMENTS = ("lifetimes", "setuptools", "numpy", "pandas", "scipy", "scikit-learn", "lightgbm", "duckdb",
                "pyarrow", "pydantic", "autograd")
DRIVER_COLUMNS = ("churn_drivers", "next_stage_drivers")


class LifecyclePyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow face of a ``LifecycleModel``."""

    def load_context(self, context) -> None:
        with open(context.artifacts["lifecycle_model"], "rb") as file:
            self.model: LifecycleModel = pickle.load(file)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return as_records(self.model.predict(model_input))


def as_records(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores with the driver lists as JSON text (a type every MLflow flavour and Spark can carry)."""
    out = scores.copy()
    for column in DRIVER_COLUMNS:
        out[column] = out[column].map(json.dumps)
    return out


@contextmanager
def _pyfunc_arguments(model: LifecycleModel, example: pd.DataFrame):
    """What ``mlflow.pyfunc.save_model`` and ``log_model`` both need to store ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "lifecycle_model.pkl"
        artifact.write_bytes(pickle.dumps(model))
        yield {
            "python_model": str(Path(__file__).with_name("pyfunc_entry.py")),
            "artifacts": {"lifecycle_model": str(artifact)},
            "code_paths": [str(Path(features.__file__).parent), str(Path(models.__file__).parent)],
            "pip_requirements": [f"{name}=={version(name)}" for name in REQUIREMENTS],
            "signature": infer_signature(example, as_records(model.predict(example))),
            "input_example": example,
        }


def save(model: LifecycleModel, path: str | Path, example: pd.DataFrame) -> None:
    """Save ``model`` as an MLflow pyfunc model at ``path``; ``example`` is a few feature rows."""
    with _pyfunc_arguments(model, example) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments)


def log(model: LifecycleModel, example: pd.DataFrame, registered_name: str | None = None):
    """Log ``model`` to the active MLflow run (and register it under ``registered_name``)."""
    with _pyfunc_arguments(model, example) as arguments:
        return mlflow.pyfunc.log_model(name="model", registered_model_name=registered_name, **arguments)
