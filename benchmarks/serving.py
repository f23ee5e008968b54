"""Scoring API latency and batch scoring throughput, in one run.

- Trains the champion on CDNOW (`lifecycle train`) and starts `lifecycle serve` on 127.0.0.1.
- Single-customer requests to ``POST /score`` at concurrency 1, 8 and 32 (client threads in this
  process, each with a keep-alive connection, on the same machine as the server): latency
  p50 / p95 / p99 and throughput, beside the in-process model call for the same records (the
  floor: no HTTP, no validation).
- `lifecycle score` (features included) on simulated order logs of the given sizes, with the same
  model: wall seconds, customers per second and peak memory of the process; then `lifecycle report`
  on those records (its KPI tables and HTML page): wall seconds and peak memory.

Usage: python -m benchmarks.serving [--requests 1000] [--batch-customers 1000000 10000000]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import machine, print_table, run_measured


def lifecycle(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "lifecycle", *args], cwd=cwd, check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """`lifecycle serve` in ``folder`` on a free port of 127.0.0.1, returned once it is ready (stop it with
    ``os.killpg(server.pid, 15)``)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lifecycle", "serve", "--port", str(port)], cwd=folder,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).read()
            return server, port
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                os.killpg(server.pid, 15)
                raise SystemExit("the server did not start") from None
            time.sleep(0.5)


class Client(threading.local):
    """One keep-alive connection per client thread, as an app's HTTP client pools them."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, body: bytes) -> float:
        """Seconds one ``POST /score`` took (raises on a non-2xx answer)."""
        started = time.perf_counter()
        self.connection.request("POST", "/score", body, {"content-type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        if response.status != HTTPStatus.OK:
            raise RuntimeError(f"/score answered {response.status}")
        return time.perf_counter() - started


def latency_rows(port: int, bodies: list[bytes], concurrency: int) -> list[str]:
    client = Client(port)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client.post, bodies[:4 * concurrency]))  # warm up: connect every thread
        started = time.perf_counter()
        seconds = np.array(list(pool.map(client.post, bodies)))
        wall = time.perf_counter() - started
    p50, p95, p99 = np.percentile(seconds * 1000, [50, 95, 99])
    return [f"HTTP /score, concurrency {concurrency}", f"{len(bodies):,}", f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}",
            f"{len(bodies) / wall:.0f}"]


def in_process_row(folder: Path, features: pd.DataFrame, count: int) -> list[str]:
    """The model call the server makes for one customer's record (columns as arrays), without HTTP."""
    from lifecycle.config import load_settings
    from lifecycle.training import load_model

    model = load_model(load_settings(state_dir=folder / ".lifecycle"))
    arrays = {name: features[name].to_numpy() for name in features.columns}
    rows = [{name: values[[i]] for name, values in arrays.items()} for i in range(min(count, len(features)))]
    seconds = []
    for i in range(count):
        started = time.perf_counter()
        model.predict_columns(rows[i % len(rows)])
        seconds.append(time.perf_counter() - started)
    p50, p95, p99 = np.percentile(np.array(seconds) * 1000, [50, 95, 99])
    return ["in process (the floor)", f"{count:,}", f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}",
            f"{count / sum(seconds):.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="single-customer requests per concurrency")
    parser.add_argument("--batch-customers", type=int, nargs="*", default=[1_000_000, 10_000_000])
    args = parser.parse_args()

    from rich.console import Console

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with console.status("training the champion on CDNOW..."):
            lifecycle("data", "cdnow", "--out", "data", cwd=folder)
            lifecycle("train", "--transactions", "data/transactions.csv", cwd=folder)
            lifecycle("features", "--transactions", "data/transactions.csv", "--out", "features.parquet", cwd=folder)
        features = pd.read_parquet(folder / "features.parquet").sample(frac=1.0, random_state=0, ignore_index=True)
        bodies = [json.dumps({"customers": json.loads(features.iloc[[i % len(features)]].to_json(
            orient="records", date_format="iso"))}).encode() for i in range(args.requests)]
        with console.status("waiting for the server..."):
            server, port = start_server(folder)
        try:
            rows = [in_process_row(folder, features, args.requests)]
            gc.collect()  # this process now holds a model: keep its full collections out of the timings
            gc.freeze()
            for concurrency in (1, 8, 32):
                with console.status(f"{args.requests} requests at concurrency {concurrency}..."):
                    rows.append(latency_rows(port, bodies, concurrency))
            gc.unfreeze()
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
        print_table(f"Scoring one customer, CDNOW champion ({machine()})",
                    ["call", "requests", "p50 ms", "p95 ms", "p99 ms", "per second"], rows, console)

        batch = []
        for customers in args.batch_customers:
            with console.status(f"simulating {customers:,} customers..."):
                lifecycle("data", "simulate", "--customers", str(customers), "--no-events", "--out",
                          f"sim{customers}", cwd=folder)
            with console.status(f"lifecycle score on {customers:,} customers..."):
                seconds, peak, *_ = run_measured(
                    [sys.executable, "-m", "lifecycle", "score", "--transactions",
                     str(folder / f"sim{customers}" / "transactions.parquet"), "--out", str(folder / "scores.parquet")],
                    env={**os.environ, "LIFECYCLE_STATE_DIR": str(folder / ".lifecycle")})
            scored = pd.read_parquet(folder / "scores.parquet", columns=["customer_id"]).shape[0]
            with console.status(f"lifecycle report on {scored:,} records..."):
                report_seconds, report_peak, *_ = run_measured(
                    [sys.executable, "-m", "lifecycle", "report", "--transactions",
                     str(folder / f"sim{customers}" / "transactions.parquet"), "--scores",
                     str(folder / "scores.parquet"), "--out", str(folder / "report")],
                    env={**os.environ, "LIFECYCLE_STATE_DIR": str(folder / ".lifecycle")})
            batch.append([f"{customers:,}", f"{scored:,}", f"{seconds:.1f}", f"{scored / seconds:,.0f}", f"{peak:.2f}",
                          f"{report_seconds:.1f}", f"{report_peak:.2f}"])
        print_table(f"lifecycle score, features included, then lifecycle report ({machine()})",
                    ["simulated customers", "scored (buyers)", "seconds", "customers per second", "peak GB",
                     "report seconds", "report peak GB"], batch, console)


if __name__ == "__main__":
    main()
