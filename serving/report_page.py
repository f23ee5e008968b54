"""The lifecycle report's HTML page: one self-contained file (no script, no image fetched, no plot library), for
a marketer to read.

Every money figure names the currency (when the shop gave one) and every prediction its horizon, in the headings
("CLV, next 12 months, EUR"); a table of contents and a glossary frame the sections. Bars are drawn by the
page itself, in the rows of the table they belong to, so a chart and its table always run in one order; the
cohort heatmap is a table with the share in each cell and the months a cohort has not reached left blank.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from features.build import STAGES
from features.sources import Dataset
from models.lifecycle import LifecycleModel
from serving.audiences import AUDIENCES, TOP_TIERS

TEMPLATE = Path(__file__).with_name("templates") / "report.html"

# (id, title) of each section, in the page's order: the table of contents.
SECTIONS = (
    ("overview", "Overview"),
    ("audiences", "Audiences to reach"),
    ("segments", "Segments and what to do"),
    ("value_at_risk", "Value at risk"),
    ("act_first", "Customers to act on first"),
    ("top_customers", "Most valuable customers"),
    ("forecast", "Forecast"),
    ("funnel", "Stage funnel"),
    ("cohorts", "Monthly acquisition cohorts"),
    ("channels", "Value and acquisition cost by channel"),
    ("satisfaction", "NPS and CSAT"),
    ("track_record", "How the predictions held up"),
    ("glossary", "Glossary"),
)

# How each table's columns are headed on the page (the CSV keeps every column and digit). Headings name their
# units through the fields of ``labels``: {clv}, {money}, {churn}, {purchases}, {spend}, {window}.
COLUMNS = {
    "audiences": {"audience": "audience", "who": "who", "customers": "customers", "clv": "{clv}",
                  "action": "suggested action"},
    "segments": {"segment": "segment", "customers": "customers", "clv": "{clv}", "mean_clv": "per customer{money}",
                 "share_of_clv": "share of CLV", "churn_probability": "mean {churn}",
                 "high_risk_share": "at high churn risk", "action": "suggested action"},
    "value_at_risk": {"churn_risk": "churn risk", "customers": "customers", "clv": "{clv}",
                      "share_of_clv": "share of CLV"},
    "act_first": {"customer_id": "customer", "rfm_segment": "segment", "activity_status": "status",
                  "value_tier": "tier", "clv": "{clv}", "churn_probability": "{churn}",
                  "value_at_risk": "CLV at risk{money}", "next_order_date": "next order", "action": "suggested action"},
    "top_customers": {"customer_id": "customer", "rfm_segment": "segment", "activity_status": "status",
                      "value_tier": "tier", "total_spend": "spent so far{money}", "clv": "{clv}",
                      "clv_purchases": "{purchases}", "clv_purchases_low": "low", "clv_purchases_high": "high",
                      "clv_spend": "{spend}", "clv_spend_low": "low", "clv_spend_high": "high",
                      "next_order_date": "next order", "churn_probability": "{churn}"},
    "forecast": {"group": "buyers", "customers": "customers", "purchases": "{purchases}", "purchases_low": "low",
                 "purchases_high": "high", "spend": "{spend}", "spend_low": "low", "spend_high": "high"},
    "funnel": {"stage": "stage", "customers": "in it now", "reached": "came this far",
               "conversion_from_previous": "from the stage before", "in_it_window_ago": "in it {window} days ago",
               "moved_up_since": "of those, in a later stage now"},
    "channels": {"channel": "channel", "customers": "customers", "buyers": "buyers", "cac": "CAC{money}",
                 "clv": "value per customer{money}", "clv_to_cac": "value:CAC", "payback_months": "payback (months)"},
    "satisfaction": {"grouped_by": "by", "group": "group", "nps_answers": "NPS answers", "nps": "NPS",
                     "csat_answers": "CSAT answers", "csat": "CSAT %"},
    "track_record": {"cut": "cut date", "churn_roc_auc": "churn ROC-AUC", "churn_roc_auc_recency": "recency alone",
                     "churn_brier": "churn Brier", "clv_gini": "CLV Gini", "clv_gini_spend_rate": "past spend rate",
                     "clv_decile_mape": "CLV decile error", "clv_decile_mape_spend_rate": "past spend rate's",
                     "holdout_purchases_interval_coverage": "purchases in interval",
                     "holdout_purchases_interval_stated": "stated",
                     "holdout_spend_interval_coverage": "spend in interval", "holdout_spend_interval_stated": "stated"},
}
MONEY = ("clv", "mean_clv", "value_at_risk", "total_spend", "clv_spend", "clv_spend_low", "clv_spend_high", "spend",
         "spend_low", "spend_high", "cac")
FORMATS = {**dict.fromkeys(MONEY, "money"), **dict.fromkeys(COLUMNS["track_record"], "score"), "cut": None,
           **dict.fromkeys(("conversion_from_previous", "moved_up_since", "repeat_rate", "share_of_clv",
                            "high_risk_share"), "percent"),
           **dict.fromkeys(("purchases", "purchases_low", "purchases_high"), "whole"),
           **dict.fromkeys(("clv_purchases", "clv_purchases_low", "clv_purchases_high", "clv_to_cac",
                            "payback_months", "nps", "csat"), "ratio"),
           "churn_probability": "fraction", "next_order_date": "date", "customer_id": "id"}
# Columns of words, aligned left (numbers are aligned right); of them, the sentences, which wrap.
TEXT = {"audience", "who", "action", "segment", "customer_id", "rfm_segment", "activity_status", "value_tier",
        "churn_risk", "stage", "channel", "grouped_by", "group"}
PROSE = {"who", "action"}
# The column whose bar is drawn in each row of a table (as a share of the column's largest value).
BARS = {"segments": "clv", "value_at_risk": "clv", "funnel": "reached", "channels": "clv_to_cac"}


def render(as_of: date, tables: dict, missing: dict, headline: dict, audiences: list[dict], data: Dataset,
           model: LifecycleModel, threshold: float) -> str:
    """The page of ``serving.report.build_report``'s tables (channels below a CLV:CAC of ``threshold`` flagged)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    units = labels(model)
    env = Environment(loader=FileSystemLoader(TEMPLATE.parent), autoescape=select_autoescape(["html"]))
    env.filters["number"] = number
    return env.get_template(TEMPLATE.name).render(
        as_of=as_of, sections=SECTIONS, titles=dict(SECTIONS), tables=tables, missing=missing, headline=headline,
        audiences=audiences, units=units, bars={name: _bars(tables[name], column) for name, column in BARS.items()
                           if tables.get(name) is not None},
        cohorts=_cohort_grid(tables["cohorts"], tables["cohort_retention"]),
        headings={name: {column: heading.format(**units) for column, heading in columns.items()}
                  for name, columns in COLUMNS.items()},
        formats=FORMATS, text=TEXT, prose=PROSE, threshold=threshold, glossary=glossary(model, units),
        horizons=model.horizons, currency=model.currency, decisions=model.decisions, weaknesses=model.weaknesses,
        inputs={name: report.valid for name, report in data.report.items()})


def labels(model: LifecycleModel) -> dict[str, str]:
    """The units the headings name: the currency and the horizons of the model's predictions."""
    h = model.horizons
    money = f", {model.currency}" if model.currency else ""
    ahead = f"next {_span(h.clv_days)}"
    return {"money": money, "clv": f"CLV, {ahead}{money}", "purchases": f"purchases, {ahead}",
            "spend": f"spend, {ahead}{money}", "churn": f"churn probability ({h.churn_days} days)",
            "window": str(h.churn_days), "ahead": ahead, "level": f"{h.interval:.0%}"}


def _span(days: int) -> str:
    """A horizon in words: whole years in months ("12 months"), anything else in days."""
    return f"{days // 365 * 12} months" if days % 365 == 0 else f"{days} days"


def glossary(model: LifecycleModel, units: dict[str, str]) -> list[tuple[str, str]]:
    """(term, meaning) of the words the page uses, with this model's horizons and thresholds."""
    h, bands = model.horizons, model.horizons.risk_bands
    currency = f" in {model.currency}" if model.currency else ""
    return [
        ("Churn", f"no order within {h.churn_days} days (the churn horizon). The churn probability is the chance "
                  f"of that, counted from the report's date."),
        ("Churn risk", f"high at a churn probability of {bands.high:.0%} or more, medium from {bands.medium:.0%}, "
                       "low below."),
        ("CLV", f"customer lifetime value: what the customer's orders over the {units['ahead']} are expected to be "
                f"worth{currency}, discounted at {h.annual_discount_rate:.0%} a year. Customers without an order "
                "have none."),
        ("Value at risk", "CLV x churn probability: the value a customer is expected to take with them."),
        ("Interval", f"the range the true number falls in with {h.interval:.0%} probability (low to high)."),
        ("Stage", "how far a customer has come: " + "; ".join(f"{stage}: {STAGE_MEANINGS[stage]}"
                                                                for stage in STAGES) + "."),
        ("Status", "whether a buyer orders now: active (at their usual rhythm, likely to stay), at risk (overdue or "
                   f"unlikely to order within {h.churn_days} days), lapsed (no order in {h.churn_days} days and "
                   "well past their rhythm), churned (lapsed long ago, or a one-time buyer who lapsed)."),
        ("Segment", "RFM segment: recency, frequency and money spent scored 1-5 against the other buyers, the grid "
                    "of scores named (Champions, Loyal, At risk, ...)."),
        ("Tier", f"value tier: a buyer's place by CLV among all buyers ({', '.join(TOP_TIERS)}, ...)."),
        ("Audience", "a list of customers for one campaign: " + "; ".join(
            f"{a.title.lower()}: {a.who}" for a in AUDIENCES) + "."),
        ("Cohort", "the customers whose first order fell in one month; retention is the share of them who "
                   "ordered in a later month."),
        ("CAC", "customer acquisition cost: what the channel cost per customer it brought."),
        ("NPS, CSAT", "Net Promoter Score: the percentage of 9-10 answers minus that of 0-6 (on 0-10); customer "
                      "satisfaction: the percentage of 4-5 answers (on 1-5)."),
    ]


STAGE_MEANINGS = {
    "awareness": "known, no order and no engagement yet",
    "consideration": "engaged (sessions, product views, cart adds), no order yet",
    "conversion": "one purchase day",
    "retention": "two or more purchase days",
    "advocacy": "a repeat buyer who buys now and much or well, or shows advocacy (reviews, referrals, high NPS)",
}


def _bars(table: pd.DataFrame, column: str) -> list[float | None]:
    """Each row's bar as a share of the table's largest value (None where the value is missing)."""
    values = pd.to_numeric(table[column], errors="coerce")
    top = values.max()
    return [None if pd.isna(v) or not top or top <= 0 else max(float(v), 0) / top for v in values]


def _cohort_grid(cohorts: pd.DataFrame, retention: pd.DataFrame) -> list[dict]:
    """Per cohort: its size, repeat rate and per month since the first order the share who ordered (None: the
    cohort has not reached the month) with the cell's shade (the share against the grid's largest)."""
    shares = retention.set_index(["cohort", "months_since_first"]).retention
    top = shares.max() if len(shares) else 0
    months = range(1, 1 + (int(retention.months_since_first.max()) if len(retention) else 0))
    rows = []
    for row in cohorts.itertuples():
        cells = [shares.get((row.cohort, m)) for m in months]
        rows.append({"cohort": row.cohort, "customers": row.customers, "repeat_rate": row.repeat_rate,
                     "cells": [(share, share / top if top and share is not None else 0.0) for share in cells]})
    return rows


# How each kind of value is written (see ``number``).
NUMBER_FORMATS = {"percent": lambda v: f"{100 * v:.1f}%", "fraction": "{:.2f}".format, "score": "{:.3f}".format,
                  "ratio": "{:,.1f}".format, "money": "{:,.0f}".format, "whole": "{:,.0f}".format,
                  "date": lambda v: f"{pd.Timestamp(v):%Y-%m-%d}", "id": str}


def number(value, kind: str | None = None) -> str:
    """A value as the page writes it: thousands separated, percentages and money rounded, missing as a dash."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if kind in NUMBER_FORMATS:
        return NUMBER_FORMATS[kind](value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}" if isinstance(value, int | float) else str(value)
