"""BTYD fit and CLV vs plain lifetimes, the whole `lifecycle train` at growing sizes, and what sampling costs.

- BG/NBD, MBG/NBD, Pareto/NBD and Gamma-Gamma fits on the BTYD summary of N simulated customers
  (all buyers, days): ours (unique rows with weights, no Hessian) vs lifetimes' plain ``fit`` of
  the same model with its defaults; the largest relative difference of the parameters is printed
  beside the times (lifetimes' Pareto/NBD stops its Nelder-Mead search at a tolerance of 1e-4).
- CLV of the same N customers over 12 months: ours (models.clv.clv, vectorised) vs lifetimes'
  ``customer_lifetime_value`` with the same parameters; largest relative difference.
- `lifecycle train` end to end with its defaults (a fresh process: imports, validation, features, fits, evaluation,
  plots, MLflow logging and registry, gate) on CDNOW, on simulated shops of each of ``--sizes`` customers (orders
  only) and on one of ``--events-customers`` with engagement events; wall time and peak memory (the process and its
  children, DuckDB included).
- ``--only spark``: `lifecycle train --engine spark` on Spark's local master (``--spark-master``) on simulated shops
  of each of ``--spark-sizes`` customers (orders only, a Parquet dataset of parts of at most 5M customers); wall
  time, the driver's peak memory (the Python process that runs the protocol) and that of all processes (with the
  JVM that holds the local executors and their Python workers).
- ``--only sampling``: the accuracy cost of learning the classifiers and the learned CLV from a sample
  (``sample_customers``): training in process on CDNOW and on a simulated shop of ``--customers``, once on everyone
  and once on a sample, each metric of the newest cut date and pooled over the cut dates side by side (both judged
  on the same customers).

Usage: python -m benchmarks.training [--customers 1000000] [--sizes 1000000 5000000 10000000]
                                     [--spark-sizes 5000000 10000000 20000000] [--only fits|train|sampling|spark]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import machine, print_table, run_measured

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


def train_run(transactions: Path, events: Path | None, state: Path) -> list[str]:
    """Seconds and peak resident memory (GB) of `lifecycle train` with its defaults, in a fresh process."""
    command = [sys.executable, "-m", "lifecycle", "train", "--transactions", str(transactions)]
    if events is not None:
        command += ["--events", str(events)]
    seconds, peak, *_ = run_measured(command, env={**os.environ, "LIFECYCLE_STATE_DIR": str(state)})
    return [f"{seconds:.1f}", f"{peak:.2f}"]


PART = 5_000_000  # customers simulated at a time


def simulated_orders(customers: int, folder: Path) -> tuple[Path, int]:
    """A simulated shop of ``customers`` (orders only) as a Parquet dataset under ``folder``, simulated ``PART``
    customers at a time (independent draws of the same shop, ids made distinct); the folder and its orders."""
    from features.simulator import SimulationParams, simulate

    folder.mkdir(parents=True, exist_ok=True)
    orders = 0
    for part, first in enumerate(range(0, customers, PART)):
        sim = simulate(SimulationParams(customers=min(PART, customers - first), seed=part, events=False))
        table = sim.transactions.assign(customer_id=sim.transactions.customer_id + first,
                                        order_id=sim.transactions.order_id + orders)
        table.to_parquet(folder / f"part-{part}.parquet", index=False)
        orders += len(table)
        del sim, table
    return folder, orders


def spark_run(transactions: Path, state: Path, master: str) -> list[str]:
    """Seconds, the driver's peak and all processes' peak resident memory (GB) of `lifecycle train --engine spark`
    with its defaults, in a fresh process."""
    command = [sys.executable, "-m", "lifecycle", "train", "--transactions", str(transactions), "--engine", "spark"]
    measured = run_measured(command, env={**os.environ, "LIFECYCLE_STATE_DIR": str(state),
                                          "LIFECYCLE_SPARK__MASTER": master})
    return [f"{measured.seconds:.1f}", f"{measured.own_peak:.2f}", f"{measured.peak:.2f}"]


SAMPLING_METRICS = ("churn_roc_auc", "churn_buyers_classifier_roc_auc", "churn_brier", "next_stage_roc_auc",
                    "clv_gini", "clv_learned_gini", "clv_decile_mape")


def sampling_cost(name: str, transactions: Path, sample: int, state: Path) -> list[list[str]]:
    """Rows: each of ``SAMPLING_METRICS``, newest cut date and mean over the cut dates, learning from everyone and
    from ``sample`` customers, and the difference."""
    from lifecycle.config import Settings
    from lifecycle.pipeline import open_dataset, with_churn_horizon
    from lifecycle.training import training_config
    from training.train import train

    results = {}
    for size in (None, sample):
        settings = Settings(inputs={"transactions": {"path": str(transactions)}}, state_dir=state)
        data = open_dataset(settings)
        settings = with_churn_horizon(settings, data).settings
        config = training_config(settings)
        config = replace(config, sample_customers=size or data.customers_count())
        results[size] = train(data, config)
    rows = []
    for metric in SAMPLING_METRICS:
        values = {}
        for size, result in results.items():
            newest = result.evaluation.metrics.get(metric, np.nan)
            pooled = np.mean([e.metrics.get(metric, np.nan) for e in result.backtest])
            values[size] = newest, pooled
        (everyone, everyone_pooled), (sampled, sampled_pooled) = values[None], values[sample]
        rows.append([name, f"{sample:,}", metric, f"{everyone:.4f}", f"{sampled:.4f}", f"{sampled - everyone:+.4f}",
                     f"{everyone_pooled:.4f}", f"{sampled_pooled:.4f}", f"{sampled_pooled - everyone_pooled:+.4f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 10_000_000],
                        help="simulated customers `lifecycle train` is timed on (orders only)")
    parser.add_argument("--events-customers", type=int, default=100_000,
                        help="simulated customers with engagement events `lifecycle train` is timed on")
    parser.add_argument("--spark-sizes", type=int, nargs="+", default=[5_000_000, 10_000_000, 20_000_000],
                        help="simulated customers `lifecycle train --engine spark` is timed on (orders only)")
    parser.add_argument("--spark-master", default="local[*]", help="the Spark master of --only spark")
    parser.add_argument("--only", choices=["fits", "train", "sampling", "spark"], help="run only one part")
    args = parser.parse_args()

    from rich.console import Console

    from features import cdnow
    from features.simulator import SimulationParams, simulate

    console = Console()
    if args.only in (None, "fits"):
        with console.status(f"BTYD summary of {args.customers:,} simulated buyers..."):
            summary = btyd_summary(args.customers)
        with console.status("fits and CLV, ours and lifetimes'..."):
            rows = compare_btyd(summary)
        print_table(f"BTYD vs plain lifetimes, {args.customers:,} simulated customers ({machine()})",
                    ["step", "customers", "lifetimes s", "ours s", "speed-up", "max relative difference"], rows,
                    console)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = cdnow.write_master(folder / "cdnow")
        if args.only in (None, "sampling"):
            from training.choices import SAMPLE_CUSTOMERS

            rows = sampling_cost("CDNOW (real)", path, 12_000, folder / "state-sampling-cdnow")
            with console.status(f"simulating {args.customers:,} customers..."):
                sim = simulate(SimulationParams(customers=args.customers, seed=0, events=False))
                paths = sim.write(folder / "sim-sampling")
            with console.status(f"training twice on {args.customers:,} simulated customers..."):
                rows += sampling_cost(f"simulated {args.customers / 1e6:g}M", paths["transactions"],
                                      min(SAMPLE_CUSTOMERS, args.customers // 2), folder / "state-sampling")
            print_table(f"What learning from a sample costs ({machine()})",
                        ["data", "sample", "metric", "everyone", "sample", "difference", "everyone, cut dates' mean",
                         "sample, cut dates' mean", "difference"], rows, console)
        if args.only in (None, "spark"):
            runs = []
            for customers in args.spark_sizes:
                with console.status(f"simulating {customers:,} customers..."):
                    orders_path, orders = simulated_orders(customers, folder / f"spark-{customers}")
                with console.status(f"lifecycle train --engine spark on {customers:,} simulated customers..."):
                    measured = spark_run(orders_path, folder / f"state-spark-{customers}", args.spark_master)
                runs.append([f"simulated {customers / 1e6:g}M", f"{orders:,}", f"{customers:,}", *measured])
                print(" | ".join(runs[-1]), flush=True)  # a long run keeps what it measured
            print_table(f"lifecycle train --engine spark, {args.spark_master} ({machine()})",
                        ["data", "orders", "customers", "seconds", "driver peak GB", "all processes' peak GB"],
                        runs, console)
        if args.only not in (None, "train"):
            return
        runs = []
        with console.status("lifecycle train on CDNOW..."):
            runs.append(["CDNOW (real)", "69,659", "-", "23,570", *train_run(path, None, folder / "state-cdnow")])
        shops = [(customers, False) for customers in args.sizes] + [(args.events_customers, True)]
        for customers, events in shops:
            with console.status(f"simulating {customers:,} customers..."):
                sim = simulate(SimulationParams(customers=customers, seed=0, events=events))
                paths = sim.write(folder / f"sim-{customers}-{events}")
                orders, logged = len(sim.transactions), len(sim.events) if events else 0
                del sim
            with console.status(f"lifecycle train on {customers:,} simulated customers..."):
                measured = train_run(paths["transactions"], paths["events"] if events else None,
                                     folder / f"state-{customers}-{events}")
            runs.append([f"simulated {customers / 1e6:g}M", f"{orders:,}", f"{logged:,}" if events else "-",
                         f"{customers:,}", *measured])
            print(" | ".join(runs[-1]), flush=True)  # a long run keeps what it measured
    print_table(f"lifecycle train, end to end ({machine()})",
                ["data", "orders", "events", "customers", "seconds", "peak GB"], runs, console)


if __name__ == "__main__":
    main()
