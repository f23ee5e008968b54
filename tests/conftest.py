"""Shared fixtures (the real CDNOW logs, a small simulated shop, one CDNOW training run, one CDNOW demo's store) and
the run's order (helpers are in tests/helpers.py)."""

from __future__ import annotations

import os
import pickle
import subprocess
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

from features import cdnow
from features.simulator import Simulation, SimulationParams, simulate
from tests.helpers import load, run, run_here

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
# Two workers share two cores with the CLI's, the servers' and the notebook's own processes. Set before anything loads
# OpenMP (subprocesses inherit them): one OpenMP thread per process, LightGBM's included (a team of two threads per
# worker spends more on waking each other, every boosting round, than the work; trained alone and at one thread, the
# same model every time), and waits that sleep rather than spin on the cores the others wait for.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Spark's JVMs (this process's, spark-submit's, a Connect server's) live a minute at most here: compiled by the quick
# JIT alone, they spend the cores on the tests rather than on optimizing code they will not run long (a fifth less time
# for a Spark Connect scoring of the test shop). Every JVM reads it, and says so on its stderr.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")

# `make test` runs two workers (--dist loadgroup), each given whole groups (``group``); the groups below (or every group
# of a file, by its name) go first, in this order (100-250 s each on 2026-12-07): one of them last would leave a worker
# alone at the end. The first needs the CDNOW demo (``cdnow_demo``) at once, so the second needs none: it runs while
# the demo is made.
SLOWEST_FIRST = ("test_cli (module fixtures)", "test_writers (module fixtures)", "test_service (module fixtures)",
                 "test_cli", "test_registry", "test_exports", "test_training", "test_spark (module fixtures)",
                 "test_shapes", "test_cdnow_dates", "test_simulator")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group(item)))

    def rank(item: pytest.Item) -> int:
        name = item.get_closest_marker("xdist_group").args[0]
        known = [k for k, first in enumerate(SLOWEST_FIRST) if first in (name, item.path.stem)]
        return known[0] if known else len(SLOWEST_FIRST)

    items.sort(key=rank)


def group(item: pytest.Item) -> str:
    """The worker's unit a test runs in: its file's tests that use the file's module-scoped fixtures (a trained
    store, a server) together, and the file's other tests together (a test may name its own group)."""
    module_scoped = any(defined[-1].scope == "module" for name in item.fixturenames
                        if (defined := item._fixtureinfo.name2fixturedefs.get(name)))
    return f"{item.path.stem} (module fixtures)" if module_scoped else item.path.stem


def shared(name: str, make: Callable, tmp_path_factory, worker_id: str):
    """``make()``, made once per test run and shared by the xdist workers (the first to ask makes it, under a file
    lock; the others read it back), or once per session when run without workers."""
    if worker_id == "master":
        return make()
    path = Path(tmp_path_factory.getbasetemp().parent) / f"{name}.pickle"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            path.write_bytes(pickle.dumps(make()))
        return pickle.loads(path.read_bytes())


@pytest.fixture(scope="session")
def cdnow_master() -> pd.DataFrame:
    return cdnow.read_master()


@pytest.fixture(scope="session")
def shop() -> Simulation:
    """A small shop with every event type, used by behaviour and point-in-time tests."""
    return simulate(SimulationParams(customers=3000, seed=11))


@pytest.fixture(scope="session")
def cdnow_demo(tmp_path_factory, worker_id) -> tuple[Path, subprocess.CompletedProcess]:
    """A folder where `lifecycle demo` ran, once per test run (CDNOW trained, the champion registered, every customer
    scored, the report written), and what it printed. Read it as it is; a test that changes the store works on a
    ``copy_store`` of it."""
    root = tmp_path_factory.getbasetemp()
    folder = (root if worker_id == "master" else root.parent) / "cdnow_demo"

    def make() -> subprocess.CompletedProcess:
        folder.mkdir()
        return run("demo", cwd=folder)

    return folder, shared("cdnow_demo", make, tmp_path_factory, worker_id)


@pytest.fixture(scope="session")
def cdnow_run(cdnow_master, tmp_path_factory, worker_id):
    """The CDNOW master log, validated, and one run of the training protocol on it (trained once per test run)."""
    from training.train import train

    data = load(transactions=cdnow_master)
    return data, shared("cdnow_run", lambda: train(data), tmp_path_factory, worker_id)


@pytest.fixture
def cli(monkeypatch, capsys) -> Callable[..., subprocess.CompletedProcess]:
    """``cli(*args, cwd=folder, env=None)``: ``lifecycle args`` run in this process (``tests.helpers.run_here``)."""
    return partial(run_here, monkeypatch=monkeypatch, capsys=capsys)
