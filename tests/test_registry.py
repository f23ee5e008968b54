"""The registry and the promotion gate against a real MLflow store (SQLite), on CDNOW."""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import pytest

from features.errors import LifecycleError
from models import pyfunc
from training import registry
from training.train import TrainingConfig, train

PLOTS = ["expected_purchases_matrix", "p_alive_matrix", "calibration_vs_holdout_purchases", "churn_reliability",
         "churn_roc", "churn_pr", "churn_cumulative_gain", "clv_deciles", "interval_coverage", "feature_importance"]
BROKEN = {"min_data_in_leaf": 1_000_000}  # larger than the data: no tree can split


def run_once(client, data, result=None, **options):
    """What `lifecycle train` does: train (or take a run's result again), log and register, gate, then move the
    aliases."""
    result = result or train(data, TrainingConfig(**options))
    drift = registry.drift_from_champion(client, result.features)
    _, version = registry.record(result, params={"seed": 0}, summary={"rows": 69_659}, drift=drift)
    decision = registry.gate(client, data, result, tolerance=0.01)
    registry.conclude(client, version, decision)
    return version, decision


def test_gate_promotes_protects_and_rolls_back(cdnow_run, tmp_path, monkeypatch):
    client = registry.connect(registry.local_tracking_uri(tmp_path), tmp_path / "artifacts")
    assert registry.local_tracking_uri(tmp_path).startswith("sqlite:////")
    data, trained = cdnow_run  # the crash and the rerun below log the same result again

    first, decision = run_once(client, data, trained)
    assert decision.promote and decision.reasons == ["first model"]
    assert registry.alias_version(client, "champion") == first
    run_id = client.get_model_version(registry.MODEL_NAME, first).run_id
    plots = {a.path: a for a in client.list_artifacts(run_id, registry.PLOTS)}
    assert set(plots) == {f"{registry.PLOTS}/{name}.png" for name in PLOTS}
    for path in plots:
        png = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    weak, decision = run_once(client, data, classifier_params=BROKEN)
    # classifiers that cannot split: the churn probability falls back to the purchase model's, so it is no
    # worse than the champion's, but the next-stage probability is, and the gate holds the version back
    assert decision.challenger["churn_roc_auc"] >= decision.champion["churn_roc_auc"] * 0.99
    assert not decision.promote and [r.split()[0] for r in decision.reasons] == ["next_stage_roc_auc"]
    assert decision.champion["next_stage_roc_auc"] > decision.challenger["next_stage_roc_auc"] * 1.01
    assert registry.alias_version(client, "champion") == first
    assert registry.alias_version(client, "challenger") == weak
    tags = client.get_model_version(registry.MODEL_NAME, weak).tags
    assert tags["gate_promoted"] == "False" and tags["gate_champion_version"] == first
    assert tags["churn_source"] == "btyd" and tags["purchase_model"] in ("bgnbd", "mbgnbd", "pareto_nbd")
    candidates = client.get_run(client.get_model_version(registry.MODEL_NAME, weak).run_id).data.metrics
    assert {f"purchase_model_{m}_holdout_log_likelihood" for m in ("bgnbd", "mbgnbd", "pareto_nbd")} <= set(candidates)
    # the same data as the champion's: every feature's drift is logged, and none moved
    metrics = client.get_run(client.get_model_version(registry.MODEL_NAME, weak).run_id).data.metrics
    drift = {name: value for name, value in metrics.items() if name.startswith("drift_psi_")}
    assert len(drift) > 20 and set(drift.values()) == {0.0}
    assert not any(name.startswith("drift_psi_") for name in client.get_run(run_id).data.metrics)  # the first

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    with monkeypatch.context() as patch:  # a run that dies after registering, before the gate decides
        patch.setattr(registry, "judge", crash)
        with pytest.raises(RuntimeError, match="killed mid-run"):
            run_once(client, data, trained)
    assert registry.alias_version(client, "champion") == first

    again, decision = run_once(client, data, trained)  # the same model again: not worse, so promoted
    assert decision.promote and decision.champion == pytest.approx(decision.challenger, rel=1e-9)
    assert registry.alias_version(client, "champion") == again
    assert registry.alias_version(client, "previous") == first

    assert registry.rollback(client) == first
    assert (registry.alias_version(client, "champion"), registry.alias_version(client, "previous")) == (first, again)
    champion = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@champion")
    scores = champion.predict(champion.input_example)
    assert len(scores) == 5 and scores.churn_probability.between(0, 1).all()
    listed = registry.list_versions(client)  # what `lifecycle models` shows: newest first, the four runs
    assert [v.version for v in listed] == [again, str(int(again) - 1), weak, first]
    assert [v.gate for v in listed] == ["promoted", "not yet", "held back", "promoted"]
    assert [v.aliases for v in listed] == [["previous"], [], ["challenger"], ["champion"]]
    assert listed[-1].metrics["churn_roc_auc"] == client.get_run(run_id).data.metrics["churn_roc_auc"]


def test_rollback_without_a_previous_champion_is_a_clear_error(tmp_path):
    client = registry.connect(registry.local_tracking_uri(tmp_path))
    with pytest.raises(LifecycleError, match="no previous champion"):
        registry.rollback(client)


def test_a_champion_from_an_older_release_is_replaced_not_compared(cdnow_run, tmp_path):
    """A model saved before model formats were recorded cannot be loaded for scoring (a clear error), gives no
    drift, and the gate promotes a new version over it with the reason instead of failing."""
    data, result = cdnow_run
    client = registry.connect(registry.local_tracking_uri(tmp_path), tmp_path / "artifacts")
    old = copy.deepcopy(result)
    del old.model.model_format
    object.__delattr__(old.twin, "model_format")  # (frozen) as an older release pickled it
    _, version = registry.record(old, params={}, summary={}, drift={})
    registry.conclude(client, version, registry.Decision(True, {}))
    with pytest.raises(pyfunc.IncompatibleModel, match=r"older release of customer-lifecycle \(model format 1"):
        pyfunc.load(f"models:/{registry.MODEL_NAME}/{version}")
    assert registry.drift_from_champion(client, result.features) == {}
    decision = registry.gate(client, data, result, tolerance=0.01)
    assert decision.promote and decision.reasons == [
        f"the champion (version {version}) was saved by an older, incompatible release"]


def test_twins_whose_classes_have_moved_are_an_older_release(cdnow_run, tmp_path):
    """Evaluation twins pickled where their class no longer is (``training.train.EvaluationTwin`` before
    2026-12-07) are an older release's: the gate promotes over them with the reason instead of failing."""
    data, result = cdnow_run
    client = registry.connect(registry.local_tracking_uri(tmp_path), tmp_path / "artifacts")
    run_id, version = registry.record(result, params={}, summary={}, drift={})
    registry.conclude(client, version, registry.Decision(True, {}))
    (twins,) = [p for p in (tmp_path / "artifacts").rglob("twin.pkl") if run_id in p.parts]
    twins.write_bytes(b"ctraining.train\nEvaluationTwin\n.")  # a pickle of the class at its old place
    decision = registry.gate(client, data, result, tolerance=0.01)
    assert decision.promote and decision.reasons == [
        f"the champion (version {version}) was saved by an older, incompatible release"]


def test_a_weak_version_never_replaces_a_champion_that_is_not(cdnow_run, tmp_path):
    """A first version is promoted weak or not (a shop needs scores); after that, a weak challenger is held back
    over a champion that is not weak, and judged on its numbers against one that is."""
    data, result = cdnow_run
    client = registry.connect(registry.local_tracking_uri(tmp_path), tmp_path / "artifacts")
    weak = copy.deepcopy(result)
    weak.model.weaknesses = ["churn is no better than recency alone over 3 cut date(s)"]
    assert result.model.quality == "ok" and weak.model.quality == "weak"
    decision = registry.gate(client, data, weak, tolerance=0.01)
    assert decision.promote and decision.reasons == ["first model (weak, but a shop needs scores)"]

    _, sound = registry.record(result, params={}, summary={}, drift={})
    registry.conclude(client, sound, registry.Decision(True, {}))
    assert client.get_model_version(registry.MODEL_NAME, sound).tags[registry.QUALITY_TAG] == "ok"
    decision = registry.gate(client, data, weak, tolerance=0.01)
    assert not decision.promote and decision.reasons == [
        f"weak (churn is no better than recency alone over 3 cut date(s)), and the champion (version {sound}) is not"]

    _, also_weak = registry.record(weak, params={}, summary={}, drift={})
    tags = client.get_model_version(registry.MODEL_NAME, also_weak).tags
    assert tags[registry.QUALITY_TAG] == "weak" and tags["quality_reasons"] == weak.model.weaknesses[0]
    registry.conclude(client, also_weak, registry.Decision(True, {}))
    decision = registry.gate(client, data, weak, tolerance=0.01)  # the same numbers as the weak champion's
    assert decision.promote and decision.reasons == []
