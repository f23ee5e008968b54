"""Soak test of the scoring API: sustained load, hot reloads and hostile traffic, for minutes on end.

- Trains two versions on CDNOW (seeds 0 and 1) and starts `lifecycle serve` on 127.0.0.1 (with a
  bearer token, polling the registry every 2 s).
- ``--concurrency`` client threads send requests back to back for ``--minutes``: most are one
  customer's valid ``POST /score``; one in ``--fuzz-every`` is hostile (random JSON, wrong types,
  long text, unknown paths, a body over the byte limit, a multipart body, no token), which must
  get a 4xx.
- Every ``--reload-every`` seconds `lifecycle rollback` swaps the champion, which the server must
  pick up without a failed request.
- Each ``--window`` seconds a row: requests, errors (a 5xx, a dropped connection, a valid request
  refused, a hostile one accepted), p50 / p99 of the valid requests, the version served, the
  server's resident memory (all its processes) and the size of ``/metrics``.

Usage: python -m benchmarks.soak [--minutes 10] [--concurrency 8] [--reload-every 120]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from benchmarks.report import machine, print_table
from benchmarks.serving import lifecycle, start_server

TOKEN = "soak"


def hostile(rng: random.Random, valid: bytes) -> tuple[str, str, bytes, dict[str, str]]:
    """One request that must be refused with a 4xx: (method, path, body, extra headers)."""
    record = json.loads(valid)["customers"][0]
    name = rng.choice(sorted(record))
    kinds = [
        ("POST", "/score", json.dumps({"customers": [record | {name: rng.choice([[], {}, [1], {"a": 1}])}]})),
        ("POST", "/score", json.dumps({"customers": [record | {"customer_id": "z" * rng.randint(300, 100_000)}]})),
        ("POST", "/score", bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))),
        ("POST", "/score_history", json.dumps({"orders": [{"customer_id": 1, "timestamp": "1990-01-01",
                                                          "amount": rng.random()}], "as_of": "1980-01-01"})),
        ("GET", f"/{rng.getrandbits(64):x}", b""),
        ("POST", "/score", b"x" * (5 * 1024 * 1024)),
        ("POST", "/score", b"--boundary"),
        ("POST", "/model", b"{}"),
    ]
    method, path, body = rng.choice(kinds)
    body = body.encode() if isinstance(body, str) else body
    headers = {"content-type": "multipart/form-data"} if body == b"--boundary" else {}
    if path == "/model":
        headers["authorization"] = "Bearer wrong"
    return method, path, body, headers


class Load:
    """The client threads and what they saw, window by window."""

    def __init__(self, port: int, bodies: list[bytes], fuzz_every: int):
        self.port, self.bodies, self.fuzz_every = port, bodies, fuzz_every
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.requests = self.errors = self.refused = 0
        self.examples: list[str] = []
        self.stop = threading.Event()

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        count = 0
        while not self.stop.is_set():
            count += 1
            valid = self.bodies[rng.randrange(len(self.bodies))]
            is_hostile = count % self.fuzz_every == 0
            method, path, body, extra = hostile(rng, valid) if is_hostile else ("POST", "/score", valid, {})
            headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}", **extra}
            started = time.perf_counter()
            try:
                connection.request(method, path, body, headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = f"{type(exc).__name__}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            seconds = time.perf_counter() - started
            if is_hostile:  # the server may close a connection it refused (a body it would not read)
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            wrong = (not isinstance(status, int) or status >= 500 or (status != 200 and not is_hostile)
                     or (status < 400 and is_hostile))
            if isinstance(status, str) and is_hostile and len(body) > 4 * 1024 * 1024:
                wrong = False  # the server may answer 413 and close before a 5 MB body is sent
            with self.lock:
                self.requests += 1
                self.refused += int(is_hostile)
                if wrong:
                    self.errors += 1
                    if len(self.examples) < 5:
                        self.examples.append(f"{method} {path[:40]} -> {status}")
                if not is_hostile and status == 200:
                    self.latencies.append(seconds)

    def window(self) -> tuple[int, int, int, np.ndarray]:
        with self.lock:
            taken = (self.requests, self.errors, self.refused, np.array(self.latencies))
            self.requests = self.errors = self.refused = 0
            self.latencies = []
        return taken


def resident_mb(process: psutil.Process) -> float:
    """Resident memory of a process and all its children (the server's workers), in MB."""
    total = 0
    for each in [process, *process.children(recursive=True)]:
        try:
            total += each.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1024**2


def get(port: int, path: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"{}" if method == "POST"
                                     else None, headers={"authorization": f"Bearer {TOKEN}",
                                                         "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reload-every", type=float, default=120, help="seconds between champion swaps")
    parser.add_argument("--fuzz-every", type=int, default=10, help="one hostile request in this many")
    parser.add_argument("--window", type=float, default=60, help="seconds per row of the table")
    args = parser.parse_args()

    from rich.console import Console

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with console.status("training two versions on CDNOW..."):
            lifecycle("data", "cdnow", "--out", "data", cwd=folder)
            for seed in ("0", "1"):
                os.environ["LIFECYCLE_SEED"] = seed
                lifecycle("train", "--transactions", "data/transactions.csv", cwd=folder)
            os.environ.pop("LIFECYCLE_SEED")
            lifecycle("promote", "2", cwd=folder)
            lifecycle("promote", "1", cwd=folder)  # champion 1, previous 2: each rollback swaps them
            lifecycle("features", "--transactions", "data/transactions.csv", "--out", "features.parquet", cwd=folder)
        features = pd.read_parquet(folder / "features.parquet")
        bodies = [json.dumps({"customers": json.loads(features.iloc[[i]].to_json(orient="records",
                                                                                 date_format="iso"))}).encode()
                  for i in range(0, len(features), 7)]
        env = {**os.environ, "LIFECYCLE_SERVING__API_TOKEN": TOKEN, "LIFECYCLE_SERVING__POLL_SECONDS": "2"}
        with console.status("waiting for the server..."):
            server, port = start_server(folder, env)
        rows = []
        try:
            watched = psutil.Process(server.pid)
            load = Load(port, bodies, args.fuzz_every)
            threads = [threading.Thread(target=load.run, args=(seed,), daemon=True)
                       for seed in range(args.concurrency)]
            for thread in threads:
                thread.start()
            started = last_reload = time.monotonic()
            end = started + args.minutes * 60
            reloads = 0
            with console.status("soaking...") as status:
                while time.monotonic() < end:
                    time.sleep(min(args.window, end - time.monotonic()))
                    now = time.monotonic()
                    if now - last_reload >= args.reload_every:
                        lifecycle("rollback", cwd=folder)
                        reloads, last_reload = reloads + 1, now
                    requests, errors, refused, latencies = load.window()
                    served = json.loads(get(port, "/model", "POST"))["version"]
                    p50, p99 = (np.percentile(latencies * 1000, [50, 99]) if len(latencies) else (np.nan, np.nan))
                    rows.append([f"{(now - started) / 60:.1f}", f"{requests:,}", f"{refused:,}", f"{errors}",
                                 f"{p50:.1f}", f"{p99:.1f}", served, f"{reloads}", f"{resident_mb(watched):,.0f}",
                                 f"{len(get(port, '/metrics')) / 1024:,.0f}"])
                    status.update(f"soaking... {rows[-1][0]} min, {errors} errors in the last window")
            load.stop.set()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
        print_table(f"Soak: {args.concurrency} clients, a champion swap every {args.reload_every:.0f} s, one "
                    f"hostile request in {args.fuzz_every} ({machine()})",
                    ["minute", "requests", "hostile", "errors", "p50 ms", "p99 ms", "version served", "swaps",
                     "server RSS MB", "/metrics KB"], rows, console)
        if load.examples:
            console.print("errors, first few: " + "; ".join(load.examples))


if __name__ == "__main__":
    main()
