"""The scoring API: a BentoML 1.4 service around the registered ``LifecycleModel`` champion.

``POST /score`` takes feature records (the feature table's columns, one object per customer) and
returns the design's output records, with adaptive batching: records are checked one request at
a time as they arrive (a bad one is that request's 4xx), then BentoML gathers the records of
concurrent requests into one model call; ``POST /score_history`` takes raw orders (and events) and
computes the features with the same code as batch scoring; ``POST /model`` says which model
answers. The service
follows the ``champion`` alias: a background thread polls the registry every
``poll_seconds`` and swaps in a newly promoted version; a request uses the model it started
with, so a swap never fails one in flight. Bad input is a 4xx with the reason, never a 500.

Configured by environment (``lifecycle serve`` sets it from the project's configuration):
``LIFECYCLE_MLFLOW__TRACKING_URI`` (the store, named as for every other command), and
``LIFECYCLE_SERVING__MODEL_URI``, ``__POLL_SECONDS``, ``__MAX_CUSTOMERS``, ``__WORKERS``,
``__API_TOKEN`` (when set, requests need ``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import threading
import time
from datetime import UTC, date, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, ClassVar

import bentoml
import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, RootModel, StrictInt, StringConstraints, ValidationError
from starlette.requests import ClientDisconnect

from features.errors import LifecycleError
from features.sources import SCHEMAS, connect, load
from models import pyfunc
from models.lifecycle import LifecycleModel
from serving.settings import ServingSettings

# Features that may be negative: the trends compare the recent rate with the earlier one.
SIGNED_FEATURES = {"order_rate_trend", "spend_trend"}
# What BG/NBD and Gamma-Gamma read: known for every customer with an order.
BTYD_INPUTS = ("frequency", "recency", "T", "monetary_value")
NUMBER_KINDS = ("double", "float", "long", "integer")  # MLflow's names for the signature's numeric columns
TRACKING_URI_VARIABLE = "LIFECYCLE_MLFLOW__TRACKING_URI"
SETTINGS = ServingSettings()  # read from the environment once, when a worker imports the service
# What our routes answer besides 200 (401 too when a token is set)
DECLARED_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                   HTTPStatus.UNPROCESSABLE_ENTITY)
UNKNOWN_PATH = "/unknown"  # what the metrics call every path that is not a route
MAX_TEXT = 256  # the longest id, event type or other text a request may carry
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class Order(BaseModel):
    """One order, as in the order log."""

    customer_id: Text | StrictInt
    timestamp: datetime
    amount: float
    order_id: Text | StrictInt | None = None


class Event(BaseModel):
    """One engagement event (docs/data.md lists the types)."""

    customer_id: Text | StrictInt
    timestamp: datetime
    event_type: Text
    value: float | None = None


class Customer(BaseModel):
    """One row of the customer table."""

    customer_id: Text | StrictInt
    signup_date: datetime | None = None
    acquisition_channel: Text | None = None
    acquisition_cost: float | None = None


class RequestError(bentoml.exceptions.BentoMLException):
    """A client mistake: answered with its status code (400 unless given) and the reason."""

    error_code = HTTPStatus.BAD_REQUEST


class Rules:
    """What ``/score`` checks each request's records against before they join a batch: the served model's
    input columns and the request limit (set by the service when it loads a model)."""

    columns: ClassVar[dict[str, str]] = {}
    max_customers: ClassVar[int] = SETTINGS.max_customers


def _within_limit(people: int) -> None:
    """A 413 when one request names more customers than ``serving.max_customers``."""
    if people > Rules.max_customers:
        raise RequestError(f"{people} customers in one request; at most {Rules.max_customers}",
                           error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


def _checked(customers: Any) -> Any:
    """A request's records, or a RequestError naming the first bad one (see ``_check``)."""
    if isinstance(customers, list):
        _within_limit(len(customers))
        _check(customers, Rules.columns)
    return customers  # anything else: pydantic says it is not a list of objects


class FeatureRecord(RootModel[dict[str, Any]]):
    """One customer's features: the feature table's columns, as ``lifecycle features`` writes them."""


class BearerToken:
    """ASGI middleware: the API's routes and the metrics need ``Authorization: Bearer <token>`` (not health)."""

    def __init__(self, app, token: str, routes: tuple[str, ...]):
        self.app, self.expected, self.routes = app, f"Bearer {token}".encode(), routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] in self.routes and \
                dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": HTTPStatus.UNAUTHORIZED,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": json.dumps({"error": "missing or wrong bearer token"
                                                                         }).encode()})
            return
        await self.app(scope, receive, send)


class RequestLimits:
    """ASGI middleware in front of every route: a body over ``max_bytes`` is a 413 before any of it is parsed
    (by its Content-Length, or counted as it streams in), and a POST body that is not JSON a 415 (a multipart
    body without a boundary was a 500 inside the framework)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            await _refuse(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {self.max_bytes} bytes")
            return
        kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if scope["method"] == "POST" and kind not in (b"application/json", b""):
            await _refuse(send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the request body as application/json")
            return
        seen, refused = 0, False

        async def counted():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not refused:
                    refused = True
                    await _refuse(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  f"request body over {self.max_bytes} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)


async def _refuse(send, status: HTTPStatus, reason: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"error": reason}).encode()})


class ErrorBodies:
    """ASGI middleware: every 4xx and 5xx body is ``{"error": text}`` (plus ``"detail"``: text), as /docs.json
    declares. BentoML answers a refused request with a one-element list, a validation error with a list of
    objects as its detail, and an unknown path with plain text."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, chunks = {}, []

        async def rewritten(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start.update(message)
            elif not start:
                await send(message)
            else:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    body = json.dumps(_error_body(b"".join(chunks))).encode()
                    headers = [(k, v) for k, v in start.get("headers", [])
                               if k.lower() not in (b"content-length", b"content-type")]
                    await send({**start, "headers": [*headers, (b"content-type", b"application/json"),
                                                     (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewritten)


def _error_body(raw: bytes) -> dict[str, str]:
    try:
        found = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace")[:MAX_TEXT]}
    if isinstance(found, list) and len(found) == 1:
        found = found[0]
    if not isinstance(found, dict):
        return {"error": str(found)[:MAX_TEXT]}
    body = {"error": str(found.get("error", ""))}
    detail = found.get("detail")
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" if isinstance(e, dict)
                           else str(e) for e in detail[:5])
    if detail:
        body["detail"] = str(detail)
    return body


class PublicDocs:
    """ASGI middleware that makes what BentoML publishes match the API: ``/docs.json`` declares every error
    status our routes answer (400, 401, 413, 415, 422, with the body they carry) and the bearer scheme when
    a token is set; the docs page at ``/`` is served without BentoML's third-party tag manager (its own
    Swagger UI files are local)."""

    def __init__(self, app, secured: tuple[str, ...]):
        self.app, self.secured = app, secured

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in ("/", "/docs.json"):
            await self.app(scope, receive, send)
            return
        start, chunks = {}, []

        async def keep(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        if start.get("status") == HTTPStatus.OK:
            body = self._amended(json.loads(body)) if scope["path"] == "/docs.json" else _without_tag_manager(body)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _amended(self, spec: dict) -> bytes:
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["Error"] = {"type": "object", "required": ["error"], "description": "Why the request was refused",
                            "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path in ("/score", "/score_history", "/model"):
            responses = spec["paths"][path]["post"]["responses"]
            for status in DECLARED_ERRORS:
                responses[str(int(status))] = {"description": status.phrase, "content": error}
            if path in self.secured:
                spec["paths"][path]["post"]["security"] = [{"bearer": []}]
                responses["401"] = {"description": "Missing or wrong bearer token", "content": error}
        if self.secured:
            spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            spec["paths"]["/metrics"]["get"]["security"] = [{"bearer": []}]
        return json.dumps(spec).encode()


def _without_tag_manager(page: bytes) -> bytes:
    """BentoML's docs page without the Google Tag Manager script and its noscript frame."""
    page = re.sub(rb"<script>(?:(?!</script>).)*googletagmanager(?:(?!</script>).)*</script>", b"", page, flags=re.S)
    return re.sub(rb"<noscript>(?:(?!</noscript>).)*googletagmanager(?:(?!</noscript>).)*</noscript>", b"", page,
                  flags=re.S)


class ClientErrorsInOneLine(logging.Filter):
    """BentoML logs every failed request at ERROR with its traceback; a client's mistake (a 4xx) becomes one
    WARNING line with the status and the reason, cut to ``MAX_TEXT`` characters (a 5xx keeps its trace)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ClientDisconnect):  # the client left, or RequestLimits cut off its body (a 413)
            status, reason = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body refused while it streamed in, or client gone"
        elif isinstance(error, ValidationError):
            status, reason = HTTPStatus.BAD_REQUEST, "; ".join(e["msg"] for e in error.errors()[:3])
        elif isinstance(error, bentoml.exceptions.BentoMLException) and error.error_code < 500:
            status, reason = error.error_code, str(error)
        else:
            return True
        record.msg, record.args = f"client error on %s [%s]: {int(status)} {reason[:MAX_TEXT]}", record.args
        record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


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


@bentoml.service(name="customer-lifecycle", traffic={"timeout": 60}, workers=SETTINGS.workers)
class LifecycleService:
    """Churn, next stage and CLV per customer, from the registered champion."""

    def __init__(self) -> None:
        import mlflow

        self.settings = SETTINGS
        tracking_uri = os.environ.get(TRACKING_URI_VARIABLE)
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        self._serve(self.settings.model_uri)
        threading.Thread(target=self._follow_alias, daemon=True).start()

    @bentoml.api(route="/score", batchable=True, max_batch_size=2 * Rules.max_customers)
    def score(self, customers: Annotated[list[FeatureRecord], BeforeValidator(_checked)]) -> list[dict[str, Any]]:
        """Output records for feature records (the feature table's columns, one object per customer)."""
        served = self.served  # this batch's model, whatever a reload does meanwhile
        if not customers:
            return []
        return _answer(_predict(served.model, _columns([c.root for c in customers], served.columns)))

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
        frames = {name: pd.DataFrame([row.model_dump() for row in rows], columns=list(SCHEMAS[name]))
                  for name, rows in tables.items() if rows}
        for frame in frames.values():  # ids as text: one type whatever mix of numbers and strings arrived
            for key in ("customer_id", "order_id"):
                if key in frame:
                    frame[key] = frame[key].map(lambda v: None if v is None else str(v))
        people = pd.concat([frame["customer_id"].astype(str) for frame in frames.values()]).nunique() if frames else 0
        _within_limit(people)
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
        return _answer(_predict(served.model, features))

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """Which model answers: name, version, alias, when it was trained, its purchase model, what serves its
        churn probability and its CLV and why, whether it is weak and why, its track record over the cut dates it
        was judged on, its gate metrics, its features."""
        served = self.served
        model = served.model
        return {"name": "customer-lifecycle", "version": served.version, "uri": self.settings.model_uri,
                "alias": self.settings.model_uri.partition("@")[2] or None, "run_id": served.run_id,
                "trained_at": served.trained_at, "purchase_model": model.purchases.name,
                "churn_source": model.churn_source, "clv_source": model.clv_source, "quality": model.quality,
                "weaknesses": model.weaknesses, "decisions": model.decisions,
                "track_record": model.track_record, "gate": served.gate,
                "features": list(served.columns)}

    def _serve(self, uri: str) -> None:
        """Answer with the model at ``uri`` from now on (and check records against its input columns)."""
        self.served = ServedModel(uri)
        Rules.columns = self.served.columns
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
                    print(f"lifecycle: now serving version {version}", flush=True)
            except Exception as exc:  # the registry is unreachable for a moment: keep serving, try again
                print(f"lifecycle: could not follow {self.settings.model_uri}: {exc}", flush=True)


for _api in LifecycleService.apis.values():  # every answer is JSON: saves BentoML a JSON schema per response
    _api.output_spec.media_type = "application/json"
def _count_known_paths_only() -> None:
    """BentoML labels its request metrics with the raw path, so every path a client invents became a series
    (memory and /metrics grew without bound: 12 MB in a 10-minute soak). Its metrics middleware runs before
    any of ours and offers no hook, so its entry point is wrapped: a path that is none of the server's routes
    or static files is counted, and routed, as ``UNKNOWN_PATH`` (a 404 either way)."""
    from bentoml._internal import server as internal_server
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    static = Path(internal_server.__file__).parent / "static_content"
    known = {*(api.route for api in LifecycleService.apis.values()), "/", "/docs.json", "/metrics", "/healthz",
             "/livez", "/readyz", *(f"/static_content/{f.relative_to(static)}" for f in static.rglob("*"))}
    count = RunnerTrafficMetricsMiddleware.__call__

    async def known_paths_only(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in known:
            scope = {**scope, "path": UNKNOWN_PATH, "raw_path": UNKNOWN_PATH.encode()}
        await count(self, scope, receive, send)

    RunnerTrafficMetricsMiddleware.__call__ = known_paths_only


_count_known_paths_only()
logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsInOneLine())
LifecycleService.add_asgi_middleware(ErrorBodies)
LifecycleService.add_asgi_middleware(RequestLimits, max_bytes=SETTINGS.max_body_bytes)
SECURED = ("/score", "/score_history", "/model", "/metrics") if SETTINGS.api_token is not None else ()
LifecycleService.add_asgi_middleware(PublicDocs, secured=SECURED)
if SETTINGS.api_token is not None:
    LifecycleService.add_asgi_middleware(BearerToken, token=SETTINGS.api_token.get_secret_value(), routes=SECURED)


def _check(customers: list[Any], columns: dict[str, str]) -> None:
    """Raise a RequestError naming the first bad record and field: missing fields (422), a value of the
    wrong type, NaN, a negative amount or count, a future date, a buyer without the BTYD inputs (400)."""
    today = datetime.now(UTC).date()
    for i, record in enumerate(customers):
        if not isinstance(record, dict):
            raise RequestError(f"customers[{i}] must be an object of features, not {record!r}")
        missing = [c for c in columns if c not in record]
        if missing:
            raise RequestError(f"customers[{i}] lacks the fields {missing}", error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        for name, kind in columns.items():
            value = record[name]
            if value is None:
                continue
            where = f"customers[{i}].{name}"
            if kind in NUMBER_KINDS:
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
            elif kind == "string" and (isinstance(value, bool) or not isinstance(value, str | int)):
                raise RequestError(f"{where} must be text, not {str(value)[:MAX_TEXT]!r}")
            elif kind == "string" and isinstance(value, str) and len(value) > MAX_TEXT:
                raise RequestError(f"{where} is longer than {MAX_TEXT} characters")
        if isinstance(record.get("orders"), int | float) and record["orders"] > 0:
            unknown = [name for name in BTYD_INPUTS if name in columns and record[name] is None]
            if unknown:
                raise RequestError(f"customers[{i}] has orders, so {unknown} cannot be null")


def _columns(customers: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, np.ndarray]:
    """Checked records as the model's input columns (plain arrays: pandas' per-column work would cost
    more than the model for a small request)."""
    data = {}
    for name, kind in columns.items():
        values = [record[name] for record in customers]
        if kind in NUMBER_KINDS:
            data[name] = np.array(values, dtype=float)  # null: NaN
        elif kind == "datetime":
            data[name] = np.array([None if v is None else str(v)[:10] for v in values], dtype="datetime64[D]")
        elif kind == "boolean":
            data[name] = np.array(values, dtype=object)
        else:  # text (ids, categories): a number is taken as its digits
            data[name] = np.array([None if v is None else str(v) for v in values], dtype=object)
    return data


def _predict(model: LifecycleModel, features) -> dict[str, Any]:
    """The model's output columns; an input the model refuses (a LifecycleError says why) is the client's 400."""
    try:
        return model.predict_columns(features)
    except LifecycleError as exc:
        raise RequestError(str(exc)) from None


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _answer(scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Output records as JSON objects: missing as null, numbers at full precision, drivers as JSON text
    (as in every other output), dates as days."""
    lists = {}
    for name, values in scores.items():
        values = np.asarray(values)
        if values.dtype.kind == "M":
            lists[name] = [None if day == "NaT" else day for day in np.datetime_as_string(values, unit="D").tolist()]
        else:
            lists[name] = [None if _missing(value) else value for value in values.tolist()]
    return [dict(zip(lists, row, strict=True)) for row in zip(*lists.values(), strict=True)]
