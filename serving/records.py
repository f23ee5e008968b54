"""The API's records: what a request may carry, the checks each record passes before it is scored, and the
answer's JSON records.

A bad record is a ``RequestError``: the client's 4xx naming the record, the field and the reason.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from http import HTTPStatus
from typing import Annotated, Any, ClassVar

import bentoml
import numpy as np
import pandas as pd
from pydantic import BaseModel, RootModel, StrictFloat, StrictInt, StringConstraints

# Features that may be negative: the trends compare the recent rate with the earlier one.
SIGNED_FEATURES = {"order_rate_trend", "spend_trend"}
# What BG/NBD and Gamma-Gamma read: known for every customer with an order.
BTYD_INPUTS = ("frequency", "recency", "T", "monetary_value")
NUMBER_KINDS = ("double", "float", "long", "integer")  # MLflow's names for the signature's numeric columns
MAX_TEXT = 256  # the longest id, event type or other text a request may carry
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class Order(BaseModel):
    """One order, as in the order log (numbers are numbers: ``false`` or ``"3"`` is not an amount)."""

    customer_id: Text | StrictInt
    timestamp: datetime
    amount: StrictFloat
    order_id: Text | StrictInt | None = None


class Event(BaseModel):
    """One engagement event (docs/data.md lists the types)."""

    customer_id: Text | StrictInt
    timestamp: datetime
    event_type: Text
    value: StrictFloat | None = None


class Customer(BaseModel):
    """One row of the customer table."""

    customer_id: Text | StrictInt
    signup_date: datetime | None = None
    acquisition_channel: Text | None = None
    acquisition_cost: StrictFloat | None = None


class RequestError(bentoml.exceptions.BentoMLException):
    """A client mistake: answered with its status code (400 unless given) and the reason."""

    error_code = HTTPStatus.BAD_REQUEST


class Rules:
    """What ``/score`` checks each request's records against before they join a batch: the served model's
    input columns and the request limit (set by the service when it starts and when it loads a model)."""

    columns: ClassVar[dict[str, str]] = {}
    max_customers: ClassVar[int] = 0


def within_limit(people: int) -> None:
    """A 413 when one request names more customers than ``serving.max_customers``."""
    if people > Rules.max_customers:
        raise RequestError(f"{people} customers in one request; at most {Rules.max_customers}",
                           error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


def checked(customers: Any) -> Any:
    """A request's records, or a RequestError naming the first bad one (see ``check``)."""
    if isinstance(customers, list):
        within_limit(len(customers))
        check(customers, Rules.columns)
    return customers  # anything else: pydantic says it is not a list of objects


class FeatureRecord(RootModel[dict[str, Any]]):
    """One customer's features: the feature table's columns, as ``lifecycle features`` writes them."""


def check(customers: list[Any], columns: dict[str, str]) -> None:
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


def as_columns(customers: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, np.ndarray]:
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


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def answer(scores: dict[str, Any]) -> list[dict[str, Any]]:
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
