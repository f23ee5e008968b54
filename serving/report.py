"""Lifecycle KPIs over a scoring run and the inputs it read (``lifecycle report``).

Computed with DuckDB at the scores' as-of date, over the records of every customer and the validated
tables: the stage funnel, monthly acquisition cohorts, CLV against acquisition cost by channel,
NPS and CSAT by stage and segment, and the value at risk with the customers to act on first. Each
is written as a CSV table, and all of them as one self-contained HTML page (plots embedded as PNG,
no script, nothing fetched). A section whose inputs the shop does not have (no customer table, no
NPS events) says so instead of showing numbers. Definitions: docs/serving.md, "Lifecycle report".
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from features.build import STAGES, FeatureBuilder, orders_sql
from features.files import sql_literal
from features.sources import Dataset
from models.lifecycle import DAYS_PER_MONTH, LifecycleModel

HEALTHY_CLV_TO_CAC = 3.0  # the usual rule of thumb: a customer should be worth three times what they cost
COHORT_MONTHS = 12  # retention shown for the first months after the first order
ACT_FIRST = 20  # customers listed to act on first
NPS_RANGE, CSAT_RANGE = (0, 10), (1, 5)  # valid answers; others are left out
TEMPLATE = Path(__file__).with_name("templates") / "report.html"


@dataclass
class Report:
    """What ``build_report`` wrote: the HTML page, each KPI table (CSV) and why a section is empty."""

    as_of: date
    html: Path
    tables: dict[str, Path]
    missing: dict[str, str] = field(default_factory=dict)  # section -> why it has no numbers
    headline: dict[str, float] = field(default_factory=dict)


def build_report(data: Dataset, model: LifecycleModel, scores: str | Path, out: str | Path) -> Report:
    """Write the KPI tables and ``report.html`` into the folder ``out`` from the records in ``scores`` (the
    output of ``lifecycle score``: Parquet or CSV) and the validated inputs in ``data``; ``model`` (the one that
    scored them) places customers in stages one churn horizon before the scores' as-of date, and its track record,
    decisions and weaknesses say how its predictions held up out of time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reader = "read_parquet" if str(scores).lower().endswith((".parquet", ".pq")) else "read_csv_auto"
    con = data.con
    con.execute(f"CREATE OR REPLACE TEMP VIEW scores AS SELECT * FROM {reader}({sql_literal(str(scores))})")
    as_of = con.execute("SELECT CAST(max(as_of) AS DATE) FROM scores").fetchall()[0][0]
    tables, missing = {}, {}
    window_days = model.horizons.churn_days
    tables["funnel"] = _funnel(data, model.builder, as_of, window_days)
    tables["cohorts"], tables["cohort_retention"] = _cohorts(data, as_of)
    tables["channels"] = _channels(data, as_of)
    if tables["channels"] is None:
        missing["channels"] = "the customer table has no acquisition channels (or there is no customer table)"
    tables["satisfaction"] = _satisfaction(data, as_of)
    if tables["satisfaction"] is None:
        missing["satisfaction"] = "no event carries an NPS or CSAT answer"
    tables["value_at_risk"], tables["act_first"] = _value_at_risk(data)
    tables["track_record"] = pd.DataFrame(model.track_record) if model.track_record else None
    if tables["track_record"] is None:
        missing["track_record"] = "the model carries no track record (it was trained by an older release)"
    paths = {}
    for name, table in tables.items():
        if table is not None:
            paths[name] = out / f"{name}.csv"
            table.to_csv(paths[name], index=False)
    headline = _headline(con, tables)
    html = out / "report.html"
    html.write_text(_render(as_of, window_days, tables, missing, headline, data, model), encoding="utf-8")
    return Report(as_of, html, paths, missing, headline)


def _funnel(data: Dataset, builder: FeatureBuilder, as_of: date, window_days: int) -> pd.DataFrame:
    """Per stage: customers in it now, customers who have come this far (this stage or a later one), the
    conversion from the stage before, and of those in it ``window_days`` ago, the share in a later one now."""
    earlier = as_of - timedelta(days=window_days)
    ranks = ", ".join(f"('{stage}', {rank})" for rank, stage in enumerate(STAGES))
    return data.con.sql(f"""
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
    (CLV x churn probability)."""
    bands = data.con.sql("""
        SELECT churn_risk, count(*) AS customers, coalesce(sum(clv), 0) AS clv,
            coalesce(sum(clv), 0) / (SELECT sum(clv) FROM scores) AS share_of_clv
        FROM scores WHERE churn_risk IS NOT NULL GROUP BY churn_risk
        ORDER BY list_position(['high', 'medium', 'low'], churn_risk)
    """).df()
    first = data.con.sql(f"""
        SELECT customer_id, stage, activity_status, rfm_segment, value_tier, clv, churn_probability,
            clv * churn_probability AS value_at_risk, next_order_date
        FROM scores WHERE churn_risk IN ('medium', 'high') AND activity_status <> 'churned' AND clv > 0
        ORDER BY value_at_risk DESC, customer_id LIMIT {ACT_FIRST}
    """).df()
    return bands, first


def _headline(con, tables: dict[str, pd.DataFrame | None]) -> dict[str, float]:
    """The numbers at the top of the page."""
    customers, buyers, clv = con.execute(
        "SELECT count(*), count(frequency), sum(clv) FROM scores").fetchall()[0]
    bands = tables["value_at_risk"].set_index("churn_risk")
    at_risk = float(bands.clv.get("high", 0.0))
    active = con.execute("SELECT count(*) FILTER (WHERE activity_status = 'active') FROM scores").fetchall()[0][0]
    return {"customers": customers, "buyers": buyers, "active": active, "clv": float(clv or 0),
            "value_at_risk": at_risk, "value_at_risk_share": at_risk / clv if clv else 0.0}


def _render(as_of, window_days, tables, missing, headline, data, model) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATE.parent), autoescape=select_autoescape(["html"]))
    env.filters["number"] = _number
    return env.get_template(TEMPLATE.name).render(
        as_of=as_of, window_days=window_days, tables=tables, missing=missing, headline=headline,
        plots=_plots(tables), columns=COLUMNS, formats=FORMATS, threshold=HEALTHY_CLV_TO_CAC,
        decisions=model.decisions, weaknesses=model.weaknesses,
        inputs={name: report.valid for name, report in data.report.items()})


# How each table's columns are headed and written on the page (the CSV keeps every digit).
COLUMNS = {
    "funnel": {"stage": "stage", "customers": "in it now", "reached": "came this far",
               "conversion_from_previous": "from the stage before", "in_it_window_ago": "in it {window} days ago",
               "moved_up_since": "of those, in a later stage now"},
    "cohorts": {"cohort": "cohort (first order)", "customers": "customers", "repeat_rate": "bought again"},
    "channels": {"channel": "channel", "customers": "customers", "buyers": "buyers", "cac": "CAC", "clv": "CLV",
                 "clv_to_cac": "CLV:CAC", "payback_months": "payback (months)"},
    "satisfaction": {"grouped_by": "by", "group": "group", "nps_answers": "NPS answers", "nps": "NPS",
                     "csat_answers": "CSAT answers", "csat": "CSAT %"},
    "value_at_risk": {"churn_risk": "churn risk", "customers": "customers", "clv": "predicted CLV",
                      "share_of_clv": "share of CLV"},
    "act_first": {"customer_id": "customer", "stage": "stage", "activity_status": "status",
                  "rfm_segment": "segment", "value_tier": "tier", "clv": "CLV", "churn_probability": "churn",
                  "value_at_risk": "CLV at risk", "next_order_date": "next order"},
    "track_record": {"cut": "cut date", "churn_roc_auc": "churn ROC-AUC", "churn_roc_auc_recency": "recency alone",
                     "churn_brier": "churn Brier", "clv_gini": "CLV Gini", "clv_gini_spend_rate": "past spend rate",
                     "clv_decile_mape": "CLV decile error", "clv_decile_mape_spend_rate": "past spend rate's",
                     "holdout_purchases_interval_coverage": "purchases in interval",
                     "holdout_purchases_interval_stated": "stated",
                     "holdout_spend_interval_coverage": "spend in interval", "holdout_spend_interval_stated": "stated"},
}
FORMATS = {"conversion_from_previous": "percent", "moved_up_since": "percent", "repeat_rate": "percent",
           "share_of_clv": "percent", "churn_probability": "fraction", "clv_to_cac": "ratio", "payback_months": "ratio",
           "nps": "ratio", "csat": "ratio", "cac": "money", "clv": "money", "value_at_risk": "money",
           "next_order_date": "date", **dict.fromkeys(COLUMNS["track_record"], "score"), "cut": None}


def _number(value, kind: str | None = None) -> str:
    """A value as the page writes it: thousands separated, percentages and money rounded, missing as a dash."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    if kind == "fraction":
        return f"{value:.2f}"
    if kind == "score":
        return f"{value:.3f}"
    if kind == "ratio":
        return f"{value:,.1f}"
    if kind == "money":
        return f"{value:,.0f}"
    if kind == "date":
        return f"{pd.Timestamp(value):%Y-%m-%d}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}" if isinstance(value, int | float) else str(value)


def _plots(tables: dict[str, pd.DataFrame | None]) -> dict[str, str]:
    """Each section's figure as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    funnel = tables["funnel"]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(funnel.stage[::-1], funnel.reached[::-1], color="#3b6ea5")
    ax.set_xlabel("customers who came this far")
    figures["funnel"] = fig
    retention = tables["cohort_retention"]
    if len(retention):
        grid = retention.pivot(index="cohort", columns="months_since_first", values="retention")
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(grid))))
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="Blues", vmin=0)
        ax.set_yticks(range(len(grid)), grid.index)
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_xlabel("months since the first order")
        fig.colorbar(image, ax=ax, label="share ordering")
        figures["cohorts"] = fig
    channels = tables["channels"]
    if channels is not None:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(channels.channel, channels.clv_to_cac, color=["#c0392b" if low else "#3b6ea5"
                                                             for low in channels.below_3_to_1])
        ax.axhline(HEALTHY_CLV_TO_CAC, color="black", linestyle="--", linewidth=1)
        ax.set_ylabel("CLV : CAC")
        figures["channels"] = fig
    bands = tables["value_at_risk"]
    fig, ax = plt.subplots(figsize=(7, 2.5))
    ax.barh(bands.churn_risk, bands.clv, color=[{"high": "#c0392b", "medium": "#e67e22"}.get(b, "#3b6ea5")
                                               for b in bands.churn_risk])
    ax.set_xlabel("predicted CLV")
    figures["value_at_risk"] = fig
    uris = {}
    for name, fig in figures.items():
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        uris[name] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return uris
