"""Feature build vs lifetimes' summary_data_from_transaction_data: seconds and peak memory.

Each measurement runs in a fresh process, which reports its own peak resident memory. The three
engines take turns, ``--repeat`` rounds, and each one's fastest run is shown with its highest peak
(this machine's speed drifts by up to ~30 %, so turns expose both sides to the same spells).
- lifetimes: the orders are read from Parquet into pandas first (not timed, but in the peak
  memory), then ``summary_data_from_transaction_data`` is timed: the BTYD summary only, from
  orders in memory to a table in memory.
- ours, like for like: the orders are read and validated into DuckDB's memory first (not timed),
  then the full feature build is timed (BTYD in days and weeks, RFM edges and scores, order
  behaviour, stages), from orders in memory to the feature table in memory (Arrow).
- ours, end to end: the whole ``lifecycle features`` job from Parquet to Parquet, timed by phase:
  validate (read Parquet, check every row), features and write; its peak memory is the job's.
DuckDB is capped at ``--memory-limit``.

Usage: python -m benchmarks.features [--sizes 1000000 10000000 50000000] [--memory-limit 2GB] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.report import machine, peak_memory_gb, print_table

ORDERS_PER_CUSTOMER = 2.59  # of the default simulated shop: customers needed = rows / this
CHUNK_CUSTOMERS = 2_000_000


def make_log(rows: int, path: Path) -> int:
    """Write a simulated order log of about ``rows`` orders as Parquet (in chunks); returns its rows."""
    from features.simulator import SimulationParams, simulate

    customers = int(rows / ORDERS_PER_CUSTOMER)
    writer, written, chunk = None, 0, 0
    while chunk * CHUNK_CUSTOMERS < customers:
        n = min(CHUNK_CUSTOMERS, customers - chunk * CHUNK_CUSTOMERS)
        orders = simulate(SimulationParams(customers=n, seed=chunk, events=False)).transactions
        orders["customer_id"] += chunk * CHUNK_CUSTOMERS
        orders["order_id"] += written
        table = pa.Table.from_pandas(orders, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        written += len(orders)
        chunk += 1
    writer.close()
    return written


def run_lifetimes(path: str) -> dict:
    import warnings

    import pandas as pd
    from lifetimes.utils import summary_data_from_transaction_data

    warnings.simplefilter("ignore")
    orders = pd.read_parquet(path, columns=["customer_id", "timestamp", "amount"])
    started = time.perf_counter()
    summary = summary_data_from_transaction_data(orders, "customer_id", "timestamp", monetary_value_col="amount")
    return {"seconds": time.perf_counter() - started, "customers": len(summary)}


def _settings(state: str, path: str, memory_limit: str):
    """Our settings for one measurement: state in ``state``, the orders at ``path``, DuckDB capped."""
    from lifecycle.config import load_settings

    return load_settings(state_dir=state, duckdb={"memory_limit": memory_limit},
                         inputs={"transactions": {"path": path}})


def run_ours(path: str, memory_limit: str) -> dict:
    from lifecycle.pipeline import build_features

    with tempfile.TemporaryDirectory() as state:
        run = build_features(_settings(state, path, memory_limit), Path(state) / "features.parquet")
    return {"seconds": run.total_seconds, "phases": run.seconds, "customers": run.customers}


def run_ours_build(path: str, memory_limit: str) -> dict:
    from lifecycle.pipeline import open_dataset, with_churn_horizon

    with tempfile.TemporaryDirectory() as state:
        settings = _settings(state, path, memory_limit)
        data = open_dataset(settings).materialize()
        as_of = data.date_range()[1].date()
        started = time.perf_counter()
        builder = with_churn_horizon(settings, data).settings.feature_builder()
        features = builder.fit_transform(data, as_of).to_arrow_table()
        return {"seconds": time.perf_counter() - started, "customers": features.num_rows}


ENGINES = {"lifetimes": run_lifetimes, "ours": run_ours, "ours-build": run_ours_build}


def measure(engine: str, path: Path, memory_limit: str) -> dict:
    """Run one measurement in a child process; returns seconds, customers and peak RSS (GB)."""
    child = subprocess.run([sys.executable, "-m", "benchmarks.features", "--child", engine, str(path),
                            "--memory-limit", memory_limit], capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"{engine} failed on {path}:\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def measure_in_turns(path: Path, memory_limit: str, repeat: int, status) -> dict[str, dict]:
    """Every engine's fastest of ``repeat`` runs (with the highest peak RSS), the engines taking turns."""
    runs = {engine: [] for engine in ENGINES}
    for round_ in range(1, repeat + 1):
        for engine in ENGINES:
            status.update(f"{path.stem}: {engine}, round {round_} of {repeat}...")
            runs[engine].append(measure(engine, path, memory_limit))
    return {engine: min(done, key=lambda run: run["seconds"]) | {"peak_gb": max(run["peak_gb"] for run in done)}
            for engine, done in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000, 50_000_000])
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit for our build")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is shown")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, path = args.child
        runner = ENGINES[engine]
        result = runner(path) if engine == "lifetimes" else runner(path, args.memory_limit)
        print(json.dumps(result | {"peak_gb": peak_memory_gb()}))
        return

    from rich.console import Console

    from features import cdnow

    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = [("CDNOW (real)", Path(tmp) / "cdnow.parquet", None)]
        orders = cdnow.read_master()
        pq.write_table(pa.Table.from_pandas(orders, preserve_index=False), datasets[0][1])
        datasets += [(f"simulated {n / 1e6:g}M", Path(tmp) / f"sim{n}.parquet", n) for n in args.sizes]
        for name, path, size in datasets:
            count = len(orders) if size is None else None
            if size is not None:
                with console.status(f"simulating {size:,} orders..."):
                    count = make_log(size, path)
            with console.status(f"{name}...") as status:
                best = measure_in_turns(path, args.memory_limit, args.repeat, status)
            theirs, build, ours = best["lifetimes"], best["ours-build"], best["ours"]
            assert ours["customers"] == build["customers"] == theirs["customers"], (ours, build, theirs)
            rows.append((name, count, ours["customers"], theirs, build, ours))
            console.print(f"{name}: lifetimes {theirs['seconds']:.1f} s, our build {build['seconds']:.1f} s, "
                          f"our job {ours['seconds']:.1f} s")

    title = (f"Feature build vs lifetimes summary ({machine()}, DuckDB memory limit {args.memory_limit}, "
             f"fastest of {args.repeat} runs)")
    headers = ["data", "orders", "customers", "lifetimes s", "lifetimes peak GB", "our build s", "speed-up",
               "our job s", "(validate / features / write)", "our job peak GB", "speed-up"]
    table = []
    for name, count, customers, theirs, build, ours in rows:
        phases = " / ".join(f"{ours['phases'][p]:.1f}" for p in ("validate", "features", "write"))
        table.append([name, f"{count:,}", f"{customers:,}", f"{theirs['seconds']:.1f}", f"{theirs['peak_gb']:.2f}",
                      f"{build['seconds']:.1f}", f"{theirs['seconds'] / build['seconds']:.1f}x",
                      f"{ours['seconds']:.1f}", phases, f"{ours['peak_gb']:.2f}",
                      f"{theirs['seconds'] / ours['seconds']:.1f}x"])
    print_table(title, headers, table, console)

if __name__ == "__main__":
    main()
