"""`lifecycle report`: every KPI table and audience against an independent pandas computation on the simulated shop
(which has channels, costs, NPS and CSAT), the forecast against training's, what CDNOW lacks said instead of
numbers (with the input that would fill it), and the HTML page opened in a real headless Chromium: the contents
and every section rendered, units on the headings, no console error, nothing fetched, the numbers on the page those
of the tables, the cohort heatmap's cells and blanks, the audiences linked and counted."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from features.build import STAGES
from features.rfm import SEGMENTS
from serving.audiences import AUDIENCES, NO_PURCHASE, SEGMENT_ACTIONS, TOP_TIERS
from serving.batch import score_batch
from serving.report import ACT_FIRST, COHORT_MONTHS, TOP_CUSTOMERS, build_report
from serving.report_page import COLUMNS, FORMATS, SECTIONS
from tests.helpers import load
from training.train import train


@pytest.fixture(scope="module")
def reported(shop, tmp_path_factory):
    """The simulated shop (amounts in EUR) trained, scored and reported on; its data, model, scores and report."""

    data = load(transactions=shop.transactions, events=shop.events, customers=shop.customers, currency="EUR")
    run = train(data)
    folder = tmp_path_factory.mktemp("report")
    return (data, run, *report_at(run, data, run.windows.end, folder))


def report_at(run, data, day, folder):
    """Every customer scored at ``day`` and the report on them in ``folder``: the scores and the report."""
    score_batch(run.model, data, day, folder / "scores.parquet")
    built = build_report(data, run.model, folder / "scores.parquet", folder)
    return pd.read_parquet(folder / "scores.parquet").astype({"customer_id": str}), built


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
    assert funnel.no_data.isna().all()  # events and a customer table: every stage can be shown


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
    actions = {audience.name: audience.action for audience in AUDIENCES}
    assert (first.action == first.churn_risk.map({"high": actions["win_back"], "medium": actions["at_risk"]})).all()


def test_segments_with_their_value_risk_and_action(reported):
    _, _, scores, built = reported
    assert set(SEGMENT_ACTIONS) == {name for name, _, _ in SEGMENTS} | {NO_PURCHASE}  # every segment has an action
    segments = table(built, "segments").set_index("segment")
    by = scores.assign(segment=scores.rfm_segment.fillna(NO_PURCHASE)).groupby("segment")
    expected = pd.DataFrame({"customers": by.size(), "clv": by.clv.sum(), "mean_clv": by.clv.mean(),
                             "churn_probability": by.churn_probability.mean(),
                             "high_risk_share": by.churn_risk.apply(lambda risk: (risk == "high").mean())})
    expected["share_of_clv"] = expected.clv / scores.clv.sum()
    assert list(segments.index) == list(expected.sort_values("clv", ascending=False, kind="stable").index)
    assert len(segments) >= 6 and segments.customers.sum() == len(scores)
    for column in expected:
        np.testing.assert_allclose(segments[column], expected.loc[segments.index, column], rtol=1e-9, err_msg=column)
    assert (segments.action == segments.index.map(SEGMENT_ACTIONS)).all()


def test_the_most_valuable_customers(reported):
    _, _, scores, built = reported
    top = table(built, "top_customers")
    expected = scores.sort_values(["clv", "customer_id"], ascending=[False, True]).head(TOP_CUSTOMERS)
    assert top.customer_id.tolist() == expected.customer_id.tolist()
    for column in ("total_spend", "clv", "clv_spend_low", "clv_spend_high", "clv_purchases", "churn_probability"):
        np.testing.assert_allclose(top[column], expected[column], rtol=1e-9, err_msg=column)
    assert (top.clv_spend_low <= top.clv_spend).all() and (top.clv_spend <= top.clv_spend_high).all()


def test_the_forecast_at_the_training_date_is_training_s(reported):
    """Reported at the date the model was trained to, the base's forecast is the one training logged."""
    _, run, _, built = reported
    logged = run.forecast[run.forecast.group.isin(["all", "stage"])].reset_index(drop=True)
    forecast = table(built, "forecast")
    assert forecast.group.tolist() == logged.value.tolist() and forecast.group[0] == "all buyers"
    for column in ("customers", "purchases", "purchases_low", "purchases_high", "spend", "spend_low", "spend_high"):
        np.testing.assert_allclose(forecast[column], logged[column], rtol=1e-9, err_msg=column)
    assert (forecast.spend_low < forecast.spend).all() and (forecast.spend < forecast.spend_high).all()


def audience_members(scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each audience's customers by its rule in words (``serving.audiences``), computed in pandas."""
    alive = scores.activity_status.notna() & (scores.activity_status != "churned")
    top = scores.value_tier.isin(TOP_TIERS)
    return {"win_back": scores[(scores.churn_risk == "high") & top & alive],
            "second_order": scores[(scores.frequency == 0) & alive & (scores.churn_risk != "high")],
            "vip": scores[top & (scores.activity_status == "active")],
            "at_risk": scores[(scores.churn_risk == "medium") & alive]}


@pytest.fixture(scope="module")
def reported_early(reported, tmp_path_factory):
    """The same shop and model reported on in its first year, while customers still make their first orders."""
    data, run, _, _ = reported
    return report_at(run, data, date(2024, 9, 30), tmp_path_factory.mktemp("early"))


@pytest.mark.parametrize("when", ["end", "early"])
def test_audiences_are_written_with_their_customers(when, request):
    scores, built = request.getfixturevalue("reported_early")[0:2] if when == "early" else request.getfixturevalue(
        "reported")[2:4]
    members = audience_members(scores)
    assert [row["file"] for row in built.audiences] == [f"audiences/{a.name}.csv" for a in AUDIENCES]
    for row, audience in zip(built.audiences, AUDIENCES, strict=True):
        written = pd.read_csv(built.html.parent / row["file"], dtype={"customer_id": str})
        expected = members[audience.name]
        assert set(written.customer_id) == set(expected.customer_id), audience.name
        assert row["customers"] == len(written) and row["clv"] == pytest.approx(expected.clv.sum(), abs=1e-6)
        by_id = expected.set_index("customer_id").loc[written.customer_id]
        np.testing.assert_allclose(written.value_at_risk.to_numpy(float),
                                   (by_id.clv * by_id.churn_probability).to_numpy(float), rtol=1e-9)
        assert (pd.to_datetime(written.last_order_date) == pd.Timestamp(built.as_of) - pd.to_timedelta(
            by_id.recency_days.to_numpy(), unit="D")).all()
        key = {"win_back": "value_at_risk", "at_risk": "value_at_risk", "vip": "clv"}.get(audience.name)
        if key:  # the most urgent or valuable first
            assert written[key].is_monotonic_decreasing, audience.name
        else:
            assert written.churn_probability.is_monotonic_increasing
    counts = {a.name: row["customers"] for a, row in zip(AUDIENCES, built.audiences, strict=True)}
    assert all(counts.values()) if when == "early" else counts["vip"] > 50 and counts["at_risk"] > 50


@pytest.fixture(scope="module")
def cdnow_reported(cdnow_run, tmp_path_factory):
    """CDNOW's champion-style run, scored and reported on (no customer table, no events)."""
    data, run = cdnow_run
    folder = tmp_path_factory.mktemp("cdnow_report")
    score_batch(run.model, data, run.windows.end, folder / "scores.parquet")
    built = build_report(data, run.model, folder / "scores.parquet", folder)
    return data, run, pd.read_parquet(folder / "scores.parquet").astype({"customer_id": str}), built


def test_cdnow_report_says_what_it_cannot_show_and_what_would_fill_it(cdnow_reported, cdnow_master):
    _, run, _, built = cdnow_reported
    assert set(built.missing) == {"channels", "satisfaction"} and "channels" not in built.tables
    cohorts = table(built, "cohorts")
    first = cdnow_master.groupby("customer_id").timestamp.min().dt.to_period("M").value_counts().sort_index()
    assert cohorts.cohort.tolist() == ["1997-01", "1997-02", "1997-03"] == [str(p) for p in first.index]
    assert cohorts.customers.tolist() == first.tolist() and cohorts.customers.sum() == 23_570
    page = built.html.read_text()
    assert ("No numbers: needs a customer table (--customers FILE, or inputs.customers.path) with "
            "acquisition_channel and acquisition_cost columns") in page
    assert "No numbers: needs engagement events (--events FILE, or inputs.events.path) with NPS or CSAT" in page
    # orders alone cannot show who is aware or considering: those stages have no numbers, not 100 % bars
    funnel = table(built, "funnel").set_index("stage")
    assert funnel.no_data.notna().tolist() == [True, True, False, False, False]
    assert funnel.loc[["awareness", "consideration"], ["customers", "reached"]].isna().all().all()
    assert pd.isna(funnel.conversion_from_previous["conversion"]) and funnel.reached["conversion"] == 23_570
    assert "inputs.events.path" in funnel.no_data["consideration"] and "--customers" in funnel.no_data["awareness"]
    # the forecast at the training date is training's
    logged = run.forecast[run.forecast.group.isin(["all", "stage"])]
    np.testing.assert_allclose(table(built, "forecast").spend, logged.spend, rtol=1e-9)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


# How far a shown number may be from the table's: half its last digit (money whole, percentages to 0.1 %, ...), and
# the float error of a value that is exactly half a digit (6.25 % shown as 6.2 %).
SHOWN_TO = {kind: half + 1e-12 for kind, half in {"money": 0.5, "whole": 0.5, "percent": 0.0005, "ratio": 0.05,
                                                  "fraction": 0.005, "score": 0.0005, None: 0.005}.items()}


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
    """Headless Chromium opens the file: the contents link every section, each rendered, with its units on the
    headings; no console error, nothing fetched; every number on the page equal (to the digits shown) to its table;
    the funnel's stages without data say so instead of drawing a bar; the cohort heatmap has each month's share in
    its cell and the months not reached blank; the audiences are counted and their files linked."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium is needed (make test installs it)"
    _, run, scores, built = request.getfixturevalue("reported" if which == "simulated" else "cdnow_reported")
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
        contents = page.eval_on_selector_all("nav a", "a => a.map(e => e.getAttribute('href'))")
        cells = {name: page.eval_on_selector_all(
            f"table[data-table='{name}'] tbody tr",
            "rows => rows.map(r => [...r.cells].filter(c => !c.classList.contains('bar')).map(c => c.innerText))")
            for name in COLUMNS}
        headings = {name: page.eval_on_selector_all(f"table[data-table='{name}'] th[data-column]",
                                                    "h => h.map(e => [e.dataset.column, e.innerText])")
                    for name in COLUMNS}
        bars = page.eval_on_selector_all("table[data-table='funnel'] td.bar",
                                         "c => c.map(e => [e.innerText, e.querySelectorAll('span').length])")
        heatmap = page.eval_on_selector_all("table[data-table='cohort_grid'] tbody tr", """rows => rows.map(r =>
            [...r.cells].map(c => [c.innerText, c.classList.contains('unreached')]))""")
        links = page.eval_on_selector_all("table[data-table='audiences'] a", "a => a.map(e => e.getAttribute('href'))")
        terms = page.eval_on_selector_all("#glossary dt", "d => d.map(e => e.innerText)")
        kpis = dict(page.eval_on_selector_all("[data-kpi]", "k => k.map(e => [e.dataset.kpi, e.innerText])"))
        images = page.eval_on_selector_all("img", "i => i.length")
        browser.close()
    assert problems == [] and images == 0
    assert [name for name, _ in sections] == ["overview", "audiences", "segments", "value_at_risk", "act_first",
                                              "top_customers", "forecast", "funnel", "cohorts", "channels",
                                              "satisfaction", "track_record", "glossary"]
    assert contents == [f"#{name}" for name, _ in SECTIONS] == [f"#{name}" for name, _ in sections]
    assert all(height > 50 for _, height in sections)
    assert (tmp_path / "report.png").stat().st_size > 50_000
    assert set(built.missing) == ({"channels", "satisfaction"} if which == "cdnow" else set())
    # units: the currency where the shop gave one, and the horizon, on every money figure and probability
    money = ", EUR" if which == "simulated" else ""
    heads = {name: dict(pairs) for name, pairs in headings.items()}
    assert heads["segments"]["clv"] == f"CLV, next 12 months{money}" and heads["top_customers"]["total_spend"] == (
        f"spent so far{money}")
    assert heads["act_first"]["churn_probability"] == f"churn probability ({run.model.horizons.churn_days} days)"
    assert heads["forecast"]["spend"] == f"spend, next 12 months{money}"
    for name, columns in heads.items():
        for column, heading in columns.items():
            if FORMATS.get(column) == "money" and heading not in ("low", "high"):
                assert heading.endswith(money) and (money or "EUR" not in heading), (name, column, heading)
            if column in ("clv", "clv_spend", "spend", "clv_purchases", "purchases") and name != "channels":
                assert "next 12 months" in heading, (name, column, heading)
            if column == "churn_probability":
                assert f"({run.model.horizons.churn_days} days)" in heading, (name, heading)
    assert _parse(kpis["customers"]) == len(scores) and _parse(kpis["active"]) == (
        scores.activity_status == "active").sum()
    assert _parse(kpis["clv"]) == pytest.approx(scores.clv.sum(), abs=0.5)
    for name, columns in COLUMNS.items():
        if name in built.missing:
            assert cells[name] == [], name
            continue
        expected = pd.DataFrame(built.audiences) if name == "audiences" else table(built, name)
        assert len(cells[name]) == len(expected) > 0, name
        for shown, (_, row) in zip(cells[name], expected.iterrows(), strict=True):
            shown = shown[:len(columns)]  # the audiences' last cell is its file's link
            for text, column in zip(shown, columns, strict=True):
                value, truth = _parse(text), row[column]
                if FORMATS.get(column) == "id":
                    assert text == truth, (name, column)
                elif pd.isna(truth):
                    assert value is None, (name, column)
                elif isinstance(value, str):
                    assert value == str(truth), (name, column)
                else:  # to the digits shown
                    assert value == pytest.approx(float(truth), abs=SHOWN_TO[FORMATS.get(column)]), (
                        name, column, text, truth)
    # the funnel: a bar per stage with numbers, "no data" and the input that would give them for the others
    funnel = table(built, "funnel")
    for (text, spans), no_data in zip(bars, funnel.no_data, strict=True):
        assert (text, spans) == ((f"no data: needs {no_data}", 0) if isinstance(no_data, str) else ("", 1))
    # the cohort heatmap: size and repeat rate, then each month's share, blank and marked where not reached
    cohorts, retention = table(built, "cohorts"), table(built, "cohort_retention")
    share = {(row.cohort, row.months_since_first): row.retention for row in retention.itertuples()}
    months = retention.months_since_first.max()
    assert [row[0][0] for row in heatmap] == cohorts.cohort.tolist()
    for row, cohort in zip(heatmap, cohorts.itertuples(), strict=True):
        assert len(row) == 3 + months and _parse(row[1][0]) == cohort.customers
        for month, (text, unreached) in enumerate(row[3:], start=1):
            reached = (cohort.cohort, month) in share
            assert unreached == (not reached) and (text == "") == (not reached), (cohort.cohort, month)
            if reached:
                assert _parse(text) == pytest.approx(share[cohort.cohort, month], abs=SHOWN_TO["percent"])
    blanks = sum(unreached for row in heatmap for _, unreached in row[3:])
    assert blanks == len(cohorts) * months - len(retention) and (blanks > 0) == (which == "simulated")
    # the audiences: each file linked, there, and as long as its count
    assert links == [row["file"] for row in built.audiences]
    for link, row in zip(links, built.audiences, strict=True):
        assert len(pd.read_csv(built.html.parent / link)) == row["customers"] == _parse(
            cells["audiences"][links.index(link)][2])
    assert {"Churn", "CLV", "Churn risk", "Segment", "Audience", "Interval"} <= set(terms)
