"""The input tables as the configuration names them: our schema of each, where each comes from
(``TableSource``), the file formats read, and the formats written. Reading and validating them is
``features.sources``'; this module loads no DuckDB, so the CLI starts without it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from features.errors import LifecycleError

# Canonical schema: our column name -> (required, kind).
SCHEMAS: dict[str, dict[str, tuple[bool, str]]] = {
    "transactions": {
        "customer_id": (True, "id"),
        "timestamp": (True, "timestamp"),
        "amount": (True, "amount"),
        "order_id": (False, "key"),
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

CSV_SUFFIXES = (".csv", ".txt", ".tsv")
COMPRESSIONS = (".gz", ".zst")  # what DuckDB's CSV reader decompresses by itself


class TableSource(BaseModel):
    """Where one input table lives and how its columns map onto ours."""

    path: str | None = Field(None, description="CSV or Parquet file, or a glob of them")
    columns: dict[str, str] = Field(default_factory=dict, description="our column name -> your column name")
    timestamp_format: str | None = Field(None, description="strptime format when timestamps are not ISO 8601")


def output_format(path: str | Path) -> str:
    """``"parquet"`` or ``"csv"`` by an output file's extension; any other is refused before anything is written."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise LifecycleError(f"cannot write {str(path)!r}: name the output .parquet or .csv")
