"""BTYD fit and CLV vs plain lifetimes, and the whole `lifecycle train`, in one run.

- BG/NBD, MBG/NBD, Pareto/NBD and Gamma-Gamma fits on the BTYD summary of N simulated customers
  (all buyers, days): ours (unique rows with weights, no Hessian) vs lifetimes' plain ``fit`` of
  the same model with its defaults; the largest relative difference of the parameters is printed
  beside the times (lifetimes' Pareto/NBD stops its Nelder-Mead search at a tolerance of 1e-4).
- CLV of the same N customers over 12 months: ours (models.clv.clv, vectorised) vs lifetimes'
  ``customer_lifetime_value`` with the same parameters; largest relative difference.
- `lifecycle train` end to end (a fresh process: imports, validation, features, fits, evaluation,
  plots, MLflow logging and registry, gate) on CDNOW, on a simulated shop of N customers (orders
  only) and on one of N / 10 customers with engagement events; wall time and peak memory, judged on
  one cut date (``backtest_cuts = 1``, the protocol before the backtest) and on the default three.

Usage: python -m benchmarks.training [--customers 1000000] [--only fits|train]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import machine, print_table, run_measured
from training.choices import CUTS

MONTHS, MONTHLY_DISCOUNT, MONTH_DAYS = 12, 0.01, 30
MONTH_ENDS = np.arange(1, MONTHS + 1) * MONTH_DAYS


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
    """Rows: each purchase model's fit, the Gamma-Gamma fit and CLV, ours vs lifetimes' (its defaults)."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

    from models.clv import clv
    from models.gamma_gamma import SpendModel
    from models.purchase_models import PURCHASE_MODELS

    theirs = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "pareto_nbd": ParetoNBDFitter}
    f, r, t, m = (summary[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T", "monetary_value"))
    repeat = (f > 0) & (m > 0)
    n = f"{len(f):,}"
    warnings.simplefilter("ignore")
    rows, fitted = [], {}
    for name, model in PURCHASE_MODELS.items():
        ours, ours_fit = timed(lambda model=model: model().fit(f, r, t))
        np.random.seed(0)  # lifetimes' Pareto/NBD starts its search at a random point
        reference, their_fit = timed(lambda name=name: theirs[name]().fit(f, r, t))
        difference = largest_difference([ours.params_[k] for k in ours.parameters],
                                        reference.params_[list(ours.parameters)])
        rows.append([f"{ours.label} fit", n, f"{their_fit:.2f}", f"{ours_fit:.2f}", f"{their_fit / ours_fit:.1f}x",
                     f"{difference:.1e}"])
        print(" | ".join(rows[-1]), flush=True)  # a long run keeps what it measured
        fitted[name] = ours, reference
    spend, ours_spend = timed(lambda: SpendModel().fit(f, m))
    their_spend, their_spend_fit = timed(lambda: GammaGammaFitter().fit(f[repeat], m[repeat]))
    gamma_gamma = largest_difference(list(spend.params_.values()), their_spend.params_[["p", "q", "v"]])
    rows.append(["Gamma-Gamma fit", f"{int(repeat.sum()):,}", f"{their_spend_fit:.2f}", f"{ours_spend:.2f}",
                 f"{their_spend_fit / ours_spend:.1f}x", f"{gamma_gamma:.1e}"])
    # CLV from the same parameters in both, so only the computation differs
    purchases, their_purchases = fitted["bgnbd"]
    their_purchases.params_ = pd.Series(purchases.params_)
    their_spend.params_ = pd.Series({"p": spend.params_["p"], "q": spend.params_["q"], "v": spend.params_["gamma"]})
    values, ours_clv = timed(lambda: clv(purchases, spend, f, r, t, m, MONTH_ENDS, MONTHLY_DISCOUNT))
    index = pd.RangeIndex(len(f))
    reference, their_clv = timed(lambda: their_spend.customer_lifetime_value(
        their_purchases, *(pd.Series(c, index) for c in (f, r, t, m)), time=MONTHS, discount_rate=MONTHLY_DISCOUNT,
        freq="D"))
    rows.append([f"CLV (BG/NBD), {MONTHS} months", n, f"{their_clv:.2f}", f"{ours_clv:.2f}",
                 f"{their_clv / ours_clv:.1f}x", f"{largest_difference(values, reference):.1e}"])
    return rows


def train_runs(transactions: Path, events: Path | None, state: Path) -> list[str]:
    """Seconds and peak resident memory (GB) of `lifecycle train` judged on one cut date and on the default number,
    each a fresh process with its own state, and the ratio of their times."""
    command = [sys.executable, "-m", "lifecycle", "train", "--transactions", str(transactions)]
    if events is not None:
        command += ["--events", str(events)]
    measured = []
    for cuts in (1, CUTS):
        env = {**os.environ, "LIFECYCLE_STATE_DIR": str(state / f"cuts-{cuts}"), "LIFECYCLE_BACKTEST_CUTS": str(cuts)}
        seconds, peak, _ = run_measured(command, env=env)
        measured.append((seconds, peak))
    (one, one_peak), (all_, all_peak) = measured
    return [f"{one:.1f}", f"{all_:.1f}", f"{all_ / one:.2f}x", f"{one_peak:.2f}", f"{all_peak:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["fits", "train"], help="run only the fits or only `lifecycle train`")
    args = parser.parse_args()

    from rich.console import Console

    from features import cdnow
    from features.simulator import SimulationParams, simulate

    console = Console()
    if args.only != "train":
        with console.status(f"BTYD summary of {args.customers:,} simulated buyers..."):
            summary = btyd_summary(args.customers)
        with console.status("fits and CLV, ours and lifetimes'..."):
            rows = compare_btyd(summary)
        print_table(f"BTYD vs plain lifetimes, {args.customers:,} simulated customers ({machine()})",
                    ["step", "customers", "lifetimes s", "ours s", "speed-up", "max relative difference"], rows,
                    console)
    if args.only == "fits":
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = cdnow.write_master(folder / "cdnow")
        with console.status("lifecycle train on CDNOW..."):
            runs.append(["CDNOW (real)", "69,659", "-", "23,570", *train_runs(path, None, folder / "state-cdnow")])
        # orders only at full size; engagement events (about 83 per customer) on a tenth of it
        for customers, events in ((args.customers, False), (args.customers // 10, True)):
            with console.status(f"simulating {customers:,} customers..."):
                sim = simulate(SimulationParams(customers=customers, seed=0, events=events))
                paths = sim.write(folder / f"sim-{customers}")
            with console.status(f"lifecycle train on {customers:,} simulated customers..."):
                measured = train_runs(paths["transactions"], paths["events"] if events else None,
                                      folder / f"state-{customers}")
            runs.append([f"simulated {customers / 1e6:g}M", f"{len(sim.transactions):,}",
                         f"{len(sim.events):,}" if events else "-", f"{customers:,}", *measured])
    print_table(f"lifecycle train, end to end, on 1 and {CUTS} cut dates ({machine()})",
                ["data", "orders", "events", "customers", "1 cut s", f"{CUTS} cuts s", "ratio", "1 cut peak GB",
                 f"{CUTS} cuts peak GB"], runs, console)


if __name__ == "__main__":
    main()
