"""The scoring API: a BentoML 1.4 service around the registered ``LifecycleModel`` champion.

``POST /score`` takes feature records (the feature table's columns, one object per customer) and
returns the design's output records, with adaptive batching: records are checked one request at
a time as they arrive (a bad one is that request's 4xx), then BentoML gathers the records of
concurrent requests into one model call; ``POST /score_history`` takes raw orders (and events) and
computes the features with the same code as batch scoring; ``POST /model`` says which model
answers; ``/docs`` says all of it, with examples. The service
follows the ``champion`` alias: a background thread polls the registry every
``poll_seconds`` and swaps in a newly promoted version; a request uses the model it started
with, so a swap never fails one in flight. Bad input is a 4xx with the reason, never a 500.

Configured by environment (``lifecycle serve`` sets it from the project's configuration):
``LIFECYCLE_MLFLOW__TRACKING_URI`` (the store, named as for every other command), and
``LIFECYCLE_SERVING__MODEL_URI``, ``__POLL_SECONDS``, ``__MAX_CUSTOMERS``, ``__WORKERS``,
``__API_TOKEN`` (when set, requests need ``Authorization: Bearer <token>``).

The records and their checks are in ``serving.records``; what surrounds BentoML (middlewares, a log
filter, a metrics patch) is in ``serving.asgi``, installed by the one call at the end of this module.
"""


from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from datetime import UTC, date, datetime
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
import duckdb
import pandas as pd
from pydantic import BeforeValidator

from features.errors import LifecycleError
from features.sources import connect, load
from models import pyfunc
from models.lifecycle import LifecycleModel
from serving import asgi
from serving.api_docs import Served
from serving.records import (
    Customer,
    Event,
    FeatureRecord,
    Order,
    RequestError,
    Rules,
    answer,
    as_columns,
    checked,
    within_limit,
)
from serving.settings import ServingSettings

TRACKING_URI_VARIABLE = "LIFECYCLE_MLFLOW__TRACKING_URI"
SETTINGS = ServingSettings()  # read from the environment once, when a worker imports the service
log = logging.getLogger("lifecycle.serving")


class ServedModel:
    """A loaded model with what the API says about it."""

    def __init__(self, uri: str):
        registered = pyfunc.load(uri)
        self.model, self.columns, self.run_id = registered.model, registered.columns, registered.run_id
        self.version = self.model.version
        found = registered.version
        self.trained_at = datetime.fromtimestamp(found.creation_timestamp / 1000, UTC).isoformat() if found else None
        tags = found.tags if found else {}
        self.gate = {k.removeprefix("gate_"): v for k, v in tags.items() if k.startswith("gate_")}
        example = registered.example
        self.example = None if example is None or example.empty else json.loads(
            example.head(1).to_json(orient="records", date_format="iso", double_precision=15))[0]

@bentoml.service(name="customer-lifecycle", traffic={"timeout": 60}, workers=SETTINGS.workers)
class LifecycleService:
    """Churn, next stage and CLV per customer, from the registered champion."""

    def __init__(self) -> None:
        import mlflow

        self.settings = SETTINGS
        Rules.max_customers = SETTINGS.max_customers
        log.setLevel(logging.INFO)  # BentoML's server logging passes warnings only, unless a logger says more
        tracking_uri = os.environ.get(TRACKING_URI_VARIABLE)
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        self._serve(self.settings.model_uri)
        threading.Thread(target=self._follow_alias, daemon=True).start()

    @bentoml.api(route="/score", batchable=True, max_batch_size=2 * SETTINGS.max_customers)
    def score(self, customers: Annotated[list[FeatureRecord], BeforeValidator(checked)]) -> list[dict[str, Any]]:
        """Output records for feature records (the feature table's columns, one object per customer)."""
        served = self.served  # this batch's model, whatever a reload does meanwhile
        if not customers:
            return []
        return answer(_predict(served.model, as_columns([c.root for c in customers], served.columns)))

    @bentoml.api(route="/score_history")
    def score_history(self, orders: list[Order], as_of: date, events: list[Event] | None = None,
                      customers: list[Customer] | None = None) -> list[dict[str, Any]]:
        """Output records from raw history: the orders (and events, customer rows) of some customers, as of a day.

        The rows are validated and turned into features by the same code as batch scoring; a
        rejected row is a 400 naming its reason.
        """
        served = self.served
        if as_of > datetime.now(UTC).date():
            raise RequestError(f"as_of {as_of} is in the future")
        tables = {"transactions": orders, "events": events, "customers": customers}
        frames = {name: pd.DataFrame([row.model_dump() for row in rows]) for name, rows in tables.items() if rows}
        for frame in frames.values():  # ids as text: one type whatever mix of numbers and strings arrived
            for key in ("customer_id", "order_id"):
                if key in frame:
                    frame[key] = frame[key].map(lambda v: None if v is None else str(v))
        people = pd.concat([frame["customer_id"].astype(str) for frame in frames.values()]).nunique() if frames else 0
        within_limit(people)
        if not orders:
            raise RequestError("orders must list at least one order", error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        try:
            data = load(connect(threads=1), frames, now=datetime.now(UTC).replace(tzinfo=None))
        except (LifecycleError, duckdb.Error) as exc:
            raise RequestError(str(exc).splitlines()[0]) from None
        rejected = data.con.execute("SELECT input_table, source_row, reason FROM rejects ORDER BY ALL LIMIT 5"
                                    ).fetchall()
        if rejected:
            reasons = "; ".join(f"{table}[{row - 1}]: {reason}" for table, row, reason in rejected)
            raise RequestError(f"rejected rows: {reasons}")
        features = served.model.builder.transform(data, as_of).df()
        if features.empty:
            raise RequestError(f"as_of {as_of} is before every order and event given: no customer to score",
                               error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        return answer(_predict(served.model, features))

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """Which model answers: name, version, alias, when it was trained, its purchase model, what serves its
        churn probability and its CLV and why, the currency of its amounts, whether it is weak and why, its track
        record over the cut dates it was judged on, its gate metrics, its features."""
        served = self.served
        model = served.model
        return {"name": "customer-lifecycle", "version": served.version, "uri": self.settings.model_uri,
                "alias": self.settings.model_uri.partition("@")[2] or None, "run_id": served.run_id,
                "trained_at": served.trained_at, "purchase_model": model.purchases.name,
                "churn_source": model.churn_source, "clv_source": model.clv_source, "currency": model.currency,
                "quality": model.quality,
                "weaknesses": model.weaknesses, "decisions": model.decisions,
                "track_record": model.track_record, "gate": served.gate,
                "features": list(served.columns)}

    def _serve(self, uri: str) -> None:
        """Answer with the model at ``uri`` from now on (and check records against its input columns)."""
        self.served = ServedModel(uri)
        Rules.columns = self.served.columns
        Served.version, Served.uri, Served.example = self.served.version, uri, self.served.example
        # The libraries and the model are ~300k long-lived objects: a full collection would walk them all
        # (~0.25 s with every request waiting). Collect once now, then keep them out of later collections.
        gc.unfreeze()
        gc.collect()
        gc.freeze()

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
                    self._serve(f"models:/{name}/{version}")
                    log.info("now serving version %s", version)
            except Exception as exc:  # the registry is unreachable for a moment: keep serving, try again
                log.warning("could not follow %s: %s", self.settings.model_uri, exc)


def _predict(model: LifecycleModel, features) -> dict[str, Any]:
    """The model's output columns; an input the model refuses (a LifecycleError says why) is the client's 400."""
    try:
        return model.predict_columns(features)
    except LifecycleError as exc:
        raise RequestError(str(exc)) from None


asgi.install(LifecycleService, SETTINGS)
