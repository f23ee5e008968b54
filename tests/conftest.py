"""Shared fixtures (the real CDNOW logs, a small simulated shop, one CDNOW training run) and the run's order
(helpers are in tests/helpers.py)."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

from features import cdnow
from features.simulator import Simulation, SimulationParams, simulate
from tests.helpers import load

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
# Two workers share two cores with the CLI's, the servers' and the notebook's own processes. Set before anything loads
# OpenMP (subprocesses inherit them): one OpenMP thread per process, LightGBM's included (a team of two threads per
# worker spends more on waking each other, every boosting round, than the work; trained alone and at one thread, the
# same model every time), and waits that sleep rather than spin on the cores the others wait for.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `make test` runs two workers (--dist loadgroup), each given whole groups (``group``); the files below go first, in
# this order (their groups took 100-200 s each on 2026-12-06): one of them last would leave a worker alone at the end.
SLOWEST_FIRST = ("test_cli.py", "test_writers.py", "test_service.py", "test_registry.py", "test_training.py",
                 "test_spark.py", "test_shapes.py", "test_cdnow_dates.py", "test_simulator.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: SLOWEST_FIRST.index(item.path.name) if item.path.name in SLOWEST_FIRST
               else len(SLOWEST_FIRST))
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group(item)))


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
def cdnow_run(cdnow_master, tmp_path_factory, worker_id):
    """The CDNOW master log, validated, and one run of the training protocol on it (trained once per test run)."""
    from training.train import train

    data = load(transactions=cdnow_master)
    return data, shared("cdnow_run", lambda: train(data), tmp_path_factory, worker_id)
