"""The scoring API: a BentoML 1.4 service around the registered ``LifecycleModel`` champion.

``POST /score`` takes feature records (the feature table's columns, one object per customer) and
returns the design's output records; ``POST /model`` says which model answers. The service
follows the ``champion`` alias: a background thread polls the registry every
``poll_seconds`` and swaps in a newly promoted version; a request uses the model it started
with, so a swap never fails one in flight. Bad input is a 4xx with the reason, never a 500.

Configured by environment (``lifecycle serve`` sets it from the project's configuration):
``LIFECYCLE_SERVING__TRACKING_URI``, ``__MODEL_URI``, ``__POLL_SECONDS``, ``__MAX_CUSTOMERS``,
``__API_TOKEN`` (when set, requests need ``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, date, datetime
from http import HTTPStatus
from typing import Any

import bentoml
import pandas as pd

from models.lifecycle import LifecycleModel
from models.pyfunc import as_records
from serving.settings import ServingSettings

# Features that may be negative: the trends compare the recent rate with the earlier one.
SIGNED_FEATURES = {"order_rate_trend", "spend_trend"}


class RequestError(bentoml.exceptions.BentoMLException):
    """A client mistake: answered with its status code (400 unless given) and the reason."""

    error_code = HTTPStatus.BAD_REQUEST


class ServedModel:
    """A loaded model with what the API says about it."""

    def __init__(self, uri: str):
        import mlflow

        loaded = mlflow.pyfunc.load_model(uri)
        self.model: LifecycleModel = loaded.unwrap_python_model().model
        schema = loaded.metadata.get_input_schema()
        self.columns = {spec.name: spec.type.name for spec in schema.inputs}
        self.run_id = loaded.metadata.run_id
        client = mlflow.MlflowClient()
        found = client.search_model_versions(f"run_id='{self.run_id}'") if self.run_id else []
        self.version = str(found[0].version) if found else self.run_id
        self.model.version = self.version
        self.trained_at = (datetime.fromtimestamp(found[0].creation_timestamp / 1000, UTC).isoformat()
                           if found else None)
        self.gate = {k.removeprefix("gate_"): v for k, v in (found[0].tags.items() if found else [])
                     if k.startswith("gate_")}


@bentoml.service(name="customer-lifecycle", traffic={"timeout": 60})
class LifecycleService:
    """Churn, next stage and CLV per customer, from the registered champion."""

    def __init__(self) -> None:
        import mlflow

        self.settings = ServingSettings()
        if self.settings.tracking_uri:
            mlflow.set_tracking_uri(self.settings.tracking_uri)
            mlflow.set_registry_uri(self.settings.tracking_uri)
        self.served = ServedModel(self.settings.model_uri)
        threading.Thread(target=self._follow_alias, daemon=True).start()

    @bentoml.api(route="/score")
    def score(self, customers: list[dict[str, Any]], ctx: bentoml.Context) -> list[dict[str, Any]]:
        """Output records for feature records (the feature table's columns, one object per customer)."""
        self._authorize(ctx)
        served = self.served  # this request's model, whatever a reload does meanwhile
        if len(customers) > self.settings.max_customers:
            raise RequestError(f"{len(customers)} customers in one request; at most {self.settings.max_customers}",
                               error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if not customers:
            return []
        frame = _validated(customers, served.columns)
        records = as_records(served.model.predict(frame))
        records["as_of"] = records["as_of"].astype(str).str[:10]
        return [{k: _json_value(v) for k, v in row.items()} for row in records.to_dict(orient="records")]

    @bentoml.api(route="/model")
    def model(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Which model answers: name, version, alias, when it was trained, its gate metrics, its features."""
        self._authorize(ctx)
        served = self.served
        return {"name": "customer-lifecycle", "version": served.version, "uri": self.settings.model_uri,
                "alias": self.settings.model_uri.partition("@")[2] or None, "run_id": served.run_id,
                "trained_at": served.trained_at, "gate": served.gate, "features": list(served.columns)}

    def _authorize(self, ctx: bentoml.Context) -> None:
        token = self.settings.api_token
        if token is not None and ctx.request.headers.get("authorization") != f"Bearer {token.get_secret_value()}":
            raise RequestError("missing or wrong bearer token", error_code=HTTPStatus.UNAUTHORIZED)

    def _follow_alias(self) -> None:
        """Swap in the version the alias points at whenever it moves (a cheap registry lookup per poll)."""
        import mlflow

        name, _, alias = self.settings.model_uri.removeprefix("models:/").partition("@")
        if not alias:  # a fixed version or run: nothing to follow
            return
        client = mlflow.MlflowClient()
        while True:
            time.sleep(self.settings.poll_seconds)
            try:
                version = str(client.get_model_version_by_alias(name, alias).version)
                if version != self.served.version:
                    self.served = ServedModel(f"models:/{name}/{version}")
                    print(f"lifecycle: now serving version {version}", flush=True)
            except Exception as exc:  # the registry is unreachable for a moment: keep serving, try again
                print(f"lifecycle: could not follow {self.settings.model_uri}: {exc}", flush=True)


def _validated(customers: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """The records as a feature frame, or a RequestError naming the first bad field."""
    today = datetime.now(UTC).date()
    for i, record in enumerate(customers):
        missing = [c for c in columns if c not in record]
        if missing:
            raise RequestError(f"customers[{i}] lacks the fields {missing}", error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        for name, kind in columns.items():
            value = record[name]
            if value is None:
                continue
            where = f"customers[{i}].{name}"
            if kind in ("double", "float", "long", "integer"):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise RequestError(f"{where} must be a number, not {value!r}")
                if not math.isfinite(value):
                    raise RequestError(f"{where} must be a finite number")
                if value < 0 and name not in SIGNED_FEATURES:
                    raise RequestError(f"{where} must not be negative")
            elif kind == "boolean" and not isinstance(value, bool):
                raise RequestError(f"{where} must be true or false, not {value!r}")
            elif kind == "datetime":
                try:
                    day = date.fromisoformat(str(value)[:10])
                except ValueError:
                    raise RequestError(f"{where} must be a date like 2025-06-30, not {value!r}") from None
                if day > today:
                    raise RequestError(f"{where} {day} is in the future")
            elif kind == "string" and not isinstance(value, str | int):
                raise RequestError(f"{where} must be text, not {value!r}")
    frame = pd.DataFrame(customers, columns=list(columns))
    for name, kind in columns.items():
        if kind in ("double", "float", "long", "integer"):
            frame[name] = pd.to_numeric(frame[name]).astype(float)
    frame["as_of"] = pd.to_datetime(frame["as_of"].astype(str).str[:10])
    frame["customer_id"] = frame["customer_id"].astype(str)
    return frame


def _json_value(value: Any) -> Any:
    """NaN (pandas' missing) as null; numpy scalars as Python numbers."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value
