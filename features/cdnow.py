"""The real CDNOW master log that ships inside the ``lifetimes`` wheel, in our canonical schema.

CDNOW (Fader, Hardie & Lee 2005): 69,659 orders by 23,570 customers who first bought in
1997-Q1, observed 1997-01-01..1998-06-30. The file has a header line, CRLF line ends,
2,068 duplicate customer-days and 80 zero-value orders; it has no order id.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pandas as pd

OBSERVATION_END = pd.Timestamp("1998-06-30")
CALIBRATION_END = pd.Timestamp("1997-09-30")  # end of week 39, the published calibration period


@dataclass(frozen=True)
class PublishedFit:
    """A purchase model's published estimates on the 2,357-customer sample, weeks 1-39 (parameters in weeks)."""

    source: str
    params: dict[str, float]
    log_likelihood: float


PUBLISHED_FITS = {
    "bgnbd": PublishedFit("Fader, Hardie & Lee (2005)", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}, -9582.4),
    "pareto_nbd": PublishedFit("Fader & Hardie (2005)", {"r": 0.553, "alpha": 10.58, "s": 0.606, "beta": 11.66},
                               -9594.98),
}


def dataset_path(name: str) -> Path:
    """Path of a file in the ``datasets`` folder of the installed lifetimes package."""
    return Path(str(files("lifetimes") / "datasets" / name))


def read_master() -> pd.DataFrame:
    """The master log as a DataFrame: customer_id (str), timestamp, amount, number_of_cds."""
    raw = pd.read_csv(dataset_path("CDNOW_master.txt"), sep=r"\s+", dtype={"customer_id": str, "date": str})
    return _canonical(raw)


def read_sample() -> pd.DataFrame:
    """The 1/10 sample (2,357 customers) behind the published BG/NBD and Gamma-Gamma estimates.

    customer_id is the sample's own 1..2357 id, as in lifetimes' ``cdnow_customers_summary*.csv``.
    """
    raw = pd.read_csv(dataset_path("CDNOW_sample.txt"), sep=r"\s+", header=None, dtype=str,
                      names=["master_id", "customer_id", "date", "number_of_cds", "dollar_value"])
    raw["customer_id"] = raw["customer_id"].astype(int).astype(str)
    return _canonical(raw)


def _canonical(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": raw["customer_id"],
        "timestamp": pd.to_datetime(raw["date"], format="%Y%m%d"),
        "amount": raw["dollar_value"].astype(float),
        "number_of_cds": raw["number_of_cds"].astype(int),
    })


def write_master(out_dir: str | Path) -> Path:
    """Write the master log as ``transactions.csv`` (ISO dates) under ``out_dir``; returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "transactions.csv"
    read_master().to_csv(path, index=False, date_format="%Y-%m-%d")
    return path
