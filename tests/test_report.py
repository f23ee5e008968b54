"""`lifecycle report`: every KPI table against an independent pandas computation on the simulated shop (which
has channels, costs, NPS and CSAT), what CDNOW lacks said instead of numbers, and the HTML page opened in a
real headless Chromium: every section rendered, no console error, the numbers on the page those of the tables."""

from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from features.build import STAGES
from serving.batch import score_batch
from serving.report import ACT_FIRST, COHORT_MONTHS, COLUMNS, FORMATS, build_report
from tests.helpers import load
from training.train import train


@pytest.fixture(scope="module")
def reported(shop, tmp_path_factory):
    """The simulated shop trained, scored and reported on; its data, model, scores and report."""

    data = load(transactions=shop.transactions, events=shop.events, customers=shop.customers)
    run = train(data)
    folder = tmp_path_factory.mktemp("report")
    score_batch(run.model, data, run.windows.end, folder / "scores.parquet")
    built = build_report(data, run.model, folder / "scores.parquet", folder)
    scores = pd.read_parquet(folder / "scores.parquet").astype({"customer_id": str})
    return data, run, scores, built


def table(built, name: str) -> pd.DataFrame:
    return pd.read_csv(built.tables[name], dtype={"customer_id": str, "cohort": str})


def test_funnel_counts_stages_and_who_moved_up(reported):
    data, run, scores, built = reported
    funnel = table(built, "funnel").set_index("stage")
    assert list(funnel.index) == list(STAGES)
    now = scores.stage.value_counts().reindex(STAGES, fill_value=0)
    assert funnel.customers.tolist() == now.tolist()
    reached = now[::-1].cumsum()[::-1]
    assert funnel.reached.tolist() == reached.tolist()
    np.testing.assert_allclose(funnel.conversion_from_previous[1:], (reached / reached.shift())[1:])
    rank = {stage: i for i, stage in enumerate(STAGES)}
    earlier = built.as_of - timedelta(days=run.model.horizons.churn_days)
    before = run.model.builder.transform(data, earlier).df().astype({"customer_id": str})
    moved = before.merge(scores[["customer_id", "stage"]], on="customer_id", suffixes=("", "_now"))
    moved["up"] = moved.stage_now.map(rank) > moved.stage_rank
    share = moved.groupby("stage").up.mean().reindex(STAGES[:-1])
    np.testing.assert_allclose(funnel.moved_up_since[:-1], share, rtol=1e-12)
    assert funnel.in_it_window_ago.sum() == len(before) and funnel.moved_up_since.iloc[2:4].between(0.01, 1).all()


def test_cohorts_and_their_retention_match_pandas(reported, shop):
    _, _, _, built = reported
    orders = shop.transactions[shop.transactions.timestamp < pd.Timestamp(built.as_of) + timedelta(days=1)]
    orders = orders.assign(day=orders.timestamp.dt.normalize(), month=orders.timestamp.dt.to_period("M"))
    first = orders.groupby("customer_id").month.min().rename("cohort")
    days = orders.groupby("customer_id").day.nunique()
    expected = pd.DataFrame({"customers": first.value_counts().sort_index(),
                             "repeat_rate": (days > 1).groupby(first).mean()})
    cohorts = table(built, "cohorts").set_index("cohort")
    assert list(cohorts.index) == [str(p) for p in expected.index] and len(cohorts) > 12
    assert cohorts.customers.tolist() == expected.customers.tolist()
    np.testing.assert_allclose(cohorts.repeat_rate, expected.repeat_rate, rtol=1e-12)
    ordered = orders.join(first, on="customer_id")
    ordered["k"] = (ordered.month - ordered.cohort).apply(lambda offset: offset.n)
    active = ordered.drop_duplicates(["customer_id", "k"]).groupby(["cohort", "k"]).size()
    retention = table(built, "cohort_retention")
    assert retention.months_since_first.between(1, COHORT_MONTHS).all()
    for row in retention.sample(40, random_state=0).itertuples():
        n = active.get((pd.Period(row.cohort, "M"), row.months_since_first), 0)
        assert row.ordering == n and row.retention == pytest.approx(n / expected.customers[pd.Period(row.cohort)])
    # every month a cohort has lived through is there, and none it has not
    last = pd.Period(built.as_of, "M")
    lived = sum(min(COHORT_MONTHS, (last - cohort).n) for cohort in expected.index)
    assert len(retention) == lived


def test_channels_value_against_acquisition_cost(reported, shop):
    _, _, scores, built = reported
    known = shop.customers[shop.customers.signup_date < pd.Timestamp(built.as_of) + timedelta(days=1)]
    merged = known.astype({"customer_id": str}).merge(scores, on="customer_id")
    merged["value"] = merged.total_spend.fillna(0) + merged.clv.fillna(0)
    merged["months"] = (pd.Timestamp(built.as_of) - merged.signup_date.dt.normalize()).dt.days.clip(lower=1) / (
        365.25 / 12)
    by = merged.groupby("acquisition_channel")
    expected = pd.DataFrame({"customers": by.size(), "buyers": by.frequency.count(),
                             "cac": by.acquisition_cost.mean(), "clv": by.value.mean()})
    expected["clv_to_cac"] = (expected.clv / expected.cac).replace(np.inf, np.nan)  # undefined for a free channel
    expected["payback_months"] = expected.cac / (by.total_spend.sum() / by.months.sum())
    channels = table(built, "channels").set_index("channel").loc[expected.index]
    assert len(channels) == shop.customers.acquisition_channel.nunique() >= 4
    assert channels.customers.tolist() == expected.customers.tolist()
    assert channels.buyers.tolist() == expected.buyers.tolist()
    for column in ("cac", "clv", "clv_to_cac", "payback_months"):
        np.testing.assert_allclose(channels[column], expected[column], rtol=1e-9, err_msg=column)
    assert (channels.below_3_to_1 == (expected.clv_to_cac < 3)).all() and expected.clv_to_cac.isna().sum() == 1
    ranked = table(built, "channels").clv_to_cac  # best first, the undefined last
    assert ranked.dropna().is_monotonic_decreasing and pd.isna(ranked.iloc[-1])


def test_nps_and_csat_by_stage_and_segment(reported, shop):
    _, _, scores, built = reported
    events = shop.events[shop.events.timestamp < pd.Timestamp(built.as_of) + timedelta(days=1)]
    satisfaction = table(built, "satisfaction")
    assert set(satisfaction.grouped_by) == {"stage", "segment"}
    for kind, column, good in (("nps", "nps", None), ("csat", "csat", 4)):
        answers = events[events.event_type == kind].sort_values("timestamp").groupby("customer_id").value.last()
        answers.index = answers.index.astype(str)
        people = scores.set_index("customer_id").join(answers.rename("answer"), how="inner")
        assert len(people) > 200
        for grouped_by, key in (("stage", people.stage), ("segment", people.rfm_segment.fillna("(no purchase)"))):
            if good is None:  # NPS: promoters minus detractors, in points
                expected = 100 * ((people.answer >= 9).groupby(key).mean() - (people.answer <= 6).groupby(key).mean())
            else:
                expected = 100 * (people.answer >= good).groupby(key).mean()
            got = satisfaction[satisfaction.grouped_by == grouped_by].set_index("group")[column].dropna()
            np.testing.assert_allclose(got.sort_index(), expected.sort_index(), rtol=1e-9, err_msg=f"{kind} {key.name}")


def test_value_at_risk_and_whom_to_act_on_first(reported):
    _, _, scores, built = reported
    bands = table(built, "value_at_risk").set_index("churn_risk")
    assert list(bands.index) == ["high", "medium", "low"]
    by = scores.groupby("churn_risk")
    np.testing.assert_allclose(bands.clv, by.clv.sum().reindex(bands.index), rtol=1e-9)
    assert bands.customers.tolist() == by.size().reindex(bands.index).tolist()
    assert built.headline["value_at_risk"] == pytest.approx(bands.clv["high"])
    first = table(built, "act_first")
    candidates = scores[scores.churn_risk.isin(["medium", "high"]) & (scores.activity_status != "churned")
                        & (scores.clv > 0)]
    expected = (candidates.clv * candidates.churn_probability).sort_values(ascending=False).head(ACT_FIRST)
    assert len(first) == ACT_FIRST
    np.testing.assert_allclose(first.value_at_risk, expected.to_numpy(), rtol=1e-9)
    assert set(first.customer_id) == set(candidates.loc[expected.index, "customer_id"])


@pytest.fixture(scope="module")
def cdnow_reported(cdnow_run, tmp_path_factory):
    """CDNOW's champion-style run, scored and reported on (no customer table, no events)."""
    data, run = cdnow_run
    folder = tmp_path_factory.mktemp("cdnow_report")
    score_batch(run.model, data, run.windows.end, folder / "scores.parquet")
    built = build_report(data, run.model, folder / "scores.parquet", folder)
    return data, run, pd.read_parquet(folder / "scores.parquet").astype({"customer_id": str}), built


def test_cdnow_report_says_what_it_cannot_show(cdnow_reported, cdnow_master):
    _, _, _, built = cdnow_reported
    assert set(built.missing) == {"channels", "satisfaction"} and "channels" not in built.tables
    cohorts = table(built, "cohorts")
    first = cdnow_master.groupby("customer_id").timestamp.min().dt.to_period("M").value_counts().sort_index()
    assert cohorts.cohort.tolist() == ["1997-01", "1997-02", "1997-03"] == [str(p) for p in first.index]
    assert cohorts.customers.tolist() == first.tolist() and cohorts.customers.sum() == 23_570
    page = built.html.read_text()
    assert "No numbers: the customer table has no acquisition channels" in page
    assert "No numbers: no event carries an NPS or CSAT answer" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


# How far a shown number may be from the table's: half its last digit (money whole, percentages to 0.1 %, ...).
SHOWN_TO = {"money": 0.5, "percent": 0.0005, "ratio": 0.05, "fraction": 0.005, "score": 0.0005, None: 0.005}


def _parse(text: str) -> float | str | None:
    """A cell as the page shows it, back to a value: '-' is missing, '1,234.5' and '12.3%' are numbers."""
    if text == "-":
        return None
    plain = text.replace(",", "")
    try:
        return float(plain[:-1]) / 100 if plain.endswith("%") else float(plain)
    except ValueError:
        return text


@pytest.mark.parametrize("which", ["simulated", "cdnow"])
def test_the_page_in_a_real_browser(which, request, tmp_path):
    """Headless Chromium opens the file: every section rendered with its plot (or, on CDNOW, the reason it has
    none), no console error, and every number on the page equal (to the digits shown) to its table."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium is needed (make test installs it)"
    _, _, scores, built = request.getfixturevalue("reported" if which == "simulated" else "cdnow_reported")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        problems = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: problems.append(request.url) if not request.url.startswith(
            ("file:", "data:")) else None)  # self-contained: nothing fetched
        page.goto(built.html.as_uri())
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        sections = page.eval_on_selector_all("section", "s => s.map(e => [e.id, e.offsetHeight])")
        images = page.eval_on_selector_all("img", "i => i.map(e => [e.alt, e.complete && e.naturalWidth])")
        cells = {name: page.eval_on_selector_all(
            f"table[data-table='{name}'] tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
            for name in COLUMNS}
        kpis = dict(page.eval_on_selector_all("[data-kpi]", "k => k.map(e => [e.dataset.kpi, e.innerText])"))
        browser.close()
    assert problems == []
    assert [name for name, _ in sections] == ["overview", "funnel", "cohorts", "channels", "satisfaction",
                                              "value_at_risk", "act_first", "track_record"]
    assert all(height > 50 for _, height in sections)
    assert len(images) == 4 - ("channels" in built.missing) and all(width > 100 for _, width in images), images
    assert (tmp_path / "report.png").stat().st_size > 50_000
    assert set(built.missing) == ({"channels", "satisfaction"} if which == "cdnow" else set())
    assert _parse(kpis["customers"]) == len(scores) and _parse(kpis["active"]) == (
        scores.activity_status == "active").sum()
    assert _parse(kpis["clv"]) == pytest.approx(scores.clv.sum(), abs=0.5)
    for name, columns in COLUMNS.items():
        if name in built.missing:
            assert cells[name] == [], name
            continue
        expected = table(built, name)
        assert len(cells[name]) == len(expected) > 0, name
        for shown, (_, row) in zip(cells[name], expected.iterrows(), strict=True):
            for text, column in zip(shown, columns, strict=True):
                value, truth = _parse(text), row[column]
                if pd.isna(truth):
                    assert value is None, (name, column)
                elif isinstance(value, str):
                    assert value == str(truth), (name, column)
                else:  # to the digits shown
                    assert value == pytest.approx(float(truth), abs=SHOWN_TO[FORMATS.get(column)]), (
                        name, column, text, truth)
