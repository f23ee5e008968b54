"""``LifecycleModel`` as one self-contained MLflow pyfunc model.

The fitted model is pickled as an artifact; the ``features`` and ``models`` packages travel with
it (``code_paths``) and its pip requirements are pinned to the versions it was trained with, so
it loads in a fresh process, in the API and in Spark. Input: feature rows (the feature table's
columns); output: the design's records, with the drivers as JSON text.
"""

from __future__ import annotations

import pickle
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature

import features
import models
from features.errors import LifecycleError
from models.lifecycle import MODEL_FORMAT, LifecycleModel, model_format

REQUIREMENTS = ("lifetimes", "setuptools", "autograd", "numpy", "pandas", "scipy", "numba", "scikit-learn", "lightgbm",
                "duckdb", "pyarrow", "pydantic")


class LifecyclePyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow face of a ``LifecycleModel``."""

    def load_context(self, context) -> None:
        with open(context.artifacts["lifecycle_model"], "rb") as file:
            self.model: LifecycleModel = pickle.load(file)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict(model_input)


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
            "signature": _signature(model, example),
            "input_example": example,
        }


def _signature(model: LifecycleModel, example: pd.DataFrame):
    """The model's input and output schema, inferred from ``example``."""
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values; ours (counts and the stage
        # rank) are never missing: the feature build gives every customer a value (counts coalesce to 0).
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        return infer_signature(example, model.predict(example))


def save(model: LifecycleModel, path: str | Path, example: pd.DataFrame) -> None:
    """Save ``model`` as an MLflow pyfunc model at ``path``; ``example`` is a few feature rows."""
    with _pyfunc_arguments(model, example) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments)


def log(model: LifecycleModel, example: pd.DataFrame, registered_name: str | None = None):
    """Log ``model`` to the active MLflow run (and register it under ``registered_name``)."""
    with _pyfunc_arguments(model, example) as arguments:
        return mlflow.pyfunc.log_model(name="model", registered_model_name=registered_name, **arguments)


@dataclass
class Registered:
    """A ``LifecycleModel`` loaded from MLflow, with its input schema and what the registry knows of it."""

    model: LifecycleModel
    columns: dict[str, str]  # input column -> MLflow type name, in the signature's order
    run_id: str | None
    version: ModelVersion | None  # the registered version holding the run, if any
    metadata: mlflow.models.Model  # MLflow's description of it: signature, flavours
    example: pd.DataFrame | None = None  # the feature rows it was logged with


class IncompatibleModel(LifecycleError):
    """A model an older release saved, which this code cannot use."""


def load(uri: str) -> Registered:
    """Load the pyfunc at ``uri`` (from the current MLflow registry); the model's ``version`` is set to the
    registered version holding its run, else the run id, else the URI. Raises IncompatibleModel for a
    model saved by an older, incompatible release."""
    loaded = mlflow.pyfunc.load_model(uri)
    model: LifecycleModel = loaded.unwrap_python_model().model
    if model_format(model) != MODEL_FORMAT:
        raise IncompatibleModel(f"{uri} was saved by an older release of customer-lifecycle (model format "
                                f"{model_format(model)}, this release reads {MODEL_FORMAT}): train a new version "
                                "with `lifecycle train`")
    run_id = loaded.metadata.run_id
    found = mlflow.MlflowClient().search_model_versions(f"run_id='{run_id}'") if run_id else []
    version = found[0] if found else None
    model.version = str(version.version) if version else run_id or uri
    columns = {spec.name: spec.type.name for spec in loaded.metadata.get_input_schema().inputs}
    return Registered(model, columns, run_id, version, loaded.metadata, loaded.input_example)
