"""The lifecycle command as a user runs it: its output and its exit code (in this process, through the entry point;
in a real process where the process is the subject: the start-up, a read-only mount, the UI server, the demo)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pandas as pd
import pytest

from tests.helpers import cdnow_folder

COMMANDS = [["config", "show"], ["init"], ["data", "cdnow"], ["data", "simulate"], ["features"], ["demo"], ["train"],
            ["promote"], ["rollback"], ["models"], ["ui"], ["schedule"], ["score"], ["report"], ["serve"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command, tmp_path, cli):
    result = cli(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Example" in result.stdout


def test_the_cli_starts_without_the_heavy_libraries():
    """``lifecycle --help`` and every command's start: each command imports what it uses. The commands that read the
    registry (score, models, promote, rollback) do not draw: matplotlib loads when a run is recorded."""
    heavy = ("lightgbm", "sklearn", "mlflow", "bentoml", "pyspark", "pandas", "numpy", "duckdb", "scipy", "numba",
             "lifetimes", "matplotlib")
    code = (f"import sys, lifecycle.cli; print(' '.join(m for m in {heavy!r} if m in sys.modules)); "
            "import lifecycle.training; print('matplotlib' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.splitlines() == ["", "False"]


def test_features_on_cdnow_writes_the_table_and_a_summary(tmp_path, cli):
    assert cli("data", "cdnow", "--out", "data", cwd=tmp_path).returncode == 0
    result = cli("features", "--transactions", "data/transactions.csv", "--as-of", "1997-09-30",
                 "--out", "out/features.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out/features.csv", dtype={"customer_id": str})
    assert len(table) == 23_570 and set(table.stage) == {"conversion", "retention", "advocacy"}
    assert "69,659" in result.stdout and "as of 1997-09-30" in result.stdout
    assert f"{(pd.read_csv(tmp_path / 'data/transactions.csv').timestamp > '1997-09-30').sum():,}" in result.stdout
    assert not (tmp_path / "out/features.rejects.csv").exists()


def test_bad_rows_go_to_the_rejects_file_and_are_counted(tmp_path, cli):
    orders = pd.DataFrame({"customer_id": ["a", "b", "c", "d", "e", "f", None, "g"],
                           "timestamp": ["2024-01-01", "2024-01-02", "2024-02-03", "2024-02-04", "2024-03-01",
                                         "yesterday", "2024-01-01", "2024-02-05"],
                           "amount": [1, 2, 3, 4, -5, 6, 7, 8]})
    orders.to_csv(tmp_path / "orders.csv", index=False)
    result = cli("features", "--transactions", "orders.csv", "--out", "f.parquet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rejects = pd.read_parquet(tmp_path / "f.rejects.parquet")
    assert sorted(rejects.reason) == ["missing customer_id", "negative amount", "unparseable timestamp"]
    assert len(pd.read_parquet(tmp_path / "f.parquet")) == 5  # 8 rows in: 5 valid, 3 rejected
    assert "negative amount: 1" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["features", "--transactions", "missing.csv", "--out", "f.csv"], "no file matches 'missing.csv'"),
    (["features", "--transactions", "orders.csv", "--out", "f.csv"],
     "transactions: 3 columns not found: 'customer_id' (for customer_id), 'timestamp' (for timestamp), 'amount' (for "
     "amount); the file has ['cust', 'ts', 'value']; map yours in inputs.transactions.columns (customer_id, "
     "timestamp, amount)"),
    (["features", "--transactions", "orders.csv", "--out", "f.csv", "--as-of", "soon"], "Invalid value"),
    (["--config", "nowhere.toml", "config", "show"], "config file 'nowhere.toml' not found"),
    (["data", "simulate", "--out", "x", "--format", "xlsx"], "--format must be parquet or csv"),
    (["schedule", "--cron", "0 3 * *"], "needs five fields"),
    (["features", "--transactions", "empty.csv", "--out", "f.csv"], "transactions: 'empty.csv' is empty (0 bytes)"),
    (["train", "--transactions", "header.csv"], "transactions: no rows (the file has a header and nothing else)"),
    (["features", "--transactions", "header.csv", "--out", "f.csv"], "no rows (the file has a header and nothing"),
    (["-c", "map.toml", "features", "--transactions", "typed.parquet", "--out", "f.csv"],
     "transactions: column 'paid' (for amount) holds DATE values; it must be a number"),
    (["features", "--transactions", "orders.csv", "--out", "features.txt"],
     "cannot write 'features.txt': name the output .parquet or .csv"),
    (["score", "--transactions", "orders.csv", "--out", "scores.txt"], "name the output .parquet or .csv"),
    (["score", "--transactions", "orders.csv", "--out", "scores.csv"],
     "there is no champion model yet: run `lifecycle train` first"),
    (["train", "--transactions", "header.csv", "--as-of", "1998-13-01"], "Invalid value"),
    (["train", "--transactions", "thin.csv"], "too little data to train: by 2024-06-17 (the first day a model is "
     "fitted) 15 customers had ordered (need at least 100) and 0 customers had ordered on two or more days (need at "
     "least 20); a shorter churn_horizon_days (now 90) fits the classifiers later"),
    (["train"], "no orders given: pass --transactions FILE, or set inputs.transactions.path in lifecycle.toml "
     "(LIFECYCLE_INPUTS__TRANSACTIONS__PATH)"),
])
def test_user_mistakes_end_with_one_clear_line(args, message, tmp_path, cli):
    pd.DataFrame({"cust": ["a"], "ts": ["2024-01-01"], "value": [1.0]}).to_csv(tmp_path / "orders.csv", index=False)
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_text("customer_id,timestamp,amount\n")
    pd.DataFrame({"customer_id": range(30), "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(
        np.arange(30) * 12, unit="D"), "amount": 1.0}).to_csv(tmp_path / "thin.csv", index=False)
    pd.DataFrame({"id": [1], "at": pd.to_datetime(["2024-01-01"]), "paid": pd.to_datetime(["2024-01-02"]).date}
                 ).to_parquet(tmp_path / "typed.parquet")
    (tmp_path / "map.toml").write_text('[inputs.transactions.columns]\ncustomer_id = "id"\ntimestamp = "at"\n'
                                       'amount = "paid"\n')
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert len(result.stderr.strip().splitlines()) == 1 or "Invalid value" in message  # click draws a box
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "features.txt").exists() and not (tmp_path / "scores.txt").exists()


def test_compressed_csv_is_read(tmp_path, cli):
    pd.DataFrame({"customer_id": list("abcdef"), "timestamp": ["2024-01-01"] * 6, "amount": [1.0] * 6}).to_csv(
        tmp_path / "orders.csv.gz", index=False, compression="gzip")
    result = cli("features", "--transactions", "orders.csv.gz", "--out", "f.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(tmp_path / "f.csv")) == 6


def test_unknown_environment_variables_are_reported_with_the_likely_name(tmp_path, cli):
    result = cli("config", "show", cwd=tmp_path, env={"LIFECYCLE_CHURN_HORIZON": "60",
                                                     "LIFECYCLE_INPUTS__TRANSACTION__PATH": "x.csv",
                                                     "LIFECYCLE_INPUTS__TRANSACTIONS__COLUMNS__AMOUNT": "paid"})
    assert result.returncode == 0
    err = " ".join(result.stderr.split())
    assert "LIFECYCLE_CHURN_HORIZON is not a setting and is ignored (did you mean LIFECYCLE_CHURN_HORIZON_DAYS?)" in err
    assert "(did you mean LIFECYCLE_INPUTS__TRANSACTIONS__PATH?)" in err
    assert "COLUMNS__AMOUNT" not in err and 'amount = "paid"' in result.stdout  # a column map: any key is fine


def test_help_keeps_square_brackets(tmp_path, cli):
    result = cli("score", "--help", cwd=tmp_path)
    assert "customer-lifecycle[spark]" in "".join(result.stdout.split()).replace("│", "")


def test_an_unexpected_error_is_one_line_and_the_trace_goes_to_the_state_log(tmp_path, monkeypatch, capsys):
    """The top-level handler, around a command that fails with an error of ours (a bug, not a user mistake)."""
    from lifecycle.cli import application as cli

    def broken() -> None:
        {}["missing"]

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setitem(cli._state, "folder", tmp_path / "state")
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    log = tmp_path / "state" / "lifecycle.log"
    assert err.strip() == f"error: unexpected KeyError: 'missing' (the full trace is in {log}; please include it " \
                          "when you report this)"
    assert "Traceback (most recent call last)" in log.read_text() and "in broken" in log.read_text()


def test_a_model_used_unfitted_is_our_bug_not_the_users(tmp_path, monkeypatch, capsys):
    """"Not fitted" is a programming error: exit 1 with the trace's path, not exit 2 as if the user had erred."""
    from lifecycle.cli import application as cli
    from models.mbgnbd import MBGNBD

    monkeypatch.setattr(cli, "app", lambda: MBGNBD().p_alive([1.0], [1.0], [2.0]))
    monkeypatch.setitem(cli._state, "folder", tmp_path / "state")
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected NotFittedError: MBGNBD is not fitted: call fit() first (the full trace "
                          f"is in {tmp_path / 'state' / 'lifecycle.log'}")


def test_a_read_only_state_folder_is_one_line(tmp_path, cli):
    """`train` and `rollback` with the state folder on a read-only mount (a user namespace of its own: root
    writes through permission bits, so chmod proves nothing where the suite runs as root)."""
    orders = pd.DataFrame({"customer_id": list("abcdef"), "timestamp": ["2024-01-01"] * 6, "amount": [1.0] * 6})
    orders.to_csv(tmp_path / "orders.csv", index=False)
    assert cli("models", cwd=tmp_path).returncode == 0  # creates the store
    state = tmp_path / ".lifecycle"
    read_only = ["unshare", "-rm", "sh", "-c", 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && '
                 'shift && exec "$@"', "sh", str(state)]
    if subprocess.run([*read_only, "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine allows no private read-only mount (unshare -rm)")
    for args in (["train", "--transactions", "orders.csv"], ["rollback"], ["promote", "1"]):
        result = subprocess.run([*read_only, sys.executable, "-m", "lifecycle", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"error: Read-only file system: {state / 'mlflow.lock'} (the state folder {state} " \
                                "must be writable; set state_dir or LIFECYCLE_STATE_DIR to move it)\n"


def test_configuration_file_column_map_and_environment(tmp_path, cli):
    pd.DataFrame({"cust": list("abcdef"), "ts": ["2024-01-01"] * 6, "value": [1.0] * 6}).to_csv(
        tmp_path / "orders.csv", index=False)
    (tmp_path / "lifecycle.toml").write_text(
        'churn_horizon_days = 60\n[inputs.transactions]\npath = "orders.csv"\n'
        'columns = { customer_id = "cust", timestamp = "ts", amount = "value" }\n')
    shown = cli("config", "show", cwd=tmp_path, env={"LIFECYCLE_CLV_HORIZON_DAYS": "180"})
    assert "churn_horizon_days = 60" in shown.stdout and "clv_horizon_days = 180" in shown.stdout
    assert f'state_dir = "{tmp_path / ".lifecycle"}"' in shown.stdout
    assert cli("features", "--out", "f.csv", cwd=tmp_path).returncode == 0
    assert len(pd.read_csv(tmp_path / "f.csv")) == 6
    bad = cli("config", "show", cwd=tmp_path, env={"LIFECYCLE_CHURN_HORIZON_DAYS": "-3"})
    assert bad.returncode == 2 and "churn_horizon_days" in bad.stderr


def test_churn_risk_and_activity_settings_reach_the_model_and_are_checked(tmp_path, cli):
    from lifecycle.config import load_settings
    from lifecycle.training import horizons
    from models.risk import RiskBands

    (tmp_path / "lifecycle.toml").write_text("[churn_risk]\nmedium = 0.3\nhigh = 0.8\n")
    assert horizons(load_settings(tmp_path / "lifecycle.toml", churn_horizon_days=90)).risk_bands == RiskBands(0.3, 0.8)
    assert horizons(load_settings(churn_horizon_days=90)).risk_bands == RiskBands(0.4, 0.7)  # the documented defaults
    bad = cli("config", "show", cwd=tmp_path, env={"LIFECYCLE_CHURN_RISK__HIGH": "0.2"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert ("churn risk thresholds must be 0 < medium < high < 1: churn_risk.medium is 0.3, churn_risk.high 0.2"
            in " ".join(bad.stderr.split()))
    (tmp_path / "activity.toml").write_text("[activity]\nactive_within_gaps = 2\nlapsed_after_gaps = 4\n")
    settings = load_settings(tmp_path / "activity.toml", churn_horizon_days=90)
    assert settings.feature_builder().activity.lapsed_after_gaps == 4
    bad = cli("config", "show", cwd=tmp_path, env={"LIFECYCLE_ACTIVITY__LAPSED_AFTER_GAPS": "1"})
    assert bad.returncode == 2 and "activity gaps must rise: active_within_gaps (1.5) < lapsed_after_gaps (1.0)" in (
        " ".join(bad.stderr.split()))


def test_simulate_writes_tables_and_ground_truth(tmp_path, cli):
    result = cli("data", "simulate", "--customers", "300", "--seed", "2", "--out", "sim", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("transactions", "events", "customers", "truth"):
        assert (tmp_path / "sim" / f"{name}.parquet").is_file()
    assert '"seed": 2' in (tmp_path / "sim" / "truth.json").read_text()
    pareto = cli("data", "simulate", "--customers", "300", "--process", "pareto_nbd", "--out", "pareto", cwd=tmp_path)
    assert pareto.returncode == 0 and '"process": "pareto_nbd"' in (tmp_path / "pareto" / "truth.json").read_text()
    wrong = cli("data", "simulate", "--process", "weibull", "--out", "w", cwd=tmp_path)
    assert wrong.returncode == 2 and "--process must be bgnbd or pareto_nbd" in wrong.stderr


def test_demo_runs_the_main_job_on_cdnow(cdnow_demo):
    """`make demo` without a terminal: a line per step as it goes, then what a shop acts on (the model that scored,
    the base and its value at risk, stages and segments, the most valuable customers, the forecast, the report),
    no MLflow chatter; the diagnostics (inputs, the run's choices and track record, the published fits) in a file."""
    folder, result = cdnow_demo
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "Successfully registered" not in result.stderr and "Created version" not in result.stderr
    steps = ["writing and validating the CDNOW master log...", "training out of time (features, purchase models, "
             "Gamma-Gamma, LightGBM) and gating...", "scoring every customer with the champion...",
             "writing the lifecycle report..."]
    assert all(re.search(re.escape(step) + r" done in \d+ s", out) for step in steps), out[:2000]
    summary = ["model version 1, promoted to champion: MBG/NBD purchases", "lifecycle report as of 1998-06-30: "
               "23,570 customers", "RFM segments", "ten most valuable", "forecast for the next 365 days",
               ".lifecycle/output/demo_diagnostics.txt"]
    where = [out.index(part) for part in summary]
    assert where == sorted(where) and where[0] > out.index(steps[-1]), where
    assert re.search(r"predicted CLV [\d,]+ USD, of which [\d,]+ USD", out) and "Champions" in out
    assert re.search(r"expected CLV \(learned\) over the next 12 months: [\d,]+ USD in total", out)
    assert ".lifecycle/output/report/report.html" in out and (folder / ".lifecycle/output/report/report.html").is_file()
    scores = pd.read_parquet(folder / ".lifecycle/output/cdnow_scores.parquet")
    assert len(scores) == 23_570 and set(scores.model_version) == {"1"}
    diagnostics = " ".join((folder / ".lifecycle/output/demo_diagnostics.txt").read_text().split())
    assert "│ r │ 0.2426 │ 0.243 │" not in out and "Fader, Hardie & Lee (2005)" in diagnostics
    assert "│ r │ 0.2426 │ 0.243 │" in diagnostics and "-9582.43" in diagnostics
    assert "Fader & Hardie (2005)" in diagnostics and "│ beta │ 11.6679 │ 11.66 │" in diagnostics
    assert "-9594.97" in diagnostics
    # the purchase models side by side, the one chosen, the track record over three cut dates and each decision
    assert "│ BG/NBD │" in diagnostics and "│ MBG/NBD │" in diagnostics and "│ Pareto/NBD │" in diagnostics
    assert "judged on 3 cut date(s), one churn horizon apart: 1998-06-30, 1998-04-01, 1998-01-01" in diagnostics
    assert "track record of what serves" in diagnostics and "│ 1998-01-01 │" in diagnostics
    assert "churn source: the " in diagnostics and "clv source: the " in diagnostics
    assert "purchase model: MBG/NBD" in diagnostics and "chosen" in diagnostics


def test_paths_with_quotes_work(tmp_path, cli):
    folder = tmp_path / "it's here"
    folder.mkdir()
    assert cli("data", "cdnow", "--out", "data", cwd=folder).returncode == 0
    result = cli("features", "--transactions", "data/transactions.csv", "--out", "o'ut/features.parquet", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_parquet(folder / "o'ut/features.parquet")) == 23_570


@pytest.fixture(scope="module")
def trained(cdnow_demo, tmp_path_factory) -> tuple[Path, str]:
    """A folder where CDNOW was trained once (a copy of the demo's: the same `lifecycle train` on the same orders, at
    data/transactions.csv here), and what it printed (stdout, stderr and the diagnostics it wrote)."""
    demo, result = cdnow_demo
    assert result.returncode == 0, result.stderr
    folder = cdnow_folder(demo, tmp_path_factory.mktemp("trained"))
    diagnostics = (demo / ".lifecycle/output/demo_diagnostics.txt").read_text()
    return folder, " ".join((result.stdout + result.stderr + diagnostics).split())


def test_train_registers_and_gates_and_the_registry_commands(trained, cli):
    tmp_path, out = trained
    assert "INFO mlflow" not in out and "Warning" not in out  # no library chatter for the user
    assert "version 1: promoted to champion (first model)" in out
    assert "judged on 1998-04-01..1998-06-30" in out and "recency alone" in out
    assert "CLV judged on spend over 1997-12-29..1998-06-30 (183 days; learned CLV fitted at 1997-06-29)" in out
    assert "clv: the learned CLV" in out and "the learned CLV's labels cover 183 days" in out
    assert (tmp_path / ".lifecycle" / "mlflow.db").is_file()
    listed = cli("models", cwd=tmp_path)
    assert listed.returncode == 0 and "champion" in listed.stdout
    assert any(name in listed.stdout for name in ("bgnbd", "mbgnbd", "pareto_nbd"))
    assert cli("rollback", cwd=tmp_path).returncode == 2  # nothing to roll back to yet
    missing = cli("promote", "9", cwd=tmp_path)
    assert missing.returncode == 2 and "no version '9'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_score_writes_every_customer_or_the_listed_ones(trained, cli):
    folder, _ = trained
    everyone = cli("score", "--transactions", "data/transactions.csv", "--out", "out/scores.parquet", cwd=folder)
    assert everyone.returncode == 0, everyone.stderr
    out = " ".join(everyone.stdout.split())
    assert "69,659 rows in = 69,659 valid + 0 rejected" in out and "scored 23,570 customers" in out
    assert "feature drift from the training data of version 1: none (largest PSI 0.000" in out
    assert (folder / "out/scores.drift.csv").is_file()
    scores = pd.read_parquet(folder / "out/scores.parquet")
    assert len(scores) == 23_570 and set(scores.model_version) == {"1"}
    pd.DataFrame({"customer_id": ["00005", "99999"]}).to_csv(folder / "list.csv", index=False)
    listed = cli("score", "--transactions", "data/transactions.csv", "--customer-list", "list.csv",
                 "--as-of", "1998-01-01", "--out", "out/listed.csv", cwd=folder)
    assert listed.returncode == 0, listed.stderr
    assert "2 listed customers, 1 without history" in " ".join(listed.stdout.split())
    rows = pd.read_csv(folder / "out/listed.csv", dtype={"customer_id": str})
    assert sorted(rows.customer_id) == ["00005", "99999"] and set(rows.as_of) == {"1998-01-01"}
    missing = cli("score", "--transactions", "data/transactions.csv", "--out", "x.csv", "--model-uri",
                  "models:/customer-lifecycle/9", cwd=folder)
    assert missing.returncode == 2 and "cannot load the model" in missing.stderr
    (folder / "header.csv").write_text("customer_id,timestamp,amount\n")
    empty = cli("score", "--transactions", "header.csv", "--out", "x.csv", cwd=folder)
    assert empty.returncode == 2
    assert empty.stderr == "error: transactions: no rows (the file has a header and nothing else)\n"
    pd.DataFrame({"customer_id": ["5", "6", "7"]}).to_csv(folder / "unpadded.csv", index=False)
    unpadded = cli("score", "--transactions", "data/transactions.csv", "--customer-list", "unpadded.csv",
                   "--out", "out/unpadded.csv", cwd=folder)
    assert unpadded.returncode == 0, unpadded.stderr
    assert " ".join(unpadded.stderr.split()) == (
        "warning: only 0 of the 3 ids in unpadded.csv occur in the order log: the rest are scored as prospects we "
        "know nothing about; 3 would match without leading zeros (ids are compared as text: '1' is not '00001')")


def test_report_writes_the_page_and_tables_and_says_what_it_cannot_show(trained, cli):
    folder, _ = trained
    made = cli("report", "--transactions", "data/transactions.csv", "--out", "rep", cwd=folder)
    assert made.returncode == 0, made.stderr
    out = " ".join(made.stdout.split())
    assert "lifecycle report as of 1998-06-30: 23,570 customers" in out and "report: rep/report.html" in out
    assert "note: the channels section has no numbers: needs a customer table (--customers FILE" in out
    assert re.search(r"audiences: win back [\d,]+, second order 0, vip [\d,]+, at risk [\d,]+ \(rep/audiences/\)",
                     out), out
    assert {p.name for p in (folder / "rep").iterdir()} == {
        "scores.parquet", "scores.drift.csv", "report.html", "segments.csv", "value_at_risk.csv", "act_first.csv",
        "top_customers.csv", "forecast.csv", "funnel.csv", "cohorts.csv", "cohort_retention.csv", "track_record.csv",
        "audiences"}
    assert {p.name for p in (folder / "rep" / "audiences").iterdir()} == {
        "win_back.csv", "second_order.csv", "vip.csv", "at_risk.csv"}
    again = cli("report", "--transactions", "data/transactions.csv", "--scores", "rep/scores.parquet", "--out",
                "again", cwd=folder)  # from records scored before: the same tables
    assert again.returncode == 0, again.stderr
    for name in ("funnel.csv", "cohorts.csv", "value_at_risk.csv", "act_first.csv", "segments.csv", "forecast.csv",
                 "audiences/vip.csv"):
        assert (folder / "again" / name).read_text() == (folder / "rep" / name).read_text(), name


def test_ui_serves_the_local_store(trained):
    """`lifecycle ui` is a real MLflow server on the run's store: the champion and the run's plots are there. It is
    the server alone, without MLflow's job runners (a process each, importing MLflow: browsing needs none)."""
    folder, _ = trained
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "lifecycle", "ui", "--port", str(port)], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                model = json.load(urlopen(f"{base}/registered-models/get?name=customer-lifecycle", timeout=5))
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the UI did not come up"
                time.sleep(1)
        aliases = {a["alias"]: a["version"] for a in model["registered_model"]["aliases"]}
        assert aliases == {"champion": "1"}
        version = json.load(urlopen(f"{base}/model-versions/get?name=customer-lifecycle&version=1", timeout=5))
        run_id = version["model_version"]["run_id"]
        listed = json.load(urlopen(f"{base}/artifacts/list?run_id={run_id}&path=plots", timeout=5))
        assert len([f for f in listed["files"] if f["path"].endswith(".png")]) == 10
        started = _session(server.pid)  # the UI and what it started
        assert any("mlflow" in c for c in started) and not [c for c in started if "huey" in c or "jobs" in c], started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _session(leader: int) -> list[str]:
    """The command lines of the running processes in the session that ``leader`` started (from /proc)."""
    commands = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(process.name)) == leader:
                commands.append((process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # ended meanwhile
            continue
    return commands


def test_train_as_of_a_past_day_is_never_promoted_over_newer_data(trained, cli):
    """A backfill: trained on the data up to a day, judged on the windows before it, held back by the gate
    (the champion's twin may have seen its window). LIFECYCLE_AS_OF means the same."""
    folder, _ = trained
    result = cli("train", "--transactions", "data/transactions.csv", cwd=folder, env={"LIFECYCLE_AS_OF": "1998-03-31"})
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "judged on 1997-12-31..1998-03-31" in out
    assert ("version 2: held back as challenger (trained as of 1998-03-31, before the champion's data (up to "
            "1998-06-30): promote it by hand if it is meant to serve)") in out
    listed = " ".join(cli("models", cwd=folder).stdout.split())
    assert "│ 2 │ challenger │ held back │" in listed and "│ 1 │ champion │ promoted │" in listed


def _never_leaving(customers: int, seed: int = 0) -> pd.DataFrame:
    """Buyers who never drop out (Poisson purchases for two years) and order values with no difference between
    customers: BG/NBD's a and Pareto/NBD's beta run to their edges, and Gamma-Gamma's q runs off (pooled spend)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (rate, joined) in enumerate(zip(rng.gamma(0.8, 1 / 30, customers), rng.uniform(0, 365, customers),
                                           strict=True)):
        days = joined + np.cumsum(np.r_[0, rng.exponential(1 / rate, 400)])
        rows += [(f"c{i}", day) for day in days[days < 730]]
    orders = pd.DataFrame(rows, columns=["customer_id", "day"])
    return pd.DataFrame({"customer_id": orders.customer_id,
                         "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(orders.day, unit="D"),
                         "amount": rng.gamma(2, 20, len(orders)).round(2)})


@pytest.mark.parametrize("shop", ["never leaving", "one heavy buyer", "one day"])
def test_train_on_data_built_to_break_the_fits_ends_in_a_model_or_a_reason(shop, tmp_path, cli):
    orders = _never_leaving(600)
    if shop == "one heavy buyer":  # 5,000 orders over two years beside the rest
        minutes = np.sort(np.random.default_rng(1).uniform(0, 730 * 1440, 5000))
        orders = pd.concat([orders, pd.DataFrame({"customer_id": "heavy", "amount": 5.0,
                                                  "timestamp": pd.Timestamp("2024-01-01")
                                                  + pd.to_timedelta(minutes, unit="min")})])
    if shop == "one day":
        orders["timestamp"] = pd.Timestamp("2024-05-01 10:00")
    orders.to_csv(tmp_path / "orders.csv", index=False)
    result = cli("train", "--transactions", "orders.csv", cwd=tmp_path)
    out, err = " ".join(result.stdout.split()), " ".join(result.stderr.split())
    assert "Traceback" not in out + err
    if shop == "one day":
        assert result.returncode == 2
        assert err == ("error: the data span 2024-05-01..2024-05-01; the out-of-time protocol needs more than two "
                       "churn horizons (60 days): a shorter churn_horizon_days (now 30) needs less")
        return
    assert result.returncode == 0, err
    assert "version 1: promoted to champion (first model)" in out
    assert re.search(r"note: (BG/NBD|MBG/NBD|Pareto/NBD): (a|beta) at the edge of what the data identify", out)
    if shop == "never leaving":  # order values that do not differ between customers: the pooled spend model
        assert ("note: Gamma-Gamma: customers' mean order values differ no more than one customer's own orders do, so "
                "a pooled spend model serves") in out
        assert "outlier" not in out
        assert len(list(tmp_path.glob(".lifecycle/mlartifacts/**/fit_notes.txt"))) == 1  # logged with the run
