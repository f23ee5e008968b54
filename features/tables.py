"""The input tables as the configuration names them: our schema of each, where each comes from
(``TableSource``), the file formats read, and the formats written. Reading and validating them is
``features.sources``'; this module loads no DuckDB, so the CLI starts without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from features.errors import LifecycleError

# Canonical schema: our column name -> (required, kind).
SCHEMAS: dict[str, dict[str, tuple[bool, str]]] = {
    "transactions": {
        "customer_id": (True, "id"),
        "timestamp": (True, "timestamp"),
        "amount": (True, "amount"),
        "order_id": (False, "key"),
        "refunded": (False, "amount"),  # of the order's amount: netted into spend (docs/data.md)
        "currency": (False, "currency"),
    },
    "events": {
        "customer_id": (True, "id"),
        "timestamp": (True, "timestamp"),
        "event_type": (True, "label"),
        "value": (False, "number"),
    },
    "customers": {
        "customer_id": (True, "id"),
        "signup_date": (False, "timestamp"),
        "acquisition_channel": (False, "label"),
        "acquisition_cost": (False, "amount"),
    },
}

# Each table's column that says when a row happened: rows after an as-of day are not read, or are hidden.
TIME_COLUMNS = {"transactions": "timestamp", "events": "timestamp", "customers": "signup_date"}

CSV_SUFFIXES = (".csv", ".txt", ".tsv")
COMPRESSIONS = (".gz", ".zst")  # what DuckDB's CSV reader decompresses by itself


@dataclass(frozen=True)
class RowFilter:
    """A condition on one of the user's columns, as written (``text``): its value in a list (``in``), containing a
    text (``contains``) or empty (``empty``), or not (``negated``). Values are compared trimmed, in any case."""

    text: str
    column: str
    test: Literal["in", "contains", "empty"]
    values: tuple[str, ...] = ()
    negated: bool = False


_FILTERS = (  # the column is the shortest text before an operator that reads to the end
    (re.compile(r"(?P<column>.+?)\s+(?P<not>not\s+)?in\s*\[(?P<values>.*)\]", re.I), "in"),
    (re.compile(r"(?P<column>.+?)\s+(?P<not>not\s+)?contains\s+(?P<values>.+)", re.I), "contains"),
    (re.compile(r"(?P<column>.+?)\s+is\s+(?P<not>not\s+)?empty", re.I), "empty"),
)


def row_filter(text: str) -> RowFilter:
    """Read ``"Financial Status in [voided, refunded]"``, ``"Tags contains test"`` or ``"Cancelled at is not
    empty"`` (also ``not in``, ``not contains``, ``is empty``)."""
    for pattern, test in _FILTERS:
        if found := pattern.fullmatch(text.strip()):
            values = found.groupdict().get("values") or ""
            listed = values.split(",") if test == "in" else [values] if values else []
            return RowFilter(text.strip(), found["column"].strip(), test,
                             tuple(v.strip().strip("'\"").strip().lower() for v in listed if v.strip()),
                             bool(found["not"]))
    raise ValueError(f"{text!r} is not a row filter: write 'COLUMN in [a, b]', 'COLUMN contains TEXT' or "
                     "'COLUMN is empty' (each also with not)")


class TableSource(BaseModel):
    """Where one input table lives, how its columns map onto ours, and which of its rows are the table's."""

    path: str | None = Field(None, description="CSV or Parquet file, a glob of them, or a folder of Parquet files "
                             "(a dataset, hive-partitioned or not)")
    columns: dict[str, str] = Field(default_factory=dict, description="our column name -> your column name (for "
                                    "amount also columns joined by ' + ' and ' - ': 'Total - Refunded Amount')")
    timestamp_format: str | None = Field(None, description="strptime format when timestamps are not ISO 8601")
    exclude: list[str] = Field(default_factory=list, description="rows left out, e.g. 'Financial Status in [voided]', "
                               "'Tags contains test', 'Cancelled at is not empty' (your column names; any case)")
    include: list[str] = Field(default_factory=list, description="rows kept (the others are left out), e.g. "
                               "'Order Status in [completed, processing]'")
    line_items: Literal["first", "sum"] | None = Field(
        None, description="rows sharing an order id are lines of one order: each column its first non-empty value "
        "(first; totals on the first line), or the amount's columns summed over the lines (sum)")

    @field_validator("exclude", "include")
    @classmethod
    def _filters(cls, texts: list[str]) -> list[str]:
        for text in texts:
            row_filter(text)
        return texts

    def filters(self) -> list[tuple[RowFilter, bool]]:
        """Each row filter, and whether a row that meets it is kept (include) or left out (exclude)."""
        return [(row_filter(t), False) for t in self.exclude] + [(row_filter(t), True) for t in self.include]


def output_format(path: str | Path) -> str:
    """``"parquet"`` or ``"csv"`` by an output file's extension; any other is refused before anything is written."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise LifecycleError(f"cannot write {str(path)!r}: name the output .parquet or .csv")
