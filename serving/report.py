"""Lifecycle KPIs over a scoring run and the inputs it read (``lifecycle report``), for the marketers who act on them.

Computed with DuckDB at the scores' as-of date, over the records of every customer and the validated
tables: the audiences to reach (``serving.audiences``, one CSV each), the RFM segments with a suggested action,
the value at risk with the customers to act on first, the most valuable customers, the base's forecast with its
interval, the stage funnel, monthly acquisition cohorts, CLV against acquisition cost by channel, NPS and CSAT by
stage and segment, and how the model's predictions held up. Each is written as a CSV table, and all of them as
one self-contained HTML page (``serving.report_page``). A section, or a funnel stage, whose inputs the shop does
not have says which input or column would fill it instead of showing numbers. Definitions: docs/usage.md,
"Lifecycle report".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from features.build import STAGES, FeatureBuilder, orders_sql
from features.files import sql_literal
from features.sources import Dataset
from models.forecast import forecast
from models.lifecycle import DAYS_PER_MONTH, LifecycleModel
from serving.audiences import AUDIENCES, NO_PURCHASE, SEGMENT_ACTIONS, write_audiences
from serving.report_page import render

HEALTHY_CLV_TO_CAC = 3.0  # the usual rule of thumb: a customer should be worth three times what they cost
COHORT_MONTHS = 12  # retention shown for the first months after the first order
ACT_FIRST = 20  # customers listed to act on first
TOP_CUSTOMERS = 20  # the most valuable customers listed
NPS_RANGE, CSAT_RANGE = (0, 10), (1, 5)  # valid answers; others are left out
EVENTS = "engagement events (--events FILE, or inputs.events.path)"
CUSTOMERS = "a customer table (--customers FILE, or inputs.customers.path)"
# What fills a funnel stage no order shows: people known before they bought.
STAGE_INPUTS = {"awareness": (("customers", "events"), f"{CUSTOMERS} or {EVENTS}: people known before they buy"),
                "consideration": (("events",), f"{EVENTS}: sessions, product views, cart adds")}


@dataclass
class Report:
    """What ``build_report`` wrote: the HTML page, each KPI table (CSV), the audiences and why a section is
    empty."""

    as_of: date
    html: Path
    tables: dict[str, Path]
    missing: dict[str, str] = field(default_factory=dict)  # section -> the input that would fill it
    headline: dict[str, float] = field(default_factory=dict)
    audiences: list[dict] = field(default_factory=list)  # per audience: title, rule, customers, CLV, file


def build_report(data: Dataset, model: LifecycleModel, scores: str | Path, out: str | Path) -> Report:
    """Write the KPI tables, the audiences and ``report.html`` into the folder ``out`` from the records in
    ``scores`` (the output of ``lifecycle score``: Parquet or CSV) and the validated inputs in ``data``; ``model``
    (the one that scored them) places customers in stages one churn horizon before the scores' as-of date,
    forecasts the base, and its track record, decisions and weaknesses say how its predictions held up."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reader = "read_parquet" if str(scores).lower().endswith((".parquet", ".pq")) else "read_csv_auto"
    con = data.con
    con.execute(f"CREATE OR REPLACE TEMP VIEW scores AS SELECT * FROM {reader}({sql_literal(str(scores))})")
    as_of = con.execute("SELECT CAST(max(as_of) AS DATE) FROM scores").fetchall()[0][0]
    tables, missing = {}, {}
    tables["segments"] = _segments(data)
    tables["value_at_risk"], tables["act_first"] = _value_at_risk(data)
    tables["top_customers"] = _top_customers(data)
    tables["forecast"] = _forecast(data, model, as_of)
    tables["funnel"] = _funnel(data, model.builder, as_of, model.horizons.churn_days)
    tables["cohorts"], tables["cohort_retention"] = _cohorts(data, as_of)
    tables["channels"] = _channels(data, as_of)
    if tables["channels"] is None:
        missing["channels"] = (f"needs {CUSTOMERS} with acquisition_channel and acquisition_cost columns"
                               if "customers" not in data.report else "the customer table has no acquisition "
                               "channels: map acquisition_channel and acquisition_cost (inputs.customers.columns)")
    tables["satisfaction"] = _satisfaction(data, as_of)
    if tables["satisfaction"] is None:
        answers = "events of type nps (0-10) or csat (1-5) with the answer in value"
        missing["satisfaction"] = (f"needs {EVENTS} with NPS or CSAT answers: {answers}" if "events" not in
                                   data.report else f"no event is an NPS or CSAT answer: add {answers}")
    tables["track_record"] = pd.DataFrame(model.track_record) if model.track_record else None
    if tables["track_record"] is None:
        missing["track_record"] = "the model was trained by an older release: retrain it (lifecycle train)"
    paths = {}
    for name, table in tables.items():
        if table is not None:
            paths[name] = out / f"{name}.csv"
            table.to_csv(paths[name], index=False)
    audiences = write_audiences(con, out)
    headline = _headline(con, tables)
    html = out / "report.html"
    page = render(as_of, tables, missing, headline, audiences, data, model, HEALTHY_CLV_TO_CAC)
    html.write_text(page, encoding="utf-8")
    return Report(as_of, html, paths, missing, headline, audiences)


def _segments(data: Dataset) -> pd.DataFrame:
    """Per RFM segment (prospects as one): customers, their predicted CLV in total and on average, its share, the
    mean churn probability, the share at high churn risk, and the suggested action; the most CLV first."""
    table = data.con.sql(f"""
        SELECT coalesce(rfm_segment, '{NO_PURCHASE}') AS segment, count(*) AS customers,
            coalesce(sum(clv), 0) AS clv, avg(clv) AS mean_clv,
            coalesce(sum(clv), 0) / nullif((SELECT sum(clv) FROM scores), 0) AS share_of_clv,
            avg(churn_probability) AS churn_probability,
            count(*) FILTER (WHERE churn_risk = 'high') / count(*) AS high_risk_share
        FROM scores GROUP BY ALL ORDER BY clv DESC, segment
    """).df()
    return table.assign(action=table.segment.map(SEGMENT_ACTIONS))


def _top_customers(data: Dataset) -> pd.DataFrame:
    """The ``TOP_CUSTOMERS`` most valuable customers by predicted CLV, with their purchases and spend over the CLV
    horizon and those intervals, their next order and churn risk."""
    return data.con.sql(f"""
        SELECT customer_id, rfm_segment, activity_status, value_tier, total_spend, clv,
            clv_purchases, clv_purchases_low, clv_purchases_high, clv_spend, clv_spend_low, clv_spend_high,
            next_order_date, churn_probability
        FROM scores WHERE clv IS NOT NULL ORDER BY clv DESC, customer_id LIMIT {TOP_CUSTOMERS}
    """).df()


def _forecast(data: Dataset, model: LifecycleModel, as_of: date) -> pd.DataFrame:
    """The base's purchases and spend over the CLV horizon with their intervals (``models.forecast``): every buyer
    known at ``as_of``, then each stage."""
    totals = forecast(model.purchases, model.spend, model.horizons, model.builder.transform(data, as_of))
    return totals[totals.group.isin(["all", "stage"])].drop(columns="group").rename(columns={"value": "group"})


def _funnel(data: Dataset, builder: FeatureBuilder, as_of: date, window_days: int) -> pd.DataFrame:
    """Per stage: customers in it now, customers who have come this far (this stage or a later one), the
    conversion from the stage before, and of those in it ``window_days`` ago, the share in a later one now. A
    stage the inputs cannot show (``STAGE_INPUTS``: no customer table or events) has no numbers, and ``no_data``
    names the input that would give them."""
    earlier = as_of - timedelta(days=window_days)
    ranks = ", ".join(f"('{stage}', {rank})" for rank, stage in enumerate(STAGES))
    funnel = data.con.sql(f"""
        WITH rank_of(stage, stage_rank) AS (VALUES {ranks}),
        now AS (SELECT customer_id, stage_rank FROM scores JOIN rank_of USING (stage)),
        before AS (SELECT customer_id, stage_rank FROM ({builder.sql(earlier)})),
        moved AS (
            SELECT b.stage_rank, count(*) AS customers_then,
                count(*) FILTER (WHERE n.stage_rank > b.stage_rank) AS moved_up
            FROM before AS b JOIN now AS n USING (customer_id) GROUP BY b.stage_rank
        ),
        counted AS (
            SELECT r.stage, r.stage_rank,
                (SELECT count(*) FROM now WHERE now.stage_rank = r.stage_rank) AS customers,
                (SELECT count(*) FROM now WHERE now.stage_rank >= r.stage_rank) AS reached
            FROM rank_of AS r
        )
        SELECT c.stage, c.customers, c.reached,
            c.reached / nullif(lag(c.reached) OVER (ORDER BY c.stage_rank), 0) AS conversion_from_previous,
            coalesce(m.customers_then, 0) AS in_it_window_ago,
            CASE WHEN c.stage_rank < {len(STAGES) - 1} THEN m.moved_up / nullif(m.customers_then, 0) END
                AS moved_up_since
        FROM counted AS c LEFT JOIN moved AS m USING (stage_rank)
        ORDER BY c.stage_rank
    """).df()
    funnel["no_data"] = [STAGE_INPUTS[stage][1] if stage in STAGE_INPUTS and not any(
        source in data.report for source in STAGE_INPUTS[stage][0]) else None for stage in funnel.stage]
    blank = funnel.no_data.notna()
    numbers = ["customers", "reached", "conversion_from_previous", "in_it_window_ago", "moved_up_since"]
    funnel.loc[blank, numbers] = None
    funnel.loc[blank.shift(fill_value=False), "conversion_from_previous"] = None  # from a stage without numbers
    return funnel


def _cohorts(data: Dataset, as_of: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customers by the month of their first order: the cohort's size, the share who bought again (on a later
    day) by ``as_of``, and per month since the first order the share who ordered in it (long form)."""
    con = data.con
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE cohort_orders AS
        SELECT customer_id, day, min(day) OVER (PARTITION BY customer_id) AS first_day FROM ({orders_sql(as_of)})
    """)
    summary = con.sql("""
        SELECT strftime(date_trunc('month', first_day), '%Y-%m') AS cohort, count(*) AS customers,
            count(*) FILTER (WHERE days > 1) / count(*) AS repeat_rate
        FROM (SELECT customer_id, first_day, count(DISTINCT day) AS days FROM cohort_orders GROUP BY ALL)
        GROUP BY cohort ORDER BY cohort
    """).df()
    retention = con.sql(f"""
        WITH monthly AS (
            SELECT DISTINCT customer_id, strftime(date_trunc('month', first_day), '%Y-%m') AS cohort,
                datediff('month', date_trunc('month', first_day), date_trunc('month', day)) AS months_since_first
            FROM cohort_orders
        ),
        sizes AS (SELECT cohort, count(*) AS customers FROM monthly WHERE months_since_first = 0 GROUP BY cohort)
        SELECT cohort, months_since_first, count(*) AS ordering, count(*) / any_value(customers) AS retention
        FROM monthly JOIN sizes USING (cohort)
        WHERE months_since_first BETWEEN 1 AND {COHORT_MONTHS}
        GROUP BY cohort, months_since_first ORDER BY cohort, months_since_first
    """).df()
    # months a cohort has not lived through yet are absent; months it lived through without an order are 0
    lived = [(c, m) for c in summary.cohort for m in range(1, COHORT_MONTHS + 1)
             if pd.Period(c, "M") + m <= pd.Period(as_of, "M")]
    grid = pd.DataFrame(lived, columns=["cohort", "months_since_first"])
    retention = grid.merge(retention, how="left", on=["cohort", "months_since_first"]).fillna(
        {"ordering": 0, "retention": 0.0}).astype({"ordering": int})
    con.execute("DROP TABLE cohort_orders")
    return summary, retention


def _channels(data: Dataset, as_of: date) -> pd.DataFrame | None:
    """Per acquisition channel: customers acquired, buyers, mean acquisition cost (CAC), mean CLV (spend to date
    plus the predicted CLV, non-buyers counting 0), CLV:CAC, and the months of spend that pay the CAC back."""
    if "customers" not in data.report or not data.con.execute(
            "SELECT count(acquisition_channel) FROM customers").fetchall()[0][0]:
        return None
    return data.con.sql(f"""
        WITH acquired AS (
            SELECT c.customer_id, c.acquisition_channel AS channel, c.acquisition_cost AS cost,
                s.frequency IS NOT NULL AS bought, coalesce(s.total_spend, 0) AS spend,
                coalesce(s.total_spend, 0) + coalesce(s.clv, 0) AS value,
                greatest(DATE '{as_of}' - coalesce(CAST(c.signup_date AS DATE), DATE '{as_of}'), 1) / {DAYS_PER_MONTH}
                    AS months
            FROM customers AS c JOIN scores AS s USING (customer_id)
            WHERE c.acquisition_channel IS NOT NULL
        )
        SELECT channel, count(*) AS customers, count(*) FILTER (WHERE bought) AS buyers,
            avg(cost) AS cac, avg(value) AS clv, clv / nullif(cac, 0) AS clv_to_cac,
            cac / nullif(sum(spend) / sum(months), 0) AS payback_months,
            coalesce(clv_to_cac < {HEALTHY_CLV_TO_CAC}, false) AS below_3_to_1
        FROM acquired GROUP BY channel ORDER BY clv_to_cac DESC NULLS LAST
    """).df()


def _satisfaction(data: Dataset, as_of: date) -> pd.DataFrame | None:
    """NPS (promoters 9-10 minus detractors 0-6, in points) and CSAT (answers of 4-5 on 1-5, in %) by stage and
    by RFM segment, from each customer's latest answer on or before ``as_of``."""
    if "events" not in data.report:
        return None
    cutoff = f"TIMESTAMP '{as_of + timedelta(days=1)}'"
    latest = {kind: f"""(SELECT customer_id, arg_max(value, timestamp) AS answer FROM events
                         WHERE event_type = '{kind}' AND value BETWEEN {low} AND {high} AND timestamp < {cutoff}
                         GROUP BY customer_id)"""
              for kind, (low, high) in (("nps", NPS_RANGE), ("csat", CSAT_RANGE))}
    table = data.con.sql(f"""
        WITH answers AS (
            SELECT s.stage, coalesce(s.rfm_segment, '(no purchase)') AS segment, n.answer AS nps, c.answer AS csat
            FROM scores AS s LEFT JOIN {latest['nps']} AS n USING (customer_id)
                LEFT JOIN {latest['csat']} AS c USING (customer_id)
            WHERE n.answer IS NOT NULL OR c.answer IS NOT NULL
        )
        SELECT CASE WHEN stage IS NOT NULL THEN 'stage' ELSE 'segment' END AS grouped_by,
            coalesce(stage, segment) AS "group",
            count(nps) AS nps_answers,
            100 * (count(*) FILTER (WHERE nps >= 9) - count(*) FILTER (WHERE nps <= 6)) / nullif(count(nps), 0) AS nps,
            count(csat) AS csat_answers,
            100 * count(*) FILTER (WHERE csat >= 4) / nullif(count(csat), 0) AS csat
        FROM answers GROUP BY GROUPING SETS ((stage), (segment))
        ORDER BY grouped_by DESC, nps_answers + csat_answers DESC
    """).df()
    return table if len(table) else None


def _value_at_risk(data: Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The predicted CLV held by each churn risk band, and the customers to act on first: medium or high risk and
    not churned (gone is a win-back, not a retention, case), ranked by the CLV they are expected to take with them
    (CLV x churn probability), with the win-back action (high risk) or the at-risk one (medium)."""
    bands = data.con.sql("""
        SELECT churn_risk, count(*) AS customers, coalesce(sum(clv), 0) AS clv,
            coalesce(sum(clv), 0) / (SELECT sum(clv) FROM scores) AS share_of_clv
        FROM scores WHERE churn_risk IS NOT NULL GROUP BY churn_risk
        ORDER BY list_position(['high', 'medium', 'low'], churn_risk)
    """).df()
    first = data.con.sql(f"""
        SELECT customer_id, stage, activity_status, rfm_segment, value_tier, clv, churn_probability, churn_risk,
            clv * churn_probability AS value_at_risk, next_order_date
        FROM scores WHERE churn_risk IN ('medium', 'high') AND activity_status <> 'churned' AND clv > 0
        ORDER BY value_at_risk DESC, customer_id LIMIT {ACT_FIRST}
    """).df()
    actions = {audience.name: audience.action for audience in AUDIENCES}
    return bands, first.assign(action=first.churn_risk.map({"high": actions["win_back"], "medium": actions["at_risk"]}))


def _headline(con, tables: dict[str, pd.DataFrame | None]) -> dict[str, float]:
    """The numbers at the top of the page."""
    customers, buyers, clv = con.execute(
        "SELECT count(*), count(frequency), sum(clv) FROM scores").fetchall()[0]
    bands = tables["value_at_risk"].set_index("churn_risk")
    at_risk = float(bands.clv.get("high", 0.0))
    active = con.execute("SELECT count(*) FILTER (WHERE activity_status = 'active') FROM scores").fetchall()[0][0]
    return {"customers": customers, "buyers": buyers, "active": active, "clv": float(clv or 0),
            "value_at_risk": at_risk, "value_at_risk_share": at_risk / clv if clv else 0.0}
