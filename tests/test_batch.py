"""Batch scoring: chunks change nothing, a customer list is honoured to the last id, bad rows are kept."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pandas as pd
import pytest

from features.errors import LifecycleError
from serving.batch import load_customer_list, score_batch
from tests.helpers import load


def expected_records(model, data, as_of, population=None) -> pd.DataFrame:
    records = model.predict(model.builder.transform(data, as_of, population).df())
    return records.sort_values("customer_id", ignore_index=True)


def test_scoring_in_chunks_gives_the_records_of_one_call(cdnow_run, tmp_path):
    data, run = cdnow_run
    model = replace(run.model, version="7")
    progress = []
    batch = score_batch(model, data, run.windows.end, tmp_path / "scores.parquet", chunk_rows=5_000,
                        on_chunk=lambda done, total: progress.append((done, total)))
    assert batch.scored == 23_570 and batch.rejects is None
    assert progress[-1] == (23_570, 23_570) and len(progress) == 5
    scores = pd.read_parquet(tmp_path / "scores.parquet").sort_values("customer_id", ignore_index=True)
    scores["as_of"] = pd.to_datetime(scores["as_of"])  # a Parquet date comes back as a Python date
    pd.testing.assert_frame_equal(scores, expected_records(model, data, run.windows.end), check_dtype=False)
    # the population the model was fitted on, on the day it was fitted: no feature moved
    drift = pd.read_csv(batch.drift_file)
    assert set(drift.feature) == set(model.profile.expected) and (drift.psi == 0).all() and batch.drift


def test_scoring_everyone_later_measures_drift(cdnow_run, tmp_path):
    data, run = cdnow_run
    later = run.windows.end + timedelta(days=365)  # a year with no orders: every buyer a year older
    batch = score_batch(run.model, data, later, tmp_path / "scores.parquet")
    assert batch.drift["recency_days"] > 1 and batch.drift["recency_gaps"] > 1  # nearly every customer moved bins
    assert batch.drift["total_spend"] == 0 and batch.drift["orders"] == 0  # what was bought stays the same


def test_a_customer_list_scores_exactly_its_ids_and_prospects_without_history(cdnow_run, tmp_path):
    data, run = cdnow_run
    pd.DataFrame({"customer_id": ["00005", "00001", "99999", "00005", " "]}).to_csv(tmp_path / "list.csv",
                                                                                    index=False)
    assert load_customer_list(data, tmp_path / "list.csv") == 3
    batch = score_batch(run.model, data, run.windows.end, tmp_path / "some.csv", customer_list=True)
    assert (batch.scored, batch.without_history) == (3, 1)
    assert batch.drift == {} and batch.drift_file is None and not (tmp_path / "some.drift.csv").exists()
    scores = pd.read_csv(tmp_path / "some.csv", dtype={"customer_id": str}).set_index("customer_id")
    assert sorted(scores.index) == ["00001", "00005", "99999"]
    unknown = scores.loc["99999"]
    assert unknown.stage == "awareness" and pd.isna(unknown.p_alive) and pd.isna(unknown.clv)
    assert 0 <= unknown.churn_probability <= 1 and unknown.next_stage == "consideration"
    # a record resting on nothing says so, and gets no risk band that would read as a judgement of the customer
    assert unknown.evidence == "none" and pd.isna(unknown.churn_risk) and pd.isna(unknown.activity_status)
    assert scores.loc["00001", "evidence"] in ("one purchase", "repeat buyer")
    # the listed customers with history get exactly their rows of the full table
    everyone = expected_records(run.model, data, run.windows.end).set_index("customer_id")
    for known in ("00001", "00005"):
        assert scores.loc[known, "clv"] == pytest.approx(everyone.loc[known, "clv"], rel=1e-12)
        assert scores.loc[known, "churn_probability"] == pytest.approx(everyone.loc[known, "churn_probability"])


def test_rejected_rows_are_written_with_their_reasons(cdnow_run, cdnow_master, tmp_path):
    _, run = cdnow_run
    orders = cdnow_master.head(2000).astype({"amount": object})
    orders.loc[[3, 7], "amount"] = [-5.0, "lots"]
    data = load(transactions=orders.astype({"amount": str}))
    batch = score_batch(run.model, data, run.windows.end, tmp_path / "scores.parquet")
    rejects = pd.read_parquet(batch.rejects)
    assert sorted(rejects.reason) == ["negative amount", "unparseable amount"]
    report = data.report["transactions"]
    assert report.rows == 2000 == report.valid + len(rejects)
    assert batch.scored == data.customers_count()


def test_ids_of_another_type_are_a_clear_error(tmp_path):
    data = load(transactions=pd.DataFrame({"customer_id": [1, 2], "timestamp": ["2024-01-01", "2024-01-02"],
                                           "amount": [1.0, 2.0]}))
    pd.DataFrame({"customer_id": ["1", "abc"]}).to_csv(tmp_path / "list.csv", index=False)
    with pytest.raises(LifecycleError, match=r"ids like \['abc'\] are not of the order log's id type \(BIGINT\)"):
        load_customer_list(data, tmp_path / "list.csv")
