"""MLflow tracking, the model registry (aliases champion / challenger / previous) and the gate.

Every training run is logged (parameters, data summary, metrics, baselines, every candidate
purchase model's holdout metrics, plots, the pyfunc model and its evaluation twin, and each
feature's drift from the champion's training population) and registered as a new version of
``customer-lifecycle``, tagged with the purchase model it uses and what serves its churn
probability and its CLV (``purchase_model``, ``churn_source``, ``clv_source``) and whether it learned
little (``quality``). The gate scores the challenger and the current champion on the challenger's
cut dates: the champion through its evaluation twins, which saw nothing of those windows. The
challenger is promoted unless a gated metric is worse than the champion's beyond noise and by more
than the tolerance, or it is weak and the champion is not; the first model is promoted. Aliases
move only at the very end, so a failed run moves nothing.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils import logging_utils

from features.errors import LifecycleError
from features.sources import Dataset
from models import pyfunc
from models.lifecycle import MODEL_FORMAT, model_format
from training.backtest import Bootstrap, absolute_error, gini, roc_auc
from training.base import Base
from training.judging import EvaluationTwin, judge, track_record_rows
from training.tables import Sample
from training.train import TrainingResult

MODEL_NAME = "customer-lifecycle"
EXPERIMENT = "customer-lifecycle"
# Each served prediction's out-of-time metric (churn, next stage, CLV, purchases): the evaluation table it is computed
# from, its outcome and score columns, and the metric.
GATED = {"churn_roc_auc": ("churn", "churned", "served", roc_auc),
         "next_stage_roc_auc": ("next_stage", "reached", "probability", roc_auc),
         "clv_gini": ("value", "spend", "served", gini),
         "holdout_purchases_mae": ("holdout", "purchases", "predicted", absolute_error)}
TWIN_ARTIFACT = "evaluation/twin.pkl"
QUALITY_TAG = "quality"  # on a version: "weak" when it learned little (LifecycleModel.weaknesses), else "ok"
GATE_TAG = "gate_promoted"  # on a version: "True" or "False" once gated; INTERRUPTED if it never was
DECIDED = ("True", "False")
INTERRUPTED = "interrupted"
HOST_TAG, PID_TAG = "host", "pid"  # on a run: who logs it
PLOTS = "plots"
NOTES_ARTIFACT = "fit_notes.txt"  # what the BTYD fits needed (a penalizer) or found (parameters at an edge)
FORECAST_ARTIFACT = "forecast.csv"  # the base's totals over the CLV horizon with intervals (models.forecast)
TRACK_RECORD_ARTIFACT = "track_record.csv"  # what serves, per cut date, beside the baselines


def local_tracking_uri(state_dir: Path) -> str:
    """The default store: SQLite at an absolute path in the state folder."""
    return f"sqlite:///{(Path(state_dir) / 'mlflow.db').resolve()}"


def connect(tracking_uri: str, artifact_root: Path | None = None) -> MlflowClient:
    """Point MLflow (tracking and registry) at ``tracking_uri``; local artifacts under ``artifact_root``."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    if client.get_experiment_by_name(EXPERIMENT) is None:
        location = Path(artifact_root).resolve().as_uri() if artifact_root else None
        client.create_experiment(EXPERIMENT, artifact_location=location)
    mlflow.set_experiment(EXPERIMENT)
    return client


@dataclass
class Decision:
    """What the gate decided, and the numbers it decided on."""

    promote: bool
    challenger: dict[str, float]
    champion: dict[str, float] = field(default_factory=dict)
    champion_version: str | None = None
    reasons: list[str] = field(default_factory=list)


def record(result: TrainingResult, params: dict[str, object], summary: dict[str, object],
           drift: dict[str, float]) -> tuple[str, str]:
    """Log a training run (``drift``: each feature's PSI against the champion) and register its model,
    with five of its feature rows as the input example; returns (run id, version).

    The run is tagged with the host and process that log it, so that a later command can tell a run
    whose process died (``clean_interrupted``) from one still going.
    """
    with mlflow.start_run(tags={HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}) as run:
        mlflow.log_params({**params, **{f"data_{k}": v for k, v in summary.items()}})
        mlflow.log_metrics({f"drift_psi_{k}": v for k, v in drift.items()})
        mlflow.log_params({f"window_{k}": str(v) for k, v in vars(result.windows).items()})
        mlflow.log_params({"cut_dates": ", ".join(str(w.end) for w in result.cuts)})
        # Every cut date's metrics, as steps in time order: each metric's latest value is the newest cut date's.
        for step, evaluation in enumerate(reversed(result.backtest)):
            mlflow.log_metrics(evaluation.metrics, step=step)
            mlflow.log_metrics({f"baseline_{k}": v for k, v in evaluation.baselines.items()}, step=step)
            mlflow.log_metrics({f"next_stage_roc_auc_{k}": v for k, v in evaluation.next_stage_auc_by_stage.items()},
                               step=step)
        evaluation = result.evaluation
        mlflow.log_text(result.track_record.to_csv(index=False), TRACK_RECORD_ARTIFACT)
        mlflow.set_tags({f"decision_{k}": v for k, v in result.decisions.items()})
        mlflow.log_metrics({f"purchase_model_{name}_{k}": v for name, row in evaluation.purchase_models.iterrows()
                            for k, v in row.items()})
        mlflow.set_tags(choices := served_by(result))
        mlflow.log_params({"fitted_purchase_penalizer": result.model.purchases.penalizer,
                           "spend_model": "pooled" if result.model.spend.pooled_ else "gamma_gamma"})
        if result.notes:
            mlflow.log_text("\n".join(result.notes), NOTES_ARTIFACT)
        mlflow.log_text(result.forecast.to_csv(index=False), FORECAST_ARTIFACT)
        base = result.forecast.iloc[0]
        mlflow.log_metrics({f"forecast_{k}": float(base[k]) for k in base.index
                            if k.startswith(("purchases", "spend"))})
        with tempfile.TemporaryDirectory() as tmp:
            twin = Path(tmp) / Path(TWIN_ARTIFACT).name
            twin.write_bytes(pickle.dumps(result.twins))
            mlflow.log_artifact(str(twin), str(Path(TWIN_ARTIFACT).parent))
        from training.plots import figures  # matplotlib: here, not in the commands that only read the registry

        for name, figure in figures(result).items():
            mlflow.log_figure(figure, f"{PLOTS}/{name}.png")
        with _quiet_registration():
            info = pyfunc.log(result.model, result.features.head(5), registered_name=MODEL_NAME)
    version = str(info.registered_model_version)
    for key, value in choices.items():
        MlflowClient().set_model_version_tag(MODEL_NAME, version, key, value)
    return run.info.run_id, version


def served_by(result: TrainingResult) -> dict[str, str]:
    """What the model serves, as run and version tags: the purchase model, the sources of the churn probability and
    of the CLV, and its quality (``"weak"`` or ``"ok"``) with the reasons it is weak."""
    model = result.model
    return {"purchase_model": model.purchases.name, "churn_source": model.churn_source,
            "clv_source": model.clv_source, QUALITY_TAG: model.quality, "quality_reasons": "; ".join(model.weaknesses)}


def gate(client: MlflowClient, data: Dataset | Base, challenger: TrainingResult, tolerance: float) -> Decision:
    """Compare the challenger with the champion on the challenger's cut dates.

    At each cut date the champion is scored through its evaluation twin of the same rank (fitted no
    later, so it saw nothing of the window); each gated metric's difference is pooled over the cut
    dates with its noise (``training.backtest``). The challenger is held back only where it is worse
    beyond noise and by more than ``tolerance`` (relative); a tie promotes it (it has seen the newest
    data). A challenger trained on older data than the champion (a backfill: ``train --as-of``) is held
    back: the champion's twins may have seen its windows, so no fair comparison exists. The champion is judged on the
    challenger's judged customers, where ``data`` (or the ``Base`` of a shop on Spark) has them.
    """
    ours = _pooled_gated(challenger.backtest)
    champion = alias_version(client, "champion")
    if champion is None:
        first = "first model" + (" (weak, but a shop needs scores)" if challenger.model.weaknesses else "")
        return Decision(True, ours, reasons=[first])
    registered = client.get_model_version(MODEL_NAME, champion)
    run = client.get_run(registered.run_id)
    champion_end = run.data.params.get("window_end")
    if champion_end and challenger.windows.end < date.fromisoformat(champion_end):
        return Decision(False, ours, champion_version=champion,
                        reasons=[f"trained as of {challenger.windows.end}, before the champion's data "
                                 f"(up to {champion_end}): promote it by hand if it is meant to serve"])
    if challenger.model.weaknesses and registered.tags.get(QUALITY_TAG) != "weak":
        return Decision(False, ours, champion_version=champion,
                        reasons=[f"weak ({'; '.join(challenger.model.weaknesses)}), and the champion (version "
                                 f"{champion}) is not"])
    twins = _load_twins(client, champion)
    if not isinstance(twins, list) or model_format(twins[0]) != MODEL_FORMAT:  # an older release's champion
        return Decision(True, ours, champion_version=champion,
                        reasons=[f"the champion (version {champion}) was saved by an older, incompatible release"])
    ranks = min(len(twins), len(challenger.backtest))
    judged = Sample(challenger.judged_share)  # the challenger's judged customers
    theirs_by_cut = judge(data if isinstance(data, Base) else Base(data), twins[:ranks], challenger.cuts[:ranks],
                          challenger.model.horizons, judged)
    ours_by_cut = challenger.backtest[:ranks]
    ours, theirs = _pooled_gated(ours_by_cut), _pooled_gated(theirs_by_cut)
    bootstrap, reasons = Bootstrap(), []
    for name, (table, outcome, score, metric) in GATED.items():
        pairs = []
        for mine, their in zip(ours_by_cut, theirs_by_cut, strict=True):
            both = getattr(mine, table).merge(getattr(their, table), on="customer_id", suffixes=("", "_champion"))
            pairs.append((both.customer_id, both[outcome], both[score], both[f"{score}_champion"]))
        difference = bootstrap.difference(metric, pairs)
        slack = tolerance * abs(theirs[name])
        if difference.verdict == "worse" and abs(ours[name] - theirs[name]) > slack:
            reasons.append(f"{name} {ours[name]:.4f} is worse than the champion's {theirs[name]:.4f} beyond noise "
                           f"({difference} over {difference.cuts} cut date(s))")
    return Decision(not reasons, ours, theirs, champion, reasons)


def _pooled_gated(evaluations: list) -> dict[str, float]:
    """Each gated metric's mean over the cut dates of ``evaluations``."""
    return {name: float(np.mean([e.metrics[name] for e in evaluations])) for name in GATED}


def conclude(client: MlflowClient, version: str, decision: Decision) -> None:
    """Write the decision on the version and move the aliases accordingly."""
    for key, value in {GATE_TAG: decision.promote, "gate_reasons": "; ".join(decision.reasons),
                       "gate_champion_version": decision.champion_version or "",
                       **{f"gate_challenger_{k}": v for k, v in decision.challenger.items()},
                       **{f"gate_champion_{k}": v for k, v in decision.champion.items()}}.items():
        client.set_model_version_tag(MODEL_NAME, version, key, str(value))
    if decision.promote:
        promote(client, version)
    else:
        client.set_registered_model_alias(MODEL_NAME, "challenger", version)


def promote(client: MlflowClient, version: str, force: bool = False) -> None:
    """Make ``version`` the champion; the one it replaces becomes ``previous``. A version without a gate
    decision (its training was interrupted) is refused unless ``force``."""
    try:
        found = client.get_model_version(MODEL_NAME, str(version))
    except MlflowException:
        raise LifecycleError(f"{MODEL_NAME} has no version {str(version)!r}") from None
    if found.tags.get(GATE_TAG) not in DECIDED and not force:
        raise LifecycleError(f"version {version} has no gate decision (its training was interrupted before the "
                             "gate): promote it with --force if you have checked it")
    current = alias_version(client, "champion")  # read now, just before the move
    if current is not None and current != str(version):
        client.set_registered_model_alias(MODEL_NAME, "previous", current)
    client.set_registered_model_alias(MODEL_NAME, "champion", str(version))


def rollback(client: MlflowClient) -> str:
    """Swap ``champion`` and ``previous``; returns the version that is champion now."""
    previous = alias_version(client, "previous")
    if previous is None:
        raise LifecycleError("there is no previous champion to roll back to")
    promote(client, previous)
    return previous


def clean_interrupted(client: MlflowClient, exclusive: bool) -> list[str]:
    """Mark what a killed ``train`` left behind; returns one line per thing marked.

    A run still ``RUNNING`` is ended as ``FAILED`` when its process is gone: every such run when
    the caller holds the store's lock (``exclusive``: runs are logged only under it), else one
    started on this host by a process that no longer exists (runs of other hosts are left to
    them). A registered version with no gate decision whose run is not running is tagged
    ``gate_promoted = interrupted`` (``promote`` refuses it unless forced).
    """
    experiment = client.get_experiment_by_name(EXPERIMENT)
    lines = []
    if experiment is not None:
        running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        for run in running:
            tags = run.data.tags
            gone = exclusive or (tags.get(HOST_TAG) == socket.gethostname()
                                 and not _alive(int(tags.get(PID_TAG, "0"))))
            if gone:
                client.set_tag(run.info.run_id, "interrupted", "true")
                client.set_terminated(run.info.run_id, "FAILED")
                lines.append(f"run {run.info.run_id} was interrupted (its process is gone): marked FAILED")
    for version in client.search_model_versions(f"name='{MODEL_NAME}'"):
        if GATE_TAG in version.tags:
            continue
        if client.get_run(version.run_id).info.status != "RUNNING":
            client.set_model_version_tag(MODEL_NAME, version.version, GATE_TAG, INTERRUPTED)
            lines.append(f"version {version.version} was registered but never gated: tagged {INTERRUPTED}")
    return lines


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def track_record(client: MlflowClient, version: str) -> tuple[list[dict], dict[str, str]]:
    """A version's track record (one row per cut date, as ``TrainingResult.track_record``) and its run's decisions
    (empty for versions trained before they were recorded)."""
    run = client.get_run(client.get_model_version(MODEL_NAME, version).run_id)
    decisions = {k.removeprefix("decision_"): v for k, v in run.data.tags.items() if k.startswith("decision_")}
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{TRACK_RECORD_ARTIFACT}")
    except MlflowException:
        return [], decisions
    return track_record_rows(pd.read_csv(io.StringIO(text), dtype={"cut": str})), decisions


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered version as ``lifecycle models`` lists it."""

    version: str
    aliases: list[str]
    gate: str  # promoted, held back, interrupted or not yet
    tags: dict[str, str]  # the version's: quality, purchase_model, churn_source, clv_source, ...
    metrics: dict[str, float]  # its run's latest values (the newest cut date's)
    created: datetime


def list_versions(client: MlflowClient) -> list[RegisteredVersion]:
    """Every registered version, newest first."""
    found = client.search_model_versions(f"name='{MODEL_NAME}'")
    listed = []
    for number in sorted((int(v.version) for v in found), reverse=True):
        version = client.get_model_version(MODEL_NAME, str(number))  # search leaves aliases out
        gate = {"True": "promoted", "False": "held back", INTERRUPTED: "interrupted"}.get(
            version.tags.get(GATE_TAG, ""), "not yet")
        listed.append(RegisteredVersion(str(version.version), list(version.aliases), gate, dict(version.tags),
                                        client.get_run(version.run_id).data.metrics,
                                        datetime.fromtimestamp(version.creation_timestamp / 1000)))
    return listed


def alias_version(client: MlflowClient, alias: str) -> str | None:
    """The version an alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def drift_from_champion(client: MlflowClient, features: pd.DataFrame) -> dict[str, float]:
    """Each feature's PSI in ``features`` against the population the champion was fitted on, largest
    first (none without a champion, or for one registered before drift checks)."""
    champion = alias_version(client, "champion")
    try:
        profile = pyfunc.load(f"models:/{MODEL_NAME}/{champion}").model.profile if champion else None
    except pyfunc.IncompatibleModel:  # an older release's champion
        return {}
    return profile.psi(profile.counts(features)) if profile is not None else {}


@contextmanager
def _quiet_registration() -> Iterator[None]:
    """MLflow prints "Successfully registered model ..." and "Created version ..." on every registration, whatever
    its logging level: news to no one, since the command says which version it made."""
    logging_utils.disable_logging()
    try:
        yield
    finally:
        logging_utils.enable_logging()


def _load_twins(client: MlflowClient, version: str) -> list[EvaluationTwin] | None:
    """A version's evaluation twins; None where a release whose classes lived elsewhere saved them."""
    run_id = client.get_model_version(MODEL_NAME, version).run_id
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TWIN_ARTIFACT)
    try:
        return pickle.loads(Path(path).read_bytes())
    except (AttributeError, ModuleNotFoundError):  # a class it names has moved or gone since
        return None
