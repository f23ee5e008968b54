"""Who to reach with what: the suggested action per RFM segment, and the audiences of the lifecycle report.

An audience is a list of customers one campaign is for, picked from the scored records by a rule on their
churn risk, value tier, activity status and purchases. ``write_audiences`` writes each one as a CSV (one row per
customer, with what a campaign needs: when they last ordered, what they spent and are expected to be worth, how
likely they are to leave, when they would order next), most urgent or most valuable first. A customer can be in
more than one (a VIP at medium risk is also at risk). Definitions: docs/usage.md, "Lifecycle report".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features.files import sql_literal, write_relation
from models.actions import TIERS

NO_PURCHASE = "(no purchase)"  # the segment of a prospect (customers without an order have no RFM scores)

# What to do with each RFM segment (the widely used playbook for the R x FM grid), the prospects last.
SEGMENT_ACTIONS = {
    "Champions": "reward them: early access, ask for reviews and referrals; no discounts needed",
    "Loyal": "loyalty programme, early access, cross-sell",
    "Potential loyalist": "membership offers, recommendations after each order",
    "New": "onboarding series: the second order is the big step",
    "Promising": "build the habit: recommendations and a small incentive for the next order",
    "Need attention": "reactivate with personal picks and a time-limited offer",
    "About to sleep": "reconnect with popular products before they lapse",
    "Can't lose": "win back now, personally: their best offer, ask what went wrong",
    "At risk": "win-back series with personal picks",
    "Hibernating": "cheap channels only: a reminder of other categories",
    "Lost": "leave out of costly campaigns; a broad, low-cost revival at most",
    NO_PURCHASE: "convert: a first-order incentive and nurturing content",
}
TOP_TIERS = TIERS[:3]  # the top 10 % of buyers by CLV
_TOP = "(" + ", ".join(sql_literal(tier) for tier in TOP_TIERS) + ")"

# Each customer's line in an audience file.
CAMPAIGN_FIELDS = """customer_id, rfm_segment, activity_status, value_tier, frequency + 1 AS purchase_days,
    CAST(as_of AS DATE) - CAST(recency_days AS INTEGER) AS last_order_date, total_spend, clv, churn_probability,
    churn_risk, clv * churn_probability AS value_at_risk, CAST(next_order_date AS DATE) AS next_order_date"""


@dataclass(frozen=True)
class Audience:
    """One campaign's customers: the records ``where`` holds for, in the order of ``order``."""

    name: str  # the file's name, without .csv
    title: str
    who: str  # the rule, in words
    action: str
    where: str  # SQL over the scored records
    order: str


AUDIENCES = (
    Audience("win_back", "Win back", "high churn risk, in the top 10 % by CLV, not churned yet",
             "a personal offer or a call now: valuable, and leaving",
             f"churn_risk = 'high' AND value_tier IN {_TOP} AND activity_status <> 'churned'",
             "value_at_risk DESC"),
    Audience("second_order", "Second order", "one purchase so far, not churned, churn risk below high",
             "make the second order easy: a welcome series, recommendations, a small incentive",
             "frequency = 0 AND activity_status <> 'churned' AND churn_risk <> 'high'",
             "churn_probability, clv DESC"),
    Audience("vip", "VIP", "in the top 10 % by CLV and active", SEGMENT_ACTIONS["Champions"],
             f"value_tier IN {_TOP} AND activity_status = 'active'", "clv DESC"),
    Audience("at_risk", "At risk", "medium churn risk, not churned",
             "reconnect before they lapse: personal picks, a time-limited offer",
             "churn_risk = 'medium' AND activity_status <> 'churned'", "value_at_risk DESC"),
)
FOLDER = "audiences"


def write_audiences(con, out: Path) -> list[dict]:
    """Write each audience of the ``scores`` view to ``out/audiences/NAME.csv``; per audience, its title, rule,
    action, customers, their CLV and the file's path relative to ``out``."""
    totals = con.execute("SELECT " + ", ".join(
        f"count(*) FILTER (WHERE {a.where}), coalesce(sum(clv) FILTER (WHERE {a.where}), 0)" for a in AUDIENCES)
        + " FROM scores").fetchall()[0]  # every audience's size and CLV in one pass over the records
    rows = []
    for i, audience in enumerate(AUDIENCES):
        path = Path(FOLDER) / f"{audience.name}.csv"
        write_relation(con.sql(f"SELECT {CAMPAIGN_FIELDS} FROM scores WHERE {audience.where} "
                               f"ORDER BY {audience.order}, customer_id"), out / path)
        rows.append({"audience": audience.title, "who": audience.who, "customers": totals[2 * i],
                     "clv": totals[2 * i + 1], "action": audience.action, "file": path.as_posix()})
    return rows
