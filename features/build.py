"""Point-in-time customer features as DuckDB SQL: one row per customer as of a date.

Only rows with ``timestamp < as_of + 1 day`` are read, so appending data after ``as_of`` cannot
change a feature. The same SQL serves batch and online scoring (the API registers a request's
rows as the same views), so training/serving skew cannot appear. Column meanings are listed in
docs/features.md.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Self

import duckdb

from features import rfm
from features.errors import LifecycleError
from features.params import FeatureParams, StageRules
from features.sources import Dataset

STAGES = ("awareness", "consideration", "conversion", "retention", "advocacy")


class FeatureBuilder:
    """Builds the customer feature table; ``fit`` learns the population-relative parts.

    What it learns (``rfm_edges_``: quintile edges of recency, orders and spend over the buyers)
    is kept on the object, so a fitted builder scores one customer or a billion identically.
    """

    def __init__(self, params: FeatureParams | None = None, stages: StageRules | None = None,
                 churn_horizon_days: int = 90):
        self.params = params or FeatureParams()
        self.stages = stages or StageRules()
        self.churn_horizon_days = churn_horizon_days
        self.rfm_edges_: dict[str, list[float]] | None = None

    def fit(self, data: Dataset, as_of: date) -> Self:
        """Learn RFM quintile edges from the buyers in the population at ``as_of``."""
        measures = ", ".join(
            f"quantile_cont({column}, {list(rfm.QUANTILES)}) AS {score}" for score, column in rfm.MEASURES.items()
        )
        rows = data.con.execute(
            f"WITH base AS ({self._base_sql(as_of)}) SELECT count(*), {measures} FROM base WHERE orders > 0"
        ).fetchall()[0]
        if rows[0] < 5:
            raise LifecycleError(f"only {rows[0]} customers bought on or before {as_of}; need at least 5")
        self.rfm_edges_ = {score: [float(v) for v in edges] for score, edges in zip(rfm.MEASURES, rows[1:])}
        return self

    def transform(self, data: Dataset, as_of: date) -> duckdb.DuckDBPyRelation:
        """The feature table at ``as_of`` (a lazy DuckDB relation)."""
        return data.con.sql(self.sql(as_of))

    def sql(self, as_of: date) -> str:
        """The full feature query at ``as_of``."""
        if self.rfm_edges_ is None:
            raise LifecycleError("FeatureBuilder is not fitted: call fit() first")
        e, p = self.rfm_edges_, self.stages
        r = rfm.score_sql("recency_days", e["r"], reverse=True)
        f = rfm.score_sql("orders", e["f"])
        m = rfm.score_sql("total_spend", e["m"])
        advocacy = " OR ".join([
            f"purchase_days >= {p.advocacy_min_purchases}",
            f"rfm_segment IN ({_list(p.advocacy_segments)})",
            "advocacy_events > 0",
            f"coalesce(latest_nps >= {p.advocacy_min_nps}, false)",
        ])
        stage = (
            f"CASE WHEN purchase_days >= 2 AND ({advocacy}) THEN 'advocacy' "
            "WHEN purchase_days >= 2 THEN 'retention' WHEN purchase_days = 1 THEN 'conversion' "
            f"WHEN high_intent_events > 0 OR sessions >= {p.consideration_min_sessions} THEN 'consideration' "
            "ELSE 'awareness' END"
        )
        rank = "CASE stage " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES)) + " END"
        following = "CASE stage " + " ".join(
            f"WHEN '{s}' THEN '{n}'" for s, n in zip(STAGES, STAGES[1:], strict=False)
        ) + " END"
        return f"""
        WITH base AS ({self._base_sql(as_of)}),
        scored AS (
            SELECT base.*,
                CASE WHEN orders > 0 THEN {r} END AS r_score,
                CASE WHEN orders > 0 THEN {f} END AS f_score,
                CASE WHEN orders > 0 THEN {m} END AS m_score
            FROM base
        ),
        segmented AS (
            SELECT *, {rfm.segment_sql("r_score", "((f_score + m_score + 1) // 2)")} AS rfm_segment FROM scored
        ),
        staged AS (SELECT *, {stage} AS stage FROM segmented)
        SELECT * EXCLUDE (sessions, high_intent_events, advocacy_events),
            {rank} AS stage_rank,
            coalesce(recency_days > {self.churn_horizon_days}, false) AS lapsed,
            {following} AS next_stage
        FROM staged
        ORDER BY customer_id
        """

    def labels(self, data: Dataset, as_of: date, horizon_days: int) -> duckdb.DuckDBPyRelation:
        """Labels from the window (as_of, as_of + horizon]: what each customer at ``as_of`` went on to do.

        ``purchases`` counts purchase days (BTYD transactions), ``orders`` raw orders, ``spend``
        their amount; ``churned`` is no purchase in the window; ``reached_next_stage`` compares the
        stage at the window's end (same fitted edges) with the stage at ``as_of`` (NULL for advocates).
        """
        end = as_of + timedelta(days=horizon_days)
        last = data.date_range()[1]
        if last is None or last.date() < end:
            raise LifecycleError(
                f"labels over {horizon_days} days after {as_of} need data through {end}; "
                f"transactions end {last:%Y-%m-%d}" if last else "no transactions"
            )
        return data.con.sql(f"""
            WITH now AS ({self.sql(as_of)}), later AS ({self.sql(end)}),
            window_tx AS (
                SELECT customer_id, count(DISTINCT CAST(timestamp AS DATE)) AS purchases,
                    count(*) AS orders, fsum(amount) AS spend
                FROM transactions
                WHERE timestamp >= TIMESTAMP '{as_of + timedelta(days=1)}'
                  AND timestamp < TIMESTAMP '{end + timedelta(days=1)}'
                GROUP BY customer_id
            )
            SELECT now.customer_id, DATE '{as_of}' AS as_of, {horizon_days} AS horizon_days,
                coalesce(w.purchases, 0) AS purchases, coalesce(w.orders, 0) AS orders,
                coalesce(w.spend, 0.0) AS spend, coalesce(w.purchases, 0) = 0 AS churned,
                CASE WHEN now.stage_rank < {len(STAGES) - 1} THEN later.stage_rank > now.stage_rank END
                    AS reached_next_stage
            FROM now LEFT JOIN later USING (customer_id) LEFT JOIN window_tx AS w USING (customer_id)
            ORDER BY now.customer_id
        """)

    def _base_sql(self, as_of: date) -> str:
        """Every feature that needs no fitted state, one row per known customer at ``as_of``."""
        p = self.params
        cutoff = f"TIMESTAMP '{as_of + timedelta(days=1)}'"
        day = f"DATE '{as_of}'"
        week = f"DATE '{as_of - timedelta(days=as_of.weekday())}'"
        window = p.trend_window_days
        counts = ", ".join(
            f"count(*) FILTER (WHERE event_type = '{t}' AND day > {day} - {w}) AS {t}_{w}d"
            for t in p.event_types for w in p.windows_days
        )
        since = ", ".join(
            f"{day} - max(day) FILTER (WHERE event_type = '{t}') AS days_since_{t}" for t in p.event_types
        )
        per_type = "".join(
            f", count(*) FILTER (WHERE event_type = '{t}') AS n_{t}" for t in
            ("session", "email_send", "email_open", "email_click", "cart_add", "return", "review", "referral")
        )
        return f"""
        WITH tx AS (
            SELECT customer_id, CAST(timestamp AS DATE) AS day, amount
            FROM transactions WHERE timestamp < {cutoff}
        ),
        tx_days AS (
            SELECT customer_id, day, {_sum('amount')} AS amount, count(*) AS orders
            FROM tx GROUP BY customer_id, day
        ),
        ranked_days AS (
            SELECT *, row_number() OVER w AS k, day - lag(day) OVER w AS gap
            FROM tx_days WINDOW w AS (PARTITION BY customer_id ORDER BY day)
        ),
        daily AS (
            SELECT customer_id,
                count(*) AS purchase_days, CAST(sum(orders) AS BIGINT) AS orders,
                min(day) AS first_day, max(day) AS last_day,
                coalesce({_sum('amount', 'k > 1')} / count(*) FILTER (WHERE k > 1), 0.0)
                    AS monetary_value,
                fsum(amount) AS total_spend,
                fsum(amount) FILTER (WHERE k = 1) AS first_order_value,
                avg(gap) AS mean_days_between, stddev_samp(gap) AS std_days_between,
                CAST(coalesce(sum(orders) FILTER (WHERE day > {day} - {window}), 0) AS BIGINT) AS orders_recent,
                coalesce(fsum(amount) FILTER (WHERE day > {day} - {window}), 0.0) AS spend_recent
            FROM ranked_days GROUP BY customer_id
        ),
        order_spread AS (
            SELECT customer_id, stddev_samp(amount) AS spend_std FROM tx GROUP BY customer_id
        ),
        tx_weeks AS (
            SELECT customer_id, week, amount, row_number() OVER (PARTITION BY customer_id ORDER BY week) AS k
            FROM (SELECT customer_id, CAST(date_trunc('week', day) AS DATE) AS week, {_sum('amount')} AS amount
                  FROM tx GROUP BY customer_id, week)
        ),
        weekly AS (
            SELECT customer_id, count(*) - 1.0 AS frequency_weeks,
                (max(week) - min(week)) / 7.0 AS recency_weeks,
                ({week} - min(week)) / 7.0 AS T_weeks,
                coalesce({_sum('amount', 'k > 1')} / count(*) FILTER (WHERE k > 1), 0.0)
                    AS monetary_value_weeks
            FROM tx_weeks GROUP BY customer_id
        ),
        ev AS (
            SELECT customer_id, CAST(timestamp AS DATE) AS day, timestamp, event_type, value
            FROM events WHERE timestamp < {cutoff}
        ),
        engagement AS (
            SELECT customer_id, {counts}, {since}{per_type},
                count(*) FILTER (WHERE event_type = 'session') AS sessions,
                count(*) FILTER (WHERE event_type IN ({_list(self.stages.high_intent_events)})) AS high_intent_events,
                count(*) FILTER (WHERE event_type IN ({_list(self.stages.advocacy_events)})) AS advocacy_events,
                arg_max(value, timestamp) FILTER (WHERE event_type = 'nps' AND value IS NOT NULL) AS latest_nps
            FROM ev GROUP BY customer_id
        ),
        known AS (
            SELECT customer_id, signup_date, acquisition_channel, acquisition_cost
            FROM customers WHERE signup_date IS NULL OR signup_date < {cutoff}
        ),
        population AS (
            SELECT customer_id FROM daily UNION SELECT customer_id FROM engagement
            UNION SELECT customer_id FROM known
        )
        SELECT
            population.customer_id, {day} AS as_of,
            CAST(d.purchase_days - 1 AS DOUBLE) AS frequency,
            CAST(d.last_day - d.first_day AS DOUBLE) AS recency,
            CAST({day} - d.first_day AS DOUBLE) AS T,
            d.monetary_value,
            wk.frequency_weeks, wk.recency_weeks, wk.T_weeks, wk.monetary_value_weeks,
            {day} - d.last_day AS recency_days,
            coalesce(d.orders, 0) AS orders,
            coalesce(d.purchase_days, 0) AS purchase_days,
            coalesce(d.total_spend, 0.0) AS total_spend,
            d.total_spend / d.orders AS avg_order_value,
            {day} - d.first_day AS tenure_days,
            d.first_order_value, os.spend_std, d.mean_days_between, d.std_days_between,
            coalesce(d.orders_recent, 0) AS orders_recent,
            30.0 * (d.orders_recent / {window}
                - (d.orders - d.orders_recent) / nullif(({day} - {window}) - d.first_day + 1, 0))
                AS order_rate_trend,
            30.0 * (d.spend_recent / {window}
                - (d.total_spend - d.spend_recent) / nullif(({day} - {window}) - d.first_day + 1, 0))
                AS spend_trend,
            {", ".join(f"coalesce(en.{t}_{w}d, 0) AS {t}_{w}d" for t in p.event_types for w in p.windows_days)},
            {", ".join(f"en.days_since_{t}" for t in p.event_types)},
            en.n_email_open / nullif(en.n_email_send, 0) AS email_open_rate,
            en.n_email_click / nullif(en.n_email_send, 0) AS email_click_rate,
            d.orders / nullif(en.n_cart_add, 0) AS cart_to_order_rate,
            coalesce(en.n_return, 0) / nullif(d.orders, 0) AS return_rate,
            coalesce(en.n_review, 0) AS reviews, coalesce(en.n_referral, 0) AS referrals,
            en.latest_nps,
            {day} - CAST(k.signup_date AS DATE) AS days_since_signup,
            k.acquisition_channel, k.acquisition_cost,
            coalesce(en.sessions, 0) AS sessions,
            coalesce(en.high_intent_events, 0) AS high_intent_events,
            coalesce(en.advocacy_events, 0) AS advocacy_events
        FROM population
        LEFT JOIN daily AS d USING (customer_id)
        LEFT JOIN weekly AS wk USING (customer_id)
        LEFT JOIN order_spread AS os USING (customer_id)
        LEFT JOIN engagement AS en USING (customer_id)
        LEFT JOIN known AS k USING (customer_id)
        """


def _sum(column: str, where: str = "true") -> str:
    """SQL for a group sum that rounds like pandas' Kahan-compensated group sums.

    Kahan summation of one or two values is plain IEEE addition, and for longer groups it is
    near correctly-rounded, like DuckDB's ``fsum`` (which is not plain addition for two values).
    """
    return (f"CASE WHEN count(*) FILTER (WHERE {where}) <= 2 THEN sum({column}) FILTER (WHERE {where}) "
            f"ELSE fsum({column}) FILTER (WHERE {where}) END")


def _list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"
