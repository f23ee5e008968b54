"""The tests' shared helpers: loading tables, running the CLI, and checks several modules make."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from datetime import date, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import sources

NOW = datetime(2026, 1, 1)  # the validation clock of every test
DAY = pd.Timedelta(days=1)
# `lifecycle train` judged on one cut date, for the tests of what surrounds training on small shops (the registry's
# writers, the Spark engine): it trains in about half the time. The backtest over several cut dates is tested where it
# is the subject (test_training, test_backtest, test_shapes, test_cdnow_dates, the demo) and where CDNOW's choices are.
ONE_CUT = {"LIFECYCLE_BACKTEST_CUTS": "1"}


def load(now: datetime = NOW, currency: str | None = None, **tables) -> sources.Dataset:
    """Validate tables (DataFrames or TableSources) into a fresh DuckDB connection (amounts in ``currency``)."""
    return sources.load(sources.connect(), tables, now=now, currency=currency)


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lifecycle", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def forget_mlflow_uris(patch: pytest.MonkeyPatch) -> None:
    """Unset MLflow's URI variables in ``patch``, which restores them as they were: a run sets them, and they must not
    outlive it."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        patch.setenv(name, "")  # recorded as unset, or as it was, and so restored when ``patch`` is undone
        patch.delenv(name)


def run_here(*args: str, cwd: Path, monkeypatch, capsys, env: dict | None = None) -> subprocess.CompletedProcess:
    """``lifecycle args`` in this process (the entry point and its handlers, without a new interpreter's start-up),
    in ``cwd`` with ``env`` added to the environment, both for this command only."""
    from lifecycle.cli import application as cli
    from lifecycle.cli import render

    with monkeypatch.context() as here:
        here.chdir(cwd)
        for console in (render.console, render.errors):  # as wide as COLUMNS makes a new process's (read at import)
            here.setattr(console, "_width", 200)
        for name, value in (env or {}).items():
            here.setenv(name, value)
        forget_mlflow_uris(here)
        here.setattr(sys, "argv", ["lifecycle", *args])
        here.setitem(cli._state, "folder", cwd / ".lifecycle")
        capsys.readouterr()  # what the test printed before is not the command's
        with pytest.raises(SystemExit) as stop:
            cli.main()
            raise SystemExit(0)  # a command that returns ends the process with 0
        out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, stop.value.code or 0, out, err)


def copy_store(source: Path, target: Path) -> Path:
    """A copy of the folder ``source`` and the local MLflow store in it (``.lifecycle``): every absolute path the store
    keeps (artifact locations in its tables and models) points into the copy, so the copy is written, never the
    source. Returns ``target``."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    old, new = str(source), str(target)
    with sqlite3.connect(target / ".lifecycle" / "mlflow.db") as store:
        tables = [name for (name,) in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [c[1] for c in store.execute(f"PRAGMA table_info('{table}')") if c[2] in ("TEXT", "")
                           or c[2].startswith("VARCHAR")]:
                store.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?)',
                              (old, new, old))
    for spec in (target / ".lifecycle").rglob("MLmodel"):
        spec.write_text(spec.read_text().replace(old, new))
    return target


def cdnow_folder(demo: Path, target: Path) -> Path:
    """A copy of the CDNOW demo's folder (``copy_store``), with its orders at data/transactions.csv as a user's
    would be: a store where `lifecycle train` ran once on them."""
    folder = copy_store(demo, target)
    (folder / "data").mkdir()
    shutil.copy(folder / ".lifecycle/data/cdnow/transactions.csv", folder / "data/transactions.csv")
    return folder


def continuous_summary(sim) -> pd.DataFrame:
    """BTYD summary in continuous days (no rounding to whole days), straight from the orders."""
    tx = sim.transactions.sort_values(["customer_id", "timestamp"])
    g = tx.groupby("customer_id")
    first, last, count = g.timestamp.min(), g.timestamp.max(), g.timestamp.count()
    repeat = tx[tx.timestamp > tx.customer_id.map(first)]
    return pd.DataFrame({
        "frequency": count - 1,
        "recency": (last - first) / DAY,
        "T": (sim.end - first) / DAY,
        "monetary_value": repeat.groupby("customer_id").amount.mean().reindex(count.index).fillna(0.0),
    })


# Segments that say a customer buys now: never given to a lapsed one (no order in the churn window).
CURRENT_SEGMENTS = ("Champions", "Loyal", "Potential loyalist", "New", "Promising")


def assert_labels_agree_with_behaviour(scores: pd.DataFrame, features: pd.DataFrame, model) -> None:
    """The label rules of docs/features.md, as checks on a model's records and the features they came from."""
    rules, stages = model.builder.activity, model.builder.stages
    gaps, status = features.recency_gaps.to_numpy(), scores.activity_status
    lapsed = features.lapsed.to_numpy()  # no order in the churn window
    buyers = (features.orders > 0).to_numpy()
    assert status[buyers].notna().all() and status[~buyers].isna().all()
    assert set(status[buyers]) == {"active", "at risk", "lapsed", "churned"}
    np.testing.assert_array_equal(lapsed, buyers & (features.recency_days > model.horizons.churn_days))
    # active: an order in the churn window, at most active_within_gaps of their own typical gaps ago, believed alive,
    # not at high churn risk
    active = (status == "active").to_numpy()
    assert not lapsed[active].any() and (gaps[active] <= rules.active_within_gaps).all()
    assert (scores.p_alive[active] >= rules.min_p_alive).all() and (scores.churn_risk[active] != "high").all()
    # gone quiet, lapsed or churned, exactly when past the churn window and more than lapsed_after_gaps
    gone = status.isin(["lapsed", "churned"]).to_numpy()
    np.testing.assert_array_equal(gone, lapsed & (gaps > rules.lapsed_after_gaps))
    churned = (status == "churned").to_numpy()
    np.testing.assert_array_equal(churned, gone & ((gaps > rules.churned_after_gaps) | (features.frequency == 0)))
    # no segment says a lapsed customer buys now
    assert not scores.rfm_segment[lapsed].isin(CURRENT_SEGMENTS).any()
    # an advocate has an advocacy signal or buys now (in the churn window, at their rhythm)
    advocates = (scores.stage == "advocacy").to_numpy()
    signal = np.zeros(len(features), dtype=bool)
    if "reviews" in features:
        signal = ((features.reviews + features.referrals > 0)
                  | (features.latest_nps >= stages.advocacy_min_nps).fillna(False)).to_numpy()
    assert (signal | (~lapsed & (gaps <= rules.active_within_gaps)))[advocates].all()
    # the stage is how far a customer has come: one purchase day is conversion, more is retention or advocacy
    days = features.purchase_days.to_numpy()
    assert (scores.stage[days == 1] == "conversion").all()
    assert scores.stage[days >= 2].isin(["retention", "advocacy"]).all()


def trained_on_its_own_cycle(data: sources.Dataset, as_of: date | None = None):
    """``lifecycle train``'s protocol with the churn horizon derived from the shop (``churn_horizon_days = "auto"``)."""
    from features.build import FeatureBuilder
    from features.cycle import purchase_cycle
    from models.lifecycle import Horizons
    from training.train import TrainingConfig, train

    horizon = purchase_cycle(data, as_of or data.date_range()[1].date()).churn_horizon
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(data.until(as_of) if as_of else data,
                     TrainingConfig(partial(FeatureBuilder, churn_horizon_days=horizon), Horizons(churn_days=horizon)))


def assert_not_below_the_baselines_unless_weak(run) -> None:
    """Served churn not below recency alone, the served CLV not below the past spend rate, beyond noise pooled over
    the cut dates; or else the run is flagged weak."""
    from training.backtest import Bootstrap, gini, roc_auc

    bootstrap = Bootstrap()
    churn = bootstrap.difference(roc_auc, [(e.churn.customer_id, e.churn.churned, e.churn.served, e.churn.recency)
                                           for e in run.backtest])
    value = bootstrap.difference(gini, [(e.value.customer_id, e.value.spend, e.value.served, e.value.spend_rate)
                                        for e in run.backtest])
    assert run.model.weaknesses or "worse" not in (churn.verdict, value.verdict), (churn, value)


def assert_logged_backtest(client, run_id: str, backtest: list, rel: float) -> None:
    """The MLflow run ``run_id`` logged every cut date of ``backtest`` (newest first; logged oldest first, a step
    each): its metrics and baselines to ``rel``."""
    history = {name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
               for name in client.get_run(run_id).data.metrics}
    assert max(len(steps) for steps in history.values()) == len(backtest)
    for step, evaluation in enumerate(reversed(backtest)):
        assert {k: history[k][step] for k in evaluation.metrics} == pytest.approx(evaluation.metrics, rel=rel,
                                                                                  nan_ok=True)
        assert {k: history[f"baseline_{k}"][step] for k in evaluation.baselines} == pytest.approx(
            evaluation.baselines, rel=rel, nan_ok=True)
