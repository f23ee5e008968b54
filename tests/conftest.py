"""Shared fixtures (the real CDNOW logs, a small simulated shop, one CDNOW training run) and the run's order
(helpers are in tests/helpers.py)."""

from __future__ import annotations

import os
import warnings

import pandas as pd
import pytest

from features import cdnow
from features.simulator import Simulation, SimulationParams, simulate
from tests.helpers import load

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
# Two workers share two cores with the CLI's, the servers' and the notebook's own processes: OpenMP's (LightGBM's)
# spin-waiting threads would burn the cores the others wait for (a CDNOW training beside three busy processes: 69 s of
# CPU, 38 s with passive waits). Set before anything loads OpenMP; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Files that take minutes go first: `make test` runs two workers, each given whole files in this order,
# and one of these last would leave a worker alone with it at the end.
SLOWEST_FIRST = ("test_shapes.py", "test_writers.py", "test_spark.py", "test_cli.py", "test_service.py",
                 "test_registry.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: SLOWEST_FIRST.index(item.path.name) if item.path.name in SLOWEST_FIRST
               else len(SLOWEST_FIRST))


@pytest.fixture(scope="session")
def cdnow_master() -> pd.DataFrame:
    return cdnow.read_master()


@pytest.fixture(scope="session")
def shop() -> Simulation:
    """A small shop with every event type, used by behaviour and point-in-time tests."""
    return simulate(SimulationParams(customers=3000, seed=11))


@pytest.fixture(scope="session")
def cdnow_run(cdnow_master):
    """The CDNOW master log, validated, and one run of the training protocol on it."""
    from features.build import FeatureBuilder
    from models.lifecycle import Horizons
    from training.train import train

    data = load(transactions=cdnow_master)
    return data, train(data, FeatureBuilder, Horizons())
