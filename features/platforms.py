"""Shop platforms' exports recognised by their headers, and the settings that read each as it is (``lifecycle init``).

A preset names the platform's columns for ours, the rows that are not purchases, how line items roll up and where
the currency and refunds are; a file no preset knows gets its columns guessed from common names, in any case
(``ORDER_NAMES``; ``EVENT_NAMES`` and ``CUSTOMER_NAMES`` for the other tables).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb

from features.files import ident, raw_relation
from features.tables import TableSource, row_filter

SAMPLE_ROWS = 5000  # rows read to decide the currency and to show a status column's values


@dataclass(frozen=True)
class Preset:
    """How to read one platform's export: ``columns`` (ours -> theirs, the first of each tuple the file has),
    ``exclude`` filters (kept only where the file has their column), ``line_items``, and why each is so."""

    platform: str
    signature: frozenset[str]  # headers every export of the platform has
    columns: dict[str, tuple[str, ...]]
    exclude: tuple[str, ...] = ()
    line_items: str | None = None
    emails: bool = False
    notes: tuple[str, ...] = ()

    def matches(self, headers: list[str]) -> bool:
        return self.signature <= set(headers)


PRESETS = (
    Preset(
        "Shopify orders export", frozenset({"Name", "Email", "Financial Status", "Created at", "Total",
                                            "Lineitem quantity"}),
        {"customer_id": ("Email",), "timestamp": ("Created at",), "amount": ("Total",), "order_id": ("Name",),
         "refunded": ("Refunded Amount",), "currency": ("Currency",)},
        exclude=("Financial Status in [voided, expired]", "Cancelled at is not empty", "Payment Method in [bogus]"),
        line_items="first", emails=True,
        notes=("one row per line item: the order's totals, status and refunds are on its first line",
               "not purchases: voided or expired payments, cancelled orders and the Bogus gateway's test orders",
               "customers are their emails, trimmed and in any case; refunds are netted into spend")),
    Preset(
        "WooCommerce export (Advanced Order Export)", frozenset({"Order Number", "Order Status", "Order Date",
                                                                 "Order Total Amount"}),
        {"customer_id": ("Email (Billing)", "Customer User Email"), "timestamp": ("Order Date",),
         "amount": ("Order Total Amount",), "order_id": ("Order Number",), "refunded": ("Order Refund Amount",),
         "currency": ("Currency", "Order Currency")},
        exclude=("Order Status in [cancelled, failed, pending payment, pending, draft, checkout-draft, trash, "
                 "wc-cancelled, wc-failed, wc-pending, wc-checkout-draft]",),
        line_items="first", emails=True,
        notes=("one row per product, the order's columns repeated on each",
               "not purchases: cancelled, failed, unpaid and draft orders",
               "customers are their billing emails, trimmed and in any case; refunds are netted into spend")),
    Preset(
        "Stripe payments export", frozenset({"id", "Amount", "Amount Refunded", "Currency", "Status", "Captured"}),
        {"customer_id": ("Customer Email", "Customer ID"), "timestamp": ("Created date (UTC)", "Created (UTC)"),
         "amount": ("Converted Amount", "Amount"), "order_id": ("id",),
         "refunded": ("Converted Amount Refunded", "Amount Refunded"), "currency": ("Converted Currency", "Currency")},
        exclude=("Status in [failed, canceled, pending, requires_payment_method, requires_action, blocked]",
                 "Captured in [false]"),
        emails=True,
        notes=("one row per payment; amounts in the account's settlement currency (Converted Amount) where given",
               "not purchases: failed, cancelled, pending and uncaptured payments",
               "customers are their emails, trimmed and in any case; refunds are netted into spend")),
)

# Our columns by the names shops commonly give them (compared in any case, spaces, dashes and underscores alike).
ORDER_NAMES = {
    "customer_id": ("customer_id", "customer", "customer_email", "email", "user_id", "client_id", "buyer_id",
                    "member_id", "cust_id", "customer_number", "billing_email"),
    "timestamp": ("timestamp", "created_at", "order_date", "date", "datetime", "purchase_date", "invoice_date",
                  "transaction_date", "order_datetime", "time", "paid_at"),
    "amount": ("amount", "total", "order_total", "total_price", "grand_total", "revenue", "sales", "net_sales",
               "order_value", "value", "price", "total_amount"),
    "order_id": ("order_id", "order_number", "order", "invoice", "invoice_no", "invoice_number", "transaction_id"),
    "refunded": ("refunded", "refunded_amount", "refund_amount", "amount_refunded", "total_refunded"),
    "currency": ("currency", "currency_code", "order_currency"),
}
EVENT_NAMES = {
    "customer_id": ORDER_NAMES["customer_id"], "timestamp": ORDER_NAMES["timestamp"],
    "event_type": ("event_type", "event", "event_name", "type", "action", "activity"), "value": ("value", "score"),
}
CUSTOMER_NAMES = {
    "customer_id": ORDER_NAMES["customer_id"],
    "signup_date": ("signup_date", "signed_up_at", "created_at", "registered_at", "registration_date", "first_seen"),
    "acquisition_channel": ("acquisition_channel", "channel", "source", "utm_source", "referrer"),
    "acquisition_cost": ("acquisition_cost", "cac", "cost"),
}


@dataclass
class Reading:
    """What ``lifecycle init`` decided for one orders file: the source, the platform (None: guessed), the currency
    found, and lines for the user (decided, not found, warnings)."""

    source: TableSource
    platform: str | None
    emails: bool = False
    currency: str | None = None
    decided: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sample(path: str) -> tuple[list[str], duckdb.DuckDBPyConnection, str]:
    """The headers of a CSV or Parquet file (or glob), and a connection with a view of its first ``SAMPLE_ROWS``."""
    con = duckdb.connect()
    raw = raw_relation(con, "sample", TableSource(path=path))
    con.execute(f"CREATE TEMP TABLE sampled AS SELECT * FROM {raw} LIMIT {SAMPLE_ROWS}")
    return [row[0] for row in con.execute("DESCRIBE sampled").fetchall()], con, "sampled"


def read_orders(path: str) -> Reading:
    """Recognise an orders export by its headers (``PRESETS``) or guess its columns (``ORDER_NAMES``)."""
    headers, con, table = sample(path)
    preset = next((p for p in PRESETS if p.matches(headers)), None)
    if preset is not None:
        columns = {ours: next(c for c in theirs if c in headers) for ours, theirs in preset.columns.items()
                   if any(c in headers for c in theirs)}
        exclude = [rule for rule in preset.exclude if _filter_column(rule) in headers]
        reading = Reading(TableSource(path=path, columns=columns, exclude=exclude, line_items=preset.line_items),
                          preset.platform, preset.emails, decided=[f"recognised a {preset.platform}", *preset.notes])
    else:
        columns = _guess(headers, ORDER_NAMES)
        reading = Reading(TableSource(path=path, columns={k: v for k, v in columns.items() if v != k}), None,
                          decided=[f"columns guessed from their names: {_listed(columns)}"])
        if "@" in _first_value(con, table, columns.get("customer_id")):
            reading.emails = True
            reading.decided.append("customer ids look like emails: compared trimmed and in any case")
    found = {**{ours: ours for ours in headers if ours in ORDER_NAMES}, **reading.source.columns}
    reading.missing = [f"no column for {ours} (set inputs.transactions.columns.{ours})"
                       for ours in ("customer_id", "timestamp", "amount") if ours not in found]
    if "currency" in found:
        code = f"upper(trim(CAST({ident(found['currency'])} AS VARCHAR)))"
        codes = [c for (c,) in con.execute(
            f"SELECT DISTINCT {code} FROM {table} WHERE NULLIF({code}, '') IS NOT NULL ORDER BY 1").fetchall()]
        if len(codes) == 1:
            reading.currency = codes[0]
        elif codes:
            reading.warnings.append(f"the orders name {len(codes)} currencies ({', '.join(codes)}): set currency to "
                                    "the one to keep (orders in the others are rejected)")
    reading.warnings += _unfiltered_statuses(con, table, headers, reading.source)
    return reading


def guess_table(path: str) -> tuple[str, TableSource]:
    """Engagement events (a column like ``event_type``) or a customer table, and its columns guessed from their
    names."""
    headers, _, _ = sample(path)
    table, names = ("events", EVENT_NAMES) if _guess(headers, {"e": EVENT_NAMES["event_type"]}) else (
        "customers", CUSTOMER_NAMES)
    columns = _guess(headers, names)
    return table, TableSource(path=path, columns={k: v for k, v in columns.items() if v != k})


def _guess(headers: list[str], names: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Ours -> the first header that is one of its common names (in any case, ``-``, `` `` and ``_`` alike), each
    header used once."""
    plain = {_plain(h): h for h in reversed(headers)}  # the first of two alike wins
    found: dict[str, str] = {}
    for ours, alike in names.items():
        header = next((plain[_plain(n)] for n in alike if plain.get(_plain(n)) not in (None, *found.values())), None)
        if header is not None:
            found[ours] = header
    return found


def _plain(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def _listed(columns: dict[str, str]) -> str:
    return ", ".join(f"{ours} = {theirs!r}" for ours, theirs in columns.items()) or "none"


def _first_value(con, table: str, column: str | None) -> str:
    if column is None:
        return ""
    found = con.execute(f"SELECT CAST({ident(column)} AS VARCHAR) FROM {table} WHERE {ident(column)} IS NOT NULL "
                        "LIMIT 1").fetchall()
    return found[0][0] if found else ""


def _filter_column(rule: str) -> str:
    return row_filter(rule).column


def _unfiltered_statuses(con, table: str, headers: list[str], source: TableSource) -> list[str]:
    """A warning for each status-like column no row filter reads, with its values in the sample."""
    filtered = {_filter_column(rule) for rule in [*source.exclude, *source.include]}
    warnings = []
    for column in headers:
        if "status" not in column.lower() or column in filtered:
            continue
        values = con.execute(f"SELECT lower(trim(CAST({ident(column)} AS VARCHAR))) AS v, count(*) FROM {table} "
                             "WHERE v IS NOT NULL AND v <> '' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 8").fetchall()
        if values:
            shown = ", ".join(f"{v} {n:,}" for v, n in values)
            warnings.append(f"{column!r} is not filtered (values in the first rows: {shown}): every row counts as a "
                            f"purchase; if some are not, add exclude = [\"{column} in [...]\"]")
    return warnings
