"""Shared fixtures: the real CDNOW logs and a small simulated shop."""

from __future__ import annotations

import warnings
from datetime import datetime

import pandas as pd
import pytest

from features import cdnow, sources
from features.simulator import Simulation, SimulationParams, simulate

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

NOW = datetime(2026, 1, 1)  # the validation clock of every test
# Files that take minutes go first: `make test` runs two workers, each given whole files in this order,
# and one of these last would leave a worker alone with it at the end.
SLOWEST_FIRST = ("test_writers.py", "test_spark.py", "test_cli.py", "test_service.py", "test_registry.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: SLOWEST_FIRST.index(item.path.name) if item.path.name in SLOWEST_FIRST
               else len(SLOWEST_FIRST))


def load(now: datetime = NOW, **tables) -> sources.Dataset:
    """Validate tables (DataFrames or TableSources) into a fresh DuckDB connection."""
    return sources.load(sources.connect(), tables, now=now)


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
