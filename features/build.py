"""Point-in-time customer features as DuckDB SQL: one row per customer as of a date.

Only rows with ``timestamp < as_of + 1 day`` are read, so appending data after ``as_of`` cannot
change a feature. The same SQL serves batch and online scoring (the API registers a request's
rows as the same views), so training/serving skew cannot appear. Column meanings are listed in
docs/features.md.

The module is a little over 400 lines on purpose: the feature query is built in steps (orders, events, per
customer, scored) that read in one file, and a split would put halves of one SQL statement in two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Self

import duckdb

from features import rfm
from features.errors import LifecycleError, NotFittedError
from features.params import ActivityRules, FeatureParams, StageRules
from features.sources import Dataset

STAGES = ("awareness", "consideration", "conversion", "retention", "advocacy")

# The per-customer aggregates behind the RFM measures, shared by fit() and the feature query.
_RFM_AGGREGATES = {"last_day": "max(day)", "orders": "count(*)", "total_spend": "sum(amount)"}

# Event counts behind the engagement rates (all history before the cutoff).
_RATE_EVENTS = ("email_send", "email_open", "email_click", "cart_add", "return", "review", "referral")


class FeatureBuilder:
    """Builds the customer feature table; ``fit`` learns what is relative to the training data.

    Learned state, kept on the object so a fitted builder scores one customer or a billion the
    same way: ``rfm_edges_`` (quintile edges of recency, orders and spend over the buyers),
    ``typical_gap_days_`` (the median of the repeat buyers' mean days between purchase days; None
    without repeat buyers, and so no rhythm columns) and
    which optional tables the training data had (``has_events_``, ``has_customers_``), which
    fixes the output schema: engagement and acquisition features exist only if their table did.
    """

    def __init__(self, params: FeatureParams | None = None, stages: StageRules | None = None,
                 churn_horizon_days: int = 90, activity: ActivityRules | None = None):
        self.params = params or FeatureParams()
        self.stages = stages or StageRules()
        self.churn_horizon_days = churn_horizon_days
        self.activity = activity or ActivityRules()
        self.rfm_edges_: dict[str, list[float]] | None = None
        self.typical_gap_days_: float | None = None
        self.has_events_ = False
        self.has_customers_ = False

    def fit(self, data: Dataset, as_of: date) -> Self:
        """Learn the RFM quintile edges and the typical gap from the buyers at ``as_of``, and the feature schema."""
        self.learn_schema(data.report)
        aggregates = ", ".join(f"{sql} AS {name}" for name, sql in _RFM_AGGREGATES.items())
        table = f"buyers_{as_of:%Y%m%d}"
        data.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {aggregates}, min(day) AS first_day, "
                         f"count(DISTINCT day) AS purchase_days FROM ({orders_sql(as_of)}) GROUP BY customer_id")
        self._learn_edges(data.con, as_of, table)
        data.con.execute(f"DROP TABLE {table}")
        return self

    def transform(self, data: Dataset, as_of: date, population: str | None = None) -> duckdb.DuckDBPyRelation:
        """The feature table at ``as_of`` (a lazy DuckDB relation).

        ``population`` names a DuckDB table or view with a ``customer_id`` column: the table then
        has exactly those customers, and one without any history gets the row of a customer we
        know nothing about (no orders, no events: stage awareness).
        """
        return data.con.sql(self.sql(as_of, population))

    def fit_transform(self, data: Dataset, as_of: date) -> duckdb.DuckDBPyRelation:
        """``fit`` and ``transform`` at the same date, reading the orders once.

        The per-customer order aggregates are kept in a temporary DuckDB table (which spills to
        disk under the memory limit); the edges are learned from it and the features built on it.
        """
        self.learn_schema(data.report)
        table = f"per_customer_{as_of:%Y%m%d}"
        data.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {self._per_customer_sql(as_of)}")
        self._learn_edges(data.con, as_of, table)
        return data.con.sql(self._scored_sql(f"({self._base_sql(as_of, per_customer=table)})"))

    def _learn_edges(self, con: duckdb.DuckDBPyConnection, as_of: date, table: str) -> None:
        """Learn from the buyers in ``table`` (a row each, with ``_RFM_AGGREGATES``, ``first_day`` and
        ``purchase_days``).

        Measures in ``rfm.COUNTED`` take their quantiles from the number of buyers with each value.
        """
        measures = f"(SELECT {_fit_measures(as_of)} FROM {table})"
        buyers, gap = con.execute(f"SELECT count(*), median(gap_days) FROM {measures}").fetchall()[0]
        edges = {}
        for score, column in rfm.MEASURES.items():
            if score in rfm.COUNTED:
                counts = con.execute(f"SELECT {column}, count(*) FROM {measures} GROUP BY ALL ORDER BY ALL")
                edges[score] = rfm.quantiles_of_counts(counts.fetchall())
            else:
                quantiles = con.execute(f"SELECT quantile_cont({column}, {list(rfm.QUANTILES)}) FROM {measures}")
                edges[score] = quantiles.fetchall()[0][0]
        self.learn(Learned(buyers, gap, edges))

    def learn(self, learned: Learned) -> Self:
        """Take what a fit learns from the buyers at a date (``fit`` computes it; ``training.spark`` merges it from
        partitions of customers); refuses fewer than 5 buyers."""
        if learned.buyers < 5:
            raise LifecycleError(f"only {learned.buyers} customers bought by the as-of date; need at least 5 to fit")
        gap = learned.typical_gap_days
        self.typical_gap_days_ = None if gap is None else float(gap)  # None: no repeat buyer, no rhythm to learn
        self.rfm_edges_ = {score: [float(edge) for edge in edges] for score, edges in learned.rfm_edges.items()}
        return self

    def learn_schema(self, tables: Iterable[str]) -> Self:
        """Take which optional input tables the training data has (``events``, ``customers``): it fixes the schema."""
        self.has_events_, self.has_customers_ = "events" in tables, "customers" in tables
        return self

    def buyer_measures(self, data: Dataset, as_of: date) -> duckdb.DuckDBPyRelation:
        """Each buyer at ``as_of``: the BTYD summary (``frequency``, ``recency``, ``T``, ``monetary_value``) and what a
        fit learns from (``recency_days``, ``orders``, ``total_spend``; ``gap_days``, the mean days between purchase
        days, NULL for one purchase day): a fit's input, to be merged across partitions of customers."""
        orders = self._per_customer_sql(as_of)
        return data.con.sql(f"SELECT customer_id, {_summary_columns(as_of)}, {_fit_measures(as_of)} "
                            f"FROM ({orders}) AS d")

    def sql(self, as_of: date, population: str | None = None) -> str:
        """The full feature query at ``as_of`` (for everyone known, or for ``population``)."""
        return self._scored_sql(f"({self._base_sql(as_of, population)})")

    def _scored_sql(self, base: str) -> str:
        """The fitted parts (rhythm, RFM scores and segment, stage, evidence) over the unfitted features in ``base``."""
        if self.rfm_edges_ is None:
            raise NotFittedError("FeatureBuilder")
        e, p, a = self.rfm_edges_, self.stages, self.activity
        r = rfm.score_sql("recency_days", e["r"], reverse=True)
        f = rfm.score_sql("orders", e["f"])
        m = rfm.score_sql("total_spend", e["m"])
        # Buying now: within the churn window and at the customer's own rhythm.
        now = f"(NOT lapsed AND recency_gaps <= {a.active_within_gaps})"
        # The segment is named from an R score that agrees with that: a lapsed customer's from the R1-2 row
        # (Can't lose, At risk, ...), one buying now from the R3-5 rows.
        named_r = f"CASE WHEN lapsed THEN least(r, 2) WHEN {now} THEN greatest(r, 3) ELSE r END"
        # Advocacy: a signal of it, or buying much or well *and* buying now.
        advocacy = " OR ".join([
            "_advocacy_events > 0",
            f"coalesce(_latest_nps >= {p.advocacy_min_nps}, false)",
            f"((purchase_days >= {p.advocacy_min_purchases} OR rfm_segment IN ({_list(p.advocacy_segments)})) "
            f"AND {now})",
        ])
        rank = {stage: i for i, stage in enumerate(STAGES)}
        stage_rank = (
            f"CASE WHEN purchase_days >= 2 AND ({advocacy}) THEN {rank['advocacy']} "
            f"WHEN purchase_days >= 2 THEN {rank['retention']} WHEN purchase_days = 1 THEN {rank['conversion']} "
            f"WHEN _high_intent_events > 0 OR _sessions >= {p.consideration_min_sessions} "
            f"THEN {rank['consideration']} ELSE {rank['awareness']} END"
        )
        # Stage names are looked up by rank (past the last stage, the lookup gives NULL).
        names = "[" + ", ".join(f"'{s}'" for s in STAGES) + "]"
        return f"""
        WITH rhythm AS (
            SELECT *, (recency + {self.typical_gap_days_ or "NULL"}) / purchase_days AS typical_gap_days
            FROM {base}
        ),
        scored AS (
            SELECT *, recency_days / typical_gap_days AS recency_gaps,
                coalesce(recency_days > {self.churn_horizon_days}, false) AS lapsed,
                CASE WHEN orders > 0 THEN {r} END AS r,
                CASE WHEN orders > 0 THEN {f} END AS f,
                CASE WHEN orders > 0 THEN {m} END AS m
            FROM rhythm
        ),
        segmented AS (
            SELECT * EXCLUDE (r, f, m), {rfm.segment_sql(f"({named_r})", "((f + m + 1) // 2)")} AS rfm_segment,
                CAST(r AS DOUBLE) AS r_score, CAST(f AS DOUBLE) AS f_score, CAST(m AS DOUBLE) AS m_score
            FROM scored
        ),
        ranked AS (SELECT *, {stage_rank} AS stage_rank FROM segmented)
        SELECT * EXCLUDE (_events, _sessions, _high_intent_events, _advocacy_events, _latest_nps, stage_rank),
            {names}[stage_rank + 1] AS stage, stage_rank,
            {names}[stage_rank + 2] AS next_stage,
            CASE WHEN purchase_days >= 2 THEN 'repeat buyer' WHEN purchase_days = 1 THEN 'one purchase'
                 WHEN _events > 0 THEN 'engagement only' ELSE 'none' END AS evidence
        FROM ranked
        """

    def labels(self, data: Dataset, as_of: date, horizon_days: int, population: str | None = None
               ) -> duckdb.DuckDBPyRelation:
        """Labels from the window (as_of, as_of + horizon]: what each customer at ``as_of`` (or of ``population``, as
        in ``transform``) went on to do.

        ``purchases`` counts purchase days (BTYD transactions), ``orders`` raw orders, ``spend``
        their amount; ``churned`` is no purchase in the window; ``reached_next_stage`` compares the
        stage at the window's end (same fitted edges) with the stage at ``as_of`` (NULL for advocates).
        """
        end = as_of + timedelta(days=horizon_days)
        return data.con.sql(f"""
            WITH now AS ({self.sql(as_of, population)}), later AS ({self.sql(end, population)}),
            window_tx AS ({_window_sql(data, as_of, horizon_days)})
            SELECT now.customer_id, DATE '{as_of}' AS as_of, {horizon_days} AS horizon_days,
                coalesce(w.purchases, 0) AS purchases, coalesce(w.orders, 0) AS orders,
                coalesce(w.spend, 0.0) AS spend, coalesce(w.purchases, 0) = 0 AS churned,
                CASE WHEN now.stage_rank < {len(STAGES) - 1} THEN later.stage_rank > now.stage_rank END
                    AS reached_next_stage
            FROM now LEFT JOIN later USING (customer_id) LEFT JOIN window_tx AS w USING (customer_id)
        """)

    def summary(self, data: Dataset, as_of: date) -> duckdb.DuckDBPyRelation:
        """Each buyer's BTYD summary at ``as_of`` (``frequency``, ``recency``, ``T``, ``monetary_value``, as in the
        feature table), without the other features (whose engagement part costs most where there are events)."""
        orders = self._per_customer_sql(as_of)
        return data.con.sql(f"SELECT customer_id, {_summary_columns(as_of)} FROM ({orders}) AS d")

    @staticmethod
    def window(data: Dataset, as_of: date, horizon_days: int) -> duckdb.DuckDBPyRelation:
        """What customers did in the window (as_of, as_of + horizon]: ``purchases`` (purchase days), ``orders`` and
        ``spend``, one row per customer with an order in it (``labels`` without the features and stages, which cost
        two feature builds: for everyone else all three are 0)."""
        return data.con.sql(_window_sql(data, as_of, horizon_days))

    def _base_sql(self, as_of: date, population: str | None = None, per_customer: str | None = None) -> str:
        """Every feature that needs no fitted edges, one row per known customer (or per ``population``).

        ``per_customer`` names a table that already holds ``_per_customer_sql(as_of)``.
        """
        day = f"DATE '{as_of}'"
        orders = f"SELECT * FROM {per_customer}" if per_customer else self._per_customer_sql(as_of)
        ctes = [f"per_customer AS ({orders})"]
        columns = [self._order_columns(as_of)]
        joins = []
        everyone = ["SELECT customer_id FROM per_customer"]
        if self.has_events_:
            ctes.append(self._events_cte(as_of))
            columns.append(self._event_columns())
            joins.append("LEFT JOIN engagement AS en USING (customer_id)")
            everyone.append("SELECT customer_id FROM engagement")
            helpers = ("coalesce(en.events, 0)", "coalesce(en.sessions, 0)", "coalesce(en.high_intent_events, 0)",
                       "coalesce(en.advocacy_events, 0)", "en.latest_nps")
        else:
            helpers = ("0", "0", "0", "0", "CAST(NULL AS DOUBLE)")
        if self.has_customers_:
            ctes.append(
                "known AS (SELECT customer_id, signup_date, acquisition_channel, acquisition_cost FROM customers "
                f"WHERE signup_date IS NULL OR signup_date < TIMESTAMP '{as_of + timedelta(days=1)}')"
            )
            columns.append(f"CAST({day} - CAST(k.signup_date AS DATE) AS DOUBLE) AS days_since_signup, "
                           "k.acquisition_channel, k.acquisition_cost")
            joins.append("LEFT JOIN known AS k USING (customer_id)")
            everyone.append("SELECT customer_id FROM known")
        columns.append(", ".join(f"{sql} AS {name}" for sql, name in zip(
            helpers, ("_events", "_sessions", "_high_intent_events", "_advocacy_events", "_latest_nps"),
            strict=True)))
        if population is not None:
            everyone = [f"SELECT DISTINCT customer_id FROM {population}"]
        if joins or population is not None:  # customers known from events, the customer table or a list
            ctes.append(f"population AS ({' UNION '.join(everyone)})")
            source = "population LEFT JOIN per_customer AS d USING (customer_id) " + " ".join(joins)
        else:
            source = "per_customer AS d"
        return f"""
        WITH {", ".join(ctes)}
        SELECT customer_id, {day} AS as_of, {", ".join(columns)}
        FROM {source}
        """

    def _per_customer_sql(self, as_of: date) -> str:
        """BTYD summary and order behaviour per buyer, from one ordered pass over the orders."""
        day = f"DATE '{as_of}'"
        window = self.params.trend_window_days
        rfm_aggregates = ", ".join(f"{sql} AS {name}" for name, sql in _RFM_AGGREGATES.items())
        return f"""
        WITH windowed AS (
            SELECT customer_id, day, amount,
                first_value(day) OVER (w ROWS UNBOUNDED PRECEDING) AS first_day,
                lag(day) OVER w AS previous_day
            FROM ({orders_sql(as_of)}) WINDOW w AS (PARTITION BY customer_id ORDER BY day)
        ),
        ordered AS (
            SELECT customer_id, day, amount, first_day, day - previous_day AS step,
                {_week("day")} AS week, {_week("day")} - {_week("previous_day")} AS week_step
            FROM windowed
        )
        SELECT customer_id, {rfm_aggregates}, min(day) AS first_day,
            1 + count(*) FILTER (WHERE step > 0) AS purchase_days,
            1 + count(*) FILTER (WHERE week_step > 0) AS weeks,
            fsum(amount) FILTER (WHERE day > first_day) AS repeat_spend,
            fsum(amount) FILTER (WHERE week > {_week("first_day")}) AS repeat_week_spend,
            sum(amount) FILTER (WHERE day = first_day) AS first_order_value,
            stddev_samp(amount) AS spend_std,
            sum(step * step) AS squared_steps,
            count(*) FILTER (WHERE day > {day} - {window}) AS orders_recent,
            coalesce(sum(amount) FILTER (WHERE day > {day} - {window}), 0.0) AS spend_recent
        FROM ordered GROUP BY customer_id
        """

    def _order_columns(self, as_of: date) -> str:
        day = f"DATE '{as_of}'"
        window = self.params.trend_window_days
        earlier_days = f"nullif(({day} - {window}) - d.first_day + 1, 0)"
        # The gaps between purchase days: BTYD frequency counts them and recency is their sum (the span
        # from first to last day); their mean and std come from count, sum and sum of squares, exactly in
        # integers up to the last division.
        gaps, span = "(d.purchase_days - 1)", "(d.last_day - d.first_day)"
        return f"""
            {_summary_columns(as_of)},
            CAST(d.weeks - 1 AS DOUBLE) AS frequency_weeks,
            CAST({_week("d.last_day")} - {_week("d.first_day")} AS DOUBLE) AS recency_weeks,
            CAST({_week(day)} - {_week("d.first_day")} AS DOUBLE) AS T_weeks,
            coalesce(d.repeat_week_spend / nullif(d.weeks - 1, 0), 0.0) AS monetary_value_weeks,
            CAST({day} - d.last_day AS DOUBLE) AS recency_days,
            coalesce(d.orders, 0) AS orders,
            coalesce(d.purchase_days, 0) AS purchase_days,
            coalesce(d.total_spend, 0.0) AS total_spend,
            d.total_spend / d.orders AS avg_order_value,
            CAST({day} - d.first_day AS DOUBLE) AS tenure_days,
            d.first_order_value, d.spend_std,
            {span} / nullif({gaps}, 0) AS mean_days_between,
            sqrt(CAST({gaps} * d.squared_steps - {span} * {span} AS DOUBLE) / nullif({gaps} * ({gaps} - 1), 0))
                AS std_days_between,
            coalesce(d.orders_recent, 0) AS orders_recent,
            30.0 * (d.orders_recent / {window} - (d.orders - d.orders_recent) / {earlier_days}) AS order_rate_trend,
            30.0 * (d.spend_recent / {window} - (d.total_spend - d.spend_recent) / {earlier_days}) AS spend_trend"""

    def _events_cte(self, as_of: date) -> str:
        """``engagement``: per event type, windowed counts and recency; the counts behind the rates.

        Events are counted per customer and type in one pass, then spread into columns over those
        few rows per customer (``max`` picks the one row of a type; a missing type stays NULL).
        """
        p, day = self.params, f"DATE '{as_of}'"
        windows = ", ".join(f"count(*) FILTER (WHERE day > {day} - {w}) AS in_{w}d" for w in p.windows_days)
        counts = ", ".join(f"max(in_{w}d) FILTER (WHERE event_type = '{t}') AS {t}_{w}d"
                           for t in p.event_types for w in p.windows_days)
        since = ", ".join(f"CAST({day} - max(last_day) FILTER (WHERE event_type = '{t}') AS DOUBLE) AS days_since_{t}"
                          for t in p.event_types)
        totals = ", ".join(f"max(n) FILTER (WHERE event_type = '{t}') AS n_{t}" for t in _RATE_EVENTS)
        return f"""
        typed AS (
            SELECT customer_id, event_type, count(*) AS n, max(day) AS last_day, {windows},
                arg_max(value, timestamp) FILTER (WHERE event_type = 'nps' AND value IS NOT NULL) AS latest_nps
            FROM (SELECT *, CAST(timestamp AS DATE) AS day FROM events
                  WHERE timestamp < TIMESTAMP '{as_of + timedelta(days=1)}')
            GROUP BY customer_id, event_type
        ),
        engagement AS (
            SELECT customer_id, {counts}, {since}, {totals},
                sum(n) AS events, coalesce(max(n) FILTER (WHERE event_type = 'session'), 0) AS sessions,
                CAST(coalesce(sum(n) FILTER (WHERE event_type IN ({_list(self.stages.high_intent_events)})), 0)
                     AS BIGINT) AS high_intent_events,
                CAST(coalesce(sum(n) FILTER (WHERE event_type IN ({_list(self.stages.advocacy_events)})), 0)
                     AS BIGINT) AS advocacy_events,
                max(latest_nps) AS latest_nps
            FROM typed GROUP BY customer_id
        )"""

    def _event_columns(self) -> str:
        p = self.params
        return f"""
            {", ".join(f"coalesce(en.{t}_{w}d, 0) AS {t}_{w}d" for t in p.event_types for w in p.windows_days)},
            {", ".join(f"en.days_since_{t}" for t in p.event_types)},
            en.n_email_open / nullif(en.n_email_send, 0) AS email_open_rate,
            en.n_email_click / nullif(en.n_email_send, 0) AS email_click_rate,
            d.orders / nullif(en.n_cart_add, 0) AS cart_to_order_rate,
            coalesce(en.n_return, 0) / nullif(d.orders, 0) AS return_rate,
            coalesce(en.n_review, 0) AS reviews, coalesce(en.n_referral, 0) AS referrals,
            en.latest_nps"""


@dataclass(frozen=True)
class Learned:
    """What ``FeatureBuilder.fit`` learns from the buyers at a date."""

    buyers: int
    typical_gap_days: float | None  # the median of the repeat buyers' mean days between purchase days
    rfm_edges: dict[str, list[float]]  # the RFM measures' quintile edges, by score (``rfm.MEASURES``)


def _fit_measures(as_of: date) -> str:
    """What a fit learns from, over a ``_per_customer_sql`` row (of a buyer)."""
    return (f"DATE '{as_of}' - last_day AS recency_days, orders, total_spend, "
            "CASE WHEN purchase_days > 1 THEN (last_day - first_day) / (purchase_days - 1) END AS gap_days")


def _summary_columns(as_of: date) -> str:
    """The BTYD summary in days (lifetimes' frequency, recency, T, monetary_value) over a ``_per_customer_sql`` row
    ``d``."""
    gaps = "(d.purchase_days - 1)"
    return f"""CAST({gaps} AS DOUBLE) AS frequency,
            CAST(d.last_day - d.first_day AS DOUBLE) AS recency,
            CAST(DATE '{as_of}' - d.first_day AS DOUBLE) AS T,
            coalesce(d.repeat_spend / nullif({gaps}, 0), 0.0) AS monetary_value"""


def _window_sql(data: Dataset, as_of: date, horizon_days: int) -> str:
    """Per customer with an order in (as_of, as_of + horizon]: purchase days, orders and spend there; refuses a window
    that runs past the data."""
    end = as_of + timedelta(days=horizon_days)
    last = data.date_range()[1]
    if last is None or last.date() < end:
        raise LifecycleError(
            f"labels over {horizon_days} days after {as_of} need data through {end}; "
            + (f"transactions end {last:%Y-%m-%d}" if last else "there are no transactions")
        )
    return f"""
        SELECT customer_id, count(DISTINCT CAST(timestamp AS DATE)) AS purchases, count(*) AS orders,
            fsum(amount) AS spend
        FROM transactions
        WHERE timestamp >= TIMESTAMP '{as_of + timedelta(days=1)}' AND timestamp < TIMESTAMP '{end + timedelta(days=1)}'
        GROUP BY customer_id
    """


def orders_sql(as_of: date) -> str:
    """Valid orders on or before ``as_of``, with their day."""
    return (
        "SELECT customer_id, CAST(timestamp AS DATE) AS day, amount FROM transactions "
        f"WHERE timestamp < TIMESTAMP '{as_of + timedelta(days=1)}'"
    )


def _week(day: str) -> str:
    """The number of the calendar week (Monday to Sunday) of ``day`` (a DATE), counted from 0001-01-01.

    That day was a Monday, so the count is never negative. Integer arithmetic costs less than
    ``date_trunc('week', ...)``, and this runs three times per order.
    """
    return f"(({day} - DATE '0001-01-01') // 7)"


def _list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"
