"""BTYD fit and CLV vs plain lifetimes, and the whole `lifecycle train`, in one run.

- BG/NBD and Gamma-Gamma fits on the BTYD summary of N simulated customers (all buyers, days):
  ours (models.btyd: unique rows with weights, no Hessian) vs lifetimes' plain ``fit``; the
  largest relative difference of the parameters is printed beside the times.
- CLV of the same N customers over 12 months: ours (models.btyd.clv, vectorised) vs lifetimes'
  ``customer_lifetime_value`` with the same parameters; largest relative difference.
- `lifecycle train` end to end (a fresh process: imports, validation, features, fits, evaluation,
  MLflow logging and registry, gate) on CDNOW and on a simulated shop of N customers with
  engagement events; wall time and peak memory of the process.

Usage: python -m benchmarks.training [--customers 1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import machine, print_table

MONTHS, MONTHLY_DISCOUNT, MONTH_DAYS = 12, 0.01, 30


def btyd_summary(customers: int) -> pd.DataFrame:
    """frequency, recency, T and monetary_value in days of ``customers`` simulated buyers."""
    from features import sources
    from features.build import FeatureBuilder
    from features.simulator import SimulationParams, simulate

    sim = simulate(SimulationParams(customers=customers, prospect_share=0.0, events=False, seed=0))
    data = sources.load(sources.connect(), {"transactions": sim.transactions}, now=sim.end.to_pydatetime())
    return FeatureBuilder().fit_transform(data, sim.end.date()).df()[["frequency", "recency", "T", "monetary_value"]]


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def largest_difference(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-300)))


def compare_btyd(summary: pd.DataFrame) -> list[list[str]]:
    """Rows: BG/NBD fit, Gamma-Gamma fit and CLV, ours vs lifetimes."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    from models.btyd import PurchaseModel, SpendModel, clv

    f, r, t, m = (summary[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    repeat = (f > 0) & (m > 0)
    warnings.simplefilter("ignore")
    purchases, ours_fit = timed(lambda: PurchaseModel().fit(f, r, t))
    their_purchases, their_fit = timed(lambda: BetaGeoFitter().fit(f, r, t))
    spend, ours_spend = timed(lambda: SpendModel().fit(f, m))
    their_spend, their_spend_fit = timed(lambda: GammaGammaFitter().fit(f[repeat], m[repeat]))
    bgnbd = largest_difference([purchases.params_[k] for k in ("r", "alpha", "a", "b")],
                               their_purchases.params_[["r", "alpha", "a", "b"]])
    gamma_gamma = largest_difference(list(spend.params_.values()), their_spend.params_[["p", "q", "v"]])
    # CLV from the same parameters in both, so only the computation differs
    their_purchases.params_ = pd.Series(purchases.params_)
    their_spend.params_ = pd.Series({"p": spend.params_["p"], "q": spend.params_["q"], "v": spend.params_["gamma"]})
    values, ours_clv = timed(lambda: clv(purchases, spend, f, r, t, m, MONTHS, MONTHLY_DISCOUNT, MONTH_DAYS))
    index = pd.RangeIndex(len(f))
    reference, their_clv = timed(lambda: their_spend.customer_lifetime_value(
        their_purchases, *(pd.Series(c, index) for c in (f, r, t, m)), time=MONTHS, discount_rate=MONTHLY_DISCOUNT,
        freq="D"))
    n = f"{len(f):,}"
    return [
        ["BG/NBD fit", n, f"{their_fit:.2f}", f"{ours_fit:.2f}", f"{their_fit / ours_fit:.1f}x", f"{bgnbd:.1e}"],
        ["Gamma-Gamma fit", f"{int(repeat.sum()):,}", f"{their_spend_fit:.2f}", f"{ours_spend:.2f}",
         f"{their_spend_fit / ours_spend:.1f}x", f"{gamma_gamma:.1e}"],
        [f"CLV, {MONTHS} months", n, f"{their_clv:.2f}", f"{ours_clv:.2f}", f"{their_clv / ours_clv:.1f}x",
         f"{largest_difference(values, reference):.1e}"],
    ]


def train_run(transactions: Path, events: Path | None, state: Path) -> tuple[float, float]:
    """Seconds and peak resident memory (GB) of one `lifecycle train` process."""
    command = [sys.executable, "-m", "lifecycle", "train", "--transactions", str(transactions)]
    if events is not None:
        command += ["--events", str(events)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "LIFECYCLE_STATE_DIR": str(state)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lifecycle train failed: {process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()

    from rich.console import Console

    from features import cdnow
    from features.simulator import SimulationParams, simulate

    console = Console()
    with console.status(f"BTYD summary of {args.customers:,} simulated buyers..."):
        summary = btyd_summary(args.customers)
    with console.status("fits and CLV, ours and lifetimes'..."):
        rows = compare_btyd(summary)
    print_table(f"BTYD vs plain lifetimes, {args.customers:,} simulated customers ({machine()})",
                ["step", "customers", "lifetimes s", "ours s", "speed-up", "max relative difference"], rows, console)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = cdnow.write_master(folder / "cdnow")
        with console.status("lifecycle train on CDNOW..."):
            runs.append(["CDNOW (real)", "69,659", "-", "23,570", *train_run(path, None, folder / "state-cdnow")])
        with console.status(f"simulating {args.customers:,} customers with events..."):
            sim = simulate(SimulationParams(customers=args.customers, seed=0))
            paths = sim.write(folder / "sim")
        with console.status(f"lifecycle train on {args.customers:,} simulated customers..."):
            runs.append([f"simulated {args.customers / 1e6:g}M", f"{len(sim.transactions):,}", f"{len(sim.events):,}",
                         f"{args.customers:,}", *train_run(paths["transactions"], paths["events"],
                                                           folder / "state-sim")])
    print_table(f"lifecycle train, end to end ({machine()})",
                ["data", "orders", "events", "customers", "seconds", "peak GB"],
                [[*row[:4], f"{row[4]:.1f}", f"{row[5]:.2f}"] for row in runs], console)


if __name__ == "__main__":
    main()
