"""One writer at a time on the local registry: real `lifecycle train` processes, a shared SQLite store, kill -9 (the
registry read and changed after each kill in this process)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ONE_CUT, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """A folder with a small simulated order log (trains in seconds)."""
    folder = tmp_path_factory.mktemp("writers")
    made = run("data", "simulate", "--customers", "800", "--no-events", "--format", "csv", "--out", "sim",
               cwd=folder)
    assert made.returncode == 0, made.stderr
    return folder


def _train(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lifecycle", "train", "--transactions", "sim/transactions.csv"],
                            cwd=folder, env={**os.environ, "COLUMNS": "200", **ONE_CUT}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _store(folder: Path, sql: str) -> list[tuple]:
    """A read of the MLflow store, as it is this moment (nothing while it does not exist yet)."""
    path = folder / ".lifecycle" / "mlflow.db"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the tables are being created
        return []


def _aliases(folder: Path) -> dict[str, str]:
    found = _store(folder, "SELECT alias, version FROM registered_model_aliases")
    return {alias: str(version) for alias, version in found}


def _gate_tags(folder: Path) -> dict[str, str]:
    return {str(v): value for v, value in _store(
        folder, "SELECT version, value FROM model_version_tags WHERE key = 'gate_promoted'")}


def test_two_trains_at_once_are_gated_one_after_the_other(shop, tmp_path):
    folder = tmp_path
    (folder / "sim").symlink_to(shop / "sim")
    first, second = _train(folder), _train(folder)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    for process, (_, err) in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, err
    said = " ".join(" ".join(out.split()) for out, _ in outputs)
    assert "version 1: promoted to champion (first model)" in said  # exactly one run was first
    assert said.count("(first model)") == 1
    tags = {str(v): value for v, value in _store(
        folder, "SELECT version, value FROM model_version_tags WHERE key = 'gate_champion_version'")}
    assert tags == {"1": "", "2": "1"}  # version 2 was gated against version 1, not against no champion
    aliases = _aliases(folder)
    if _gate_tags(folder)["2"] == "True":
        assert aliases == {"champion": "2", "previous": "1"}
    else:
        assert aliases == {"champion": "1", "challenger": "2"}


def _kill_when(process: subprocess.Popen, folder: Path, condition, timeout: float = 300) -> None:
    """kill -9 the process the moment ``condition(folder)`` holds (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not condition(folder):
        assert process.poll() is None, f"the run ended before the moment to kill it: {process.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_kill_9_at_any_moment_leaves_the_champion_and_the_store_usable(shop, tmp_path, cli):
    folder = tmp_path
    (folder / "sim").symlink_to(shop / "sim")
    first = cli("train", "--transactions", "sim/transactions.csv", cwd=folder, env=ONE_CUT)
    assert first.returncode == 0, first.stderr
    assert _aliases(folder) == {"champion": "1"}
    moments = {
        "while training": lambda f: time.sleep(3) is None,
        "while logging the run": lambda f: bool(_store(f, "SELECT 1 FROM runs WHERE status = 'RUNNING'")),
        "between registering and gating": lambda f: len(_store(f, "SELECT 1 FROM model_versions")) > len(
            _gate_tags(f)),
    }
    for moment, condition in moments.items():
        _kill_when(_train(folder), folder, condition)
        assert _aliases(folder) == {"champion": "1"}, moment
        listed = cli("models", cwd=folder)
        assert listed.returncode == 0 and "Traceback" not in listed.stderr, moment
    versions = [str(v) for (v,) in _store(folder, "SELECT version FROM model_versions ORDER BY version")]
    ungated = [v for v in versions if v not in _gate_tags(folder)]
    assert ungated, "no kill landed between registering and gating"
    refused = cli("promote", ungated[-1], cwd=folder)
    err = " ".join(refused.stderr.split())
    assert refused.returncode == 2
    assert f"version {ungated[-1]} was registered but never gated: tagged interrupted" in err
    assert f"error: version {ungated[-1]} has no gate decision (its training was interrupted before the gate)" in err
    assert _store(folder, "SELECT count(*) FROM runs WHERE status = 'RUNNING'") == [(0,)]  # marked FAILED
    assert {_gate_tags(folder)[v] for v in ungated} == {"interrupted"}
    # the store goes on: a new run is gated against the champion, and a forced promotion is possible
    again = cli("train", "--transactions", "sim/transactions.csv", cwd=folder, env=ONE_CUT)
    assert again.returncode == 0, again.stderr
    assert f"version {int(versions[-1]) + 1}:" in " ".join(again.stdout.split())
    forced = cli("promote", ungated[-1], "--force", cwd=folder)
    assert forced.returncode == 0 and _aliases(folder)["champion"] == ungated[-1]
