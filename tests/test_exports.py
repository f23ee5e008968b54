"""Merchants' own exports read as they are: row filters, an amount from several columns, refunds netted into spend,
line items rolled up into orders, emails as ids, UTC offsets and the currency. Each is checked against what the rows
say, and a Shopify-style export end to end against an independent pandas computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import sources
from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.tables import TableSource
from tests.helpers import NOW, load

# Shopify's orders export (Admin > Orders > Export), 2025: one row per line item; the order's totals, status,
# currency, refunds, cancellation and tags on its first line only.
SHOPIFY = [
    "Name", "Email", "Financial Status", "Paid at", "Fulfillment Status", "Fulfilled at", "Accepts Marketing",
    "Currency", "Subtotal", "Shipping", "Taxes", "Total", "Discount Code", "Discount Amount", "Shipping Method",
    "Created at", "Lineitem quantity", "Lineitem name", "Lineitem price", "Lineitem compare at price", "Lineitem sku",
    "Lineitem requires shipping", "Lineitem taxable", "Lineitem fulfillment status", "Billing Name", "Billing Street",
    "Billing Address1", "Billing Address2", "Billing Company", "Billing City", "Billing Zip", "Billing Province",
    "Billing Country", "Billing Phone", "Shipping Name", "Shipping Street", "Shipping Address1", "Shipping Address2",
    "Shipping Company", "Shipping City", "Shipping Zip", "Shipping Province", "Shipping Country", "Shipping Phone",
    "Notes", "Note Attributes", "Cancelled at", "Payment Method", "Payment Reference", "Refunded Amount", "Vendor",
    "Outstanding Balance", "Employee", "Location", "Device ID", "Id", "Tags", "Risk Level", "Source",
    "Lineitem discount", "Tax 1 Name", "Tax 1 Value", "Tax 2 Name", "Tax 2 Value", "Tax 3 Name", "Tax 3 Value",
    "Tax 4 Name", "Tax 4 Value", "Tax 5 Name", "Tax 5 Value", "Phone", "Receipt Number", "Duties",
    "Billing Province Name", "Shipping Province Name", "Payment ID", "Payment Terms Name", "Next Payment Due At",
    "Payment References",
]
WOOCOMMERCE = [  # "Advanced Order Export For WooCommerce", its default columns: one row per product
    "Order Number", "Order Status", "Order Date", "Customer Note", "First Name (Billing)", "Last Name (Billing)",
    "Company (Billing)", "Address 1&2 (Billing)", "City (Billing)", "State Code (Billing)", "Postcode (Billing)",
    "Country Code (Billing)", "Email (Billing)", "Phone (Billing)", "First Name (Shipping)", "Last Name (Shipping)",
    "Address 1&2 (Shipping)", "City (Shipping)", "State Code (Shipping)", "Postcode (Shipping)",
    "Country Code (Shipping)", "Item #", "SKU", "Name", "Quantity", "Item Cost", "Coupon Code", "Discount Amount",
    "Discount Amount Tax", "Shipping Method Title", "Payment Method Title", "Cart Discount Amount",
    "Order Subtotal Amount", "Order Shipping Amount", "Order Refund Amount", "Order Total Amount",
    "Order Total Tax Amount", "Currency",
]
STRIPE = [  # Stripe's payments export (unified_payments.csv), its default columns: one row per payment
    "id", "Created date (UTC)", "Amount", "Amount Refunded", "Currency", "Captured", "Converted Amount",
    "Converted Amount Refunded", "Converted Currency", "Decline Reason", "Description", "Fee", "Refunded date (UTC)",
    "Statement Descriptor", "Status", "Seller Message", "Taxes On Fee", "Card ID", "Customer ID",
    "Customer Description", "Customer Email", "Invoice ID", "Transfer",
]
SHOPIFY_SOURCE = {  # what `lifecycle init` writes for a Shopify export (test_init_...)
    "columns": {"customer_id": "Email", "timestamp": "Created at", "amount": "Total", "order_id": "Name",
                "refunded": "Refunded Amount", "currency": "Currency"},
    "line_items": "first",
    "exclude": ["Financial Status in [voided, expired]", "Cancelled at is not empty", "Payment Method in [bogus]"],
}
KINDS = ["paid"] * 14 + ["refunded", "partial", "void", "void", "pending", "cancelled", "test"]


def _purchases(customers: int, seed: int) -> list[dict]:
    """A shop's orders over 600 days, before any platform writes them: customers who join over the first 300
    days and buy again at their own rate; each order's local time and UTC offset, total, and what became of it."""
    rng = np.random.default_rng(seed)
    start, orders = pd.Timestamp("2024-01-01"), []
    for k in range(customers):
        joined = rng.uniform(0, 300)
        days = np.sort(np.r_[joined, rng.uniform(joined, 600, rng.poisson(rng.gamma(1.2, 2.0)))])
        email = f"Customer{k}@Example.com"
        for day in days:
            total = round(float(rng.gamma(2, 30)), 2)
            kind = str(rng.choice(KINDS))
            orders.append({"customer": k, "email": str(rng.choice([email, email.lower(), f" {email.upper()} "])),
                           "local": start + pd.Timedelta(minutes=int(day * 1440)),
                           "offset": int(rng.choice([-5, 0, 1])),
                           "total": total, "kind": kind, "lines": int(rng.integers(1, 4)),
                           "refund": {"refunded": total, "partial": round(total * 0.4, 2)}.get(kind, 0.0)})
    return sorted(orders, key=lambda o: o["local"])


def shopify_export(customers: int = 60, seed: int = 0) -> pd.DataFrame:
    """A Shopify-style orders export: 1-3 lines per order; voided, cancelled, test (the Bogus gateway), refunded
    and partially refunded orders; emails in mixed case with stray spaces; local times with UTC offsets; EUR."""
    status = {"paid": "paid", "refunded": "refunded", "partial": "partially_refunded", "void": "voided",
              "pending": "pending", "cancelled": "paid", "test": "paid"}
    rows = []
    for number, order in enumerate(_purchases(customers, seed)):
        sign = "+" if order["offset"] >= 0 else "-"
        created = f"{order['local']:%Y-%m-%d %H:%M:%S} {sign}{abs(order['offset']):02d}00"
        for line in range(order["lines"]):
            row = dict.fromkeys(SHOPIFY, "")
            row |= {"Name": f"#{1001 + number}", "Email": order["email"], "Created at": created,
                    "Lineitem quantity": "1", "Lineitem name": f"Item {line}",
                    "Lineitem price": f"{order['total'] / order['lines']:.2f}"}
            if line == 0:
                row |= {"Financial Status": status[order["kind"]], "Currency": "EUR", "Total": f"{order['total']:.2f}",
                        "Subtotal": f"{order['total']:.2f}", "Id": str(6_000_000 + number),
                        "Refunded Amount": f"{order['refund']:.2f}" if order["refund"] else "",
                        "Cancelled at": f"{order['local'] + pd.Timedelta(days=1):%Y-%m-%d %H:%M:%S} +0100"
                        if order["kind"] == "cancelled" else "",
                        "Payment Method": "bogus" if order["kind"] == "test" else "Shopify Payments",
                        "Tags": "test" if order["kind"] == "test" else "wholesale, Gift" if number % 3 else ""}
            rows.append(row)
    return pd.DataFrame(rows, columns=SHOPIFY)


def woocommerce_export(customers: int = 60, seed: int = 1) -> pd.DataFrame:
    """A WooCommerce export (Advanced Order Export): one row per product with the order's columns repeated;
    status labels; site-local times without an offset; refunds; billing emails in mixed case; GBP."""
    status = {"paid": "Completed", "refunded": "Refunded", "partial": "Completed", "void": "Failed",
              "pending": "Pending payment", "cancelled": "Cancelled", "test": "Processing"}
    rows = []
    for number, order in enumerate(_purchases(customers, seed)):
        for line in range(order["lines"]):
            rows.append(dict.fromkeys(WOOCOMMERCE, "") | {
                "Order Number": str(5001 + number), "Order Status": status[order["kind"]],
                "Order Date": f"{order['local']:%Y-%m-%d %H:%M}", "Email (Billing)": order["email"],
                "Item #": str(line + 1), "Name": f"Item {line}", "Quantity": "1",
                "Item Cost": f"{order['total'] / order['lines']:.2f}", "Order Total Amount": f"{order['total']:.2f}",
                "Order Refund Amount": f"{order['refund']:.2f}", "Currency": "GBP"})
    return pd.DataFrame(rows, columns=WOOCOMMERCE)


def stripe_export(customers: int = 60, seed: int = 2) -> pd.DataFrame:
    """Stripe's payments export: one row per payment, amounts in each charge's currency (lower case) and in the
    account's (Converted, USD); failed and uncaptured payments; full and partial refunds; emails in mixed case."""
    rate = {"usd": 1.0, "eur": 1.08}
    rows = []
    for number, order in enumerate(_purchases(customers, seed)):
        currency = "eur" if number % 4 == 0 else "usd"
        status = {"refunded": "Refunded", "void": "Failed"}.get(order["kind"], "Paid")
        rows.append(dict.fromkeys(STRIPE, "") | {
            "id": f"ch_{number:08d}", "Created date (UTC)": f"{order['local']:%Y-%m-%d %H:%M:%S}",
            "Amount": f"{order['total']:.2f}", "Amount Refunded": f"{order['refund']:.2f}", "Currency": currency,
            "Captured": "false" if order["kind"] == "pending" else "true",
            "Converted Amount": f"{order['total'] * rate[currency]:.2f}",
            "Converted Amount Refunded": f"{order['refund'] * rate[currency]:.2f}", "Converted Currency": "usd",
            "Status": status, "Customer ID": f"cus_{order['customer']:06d}",
            "Customer Email": order["email"]})
    return pd.DataFrame(rows, columns=STRIPE)


def _per_customer(emails: pd.Series, days: pd.Series, net: pd.Series) -> pd.DataFrame:
    orders = pd.DataFrame({"customer_id": emails.str.strip().str.lower(), "day": days.dt.normalize(), "net": net})
    return orders.groupby("customer_id").agg(purchase_days=("day", "nunique"), total_spend=("net", "sum"))


def expected_customers(export: pd.DataFrame) -> pd.DataFrame:
    """Independently, in pandas: each customer's purchase days (UTC) and net spend from a Shopify-style export."""
    first = export.groupby("Name", sort=False).first().replace("", np.nan)
    first = first[~first["Financial Status"].isin(["voided", "expired"]) & first["Cancelled at"].isna()
                  & (first["Payment Method"] != "bogus")]
    total, refunded = first["Total"].astype(float), first["Refunded Amount"].astype(float).fillna(0.0)
    first = first[~((refunded > 0) & (refunded >= total))]  # a fully refunded order is not a purchase
    when = pd.to_datetime(first["Created at"], format="%Y-%m-%d %H:%M:%S %z", utc=True).dt.tz_localize(None)
    return _per_customer(first["Email"], when, total - refunded)


def expected_woocommerce(export: pd.DataFrame) -> pd.DataFrame:
    first = export.groupby("Order Number", sort=False).first()
    first = first[~first["Order Status"].str.lower().isin(["cancelled", "failed", "pending payment"])]
    total, refunded = first["Order Total Amount"].astype(float), first["Order Refund Amount"].astype(float)
    first = first[~((refunded > 0) & (refunded >= total))]
    return _per_customer(first["Email (Billing)"], pd.to_datetime(first["Order Date"]), total - refunded)


def expected_stripe(export: pd.DataFrame) -> pd.DataFrame:
    paid = export[(export.Status != "Failed") & (export.Captured == "true")]
    total, refunded = paid["Converted Amount"].astype(float), paid["Converted Amount Refunded"].astype(float)
    paid = paid[~((refunded > 0) & (refunded >= total))]
    return _per_customer(paid["Customer Email"], pd.to_datetime(paid["Created date (UTC)"]), total - refunded)


def test_a_shopify_export_is_read_as_orders_with_net_spend(tmp_path):
    export = shopify_export()
    path = tmp_path / "orders_export_1.csv"
    export.to_csv(path, index=False)
    data = sources.load(sources.connect(), {"transactions": TableSource(path=str(path), **SHOPIFY_SOURCE)},
                        now=NOW, emails=True)
    report = data.report["transactions"]
    orders = export.Name.nunique()
    assert report.lines == len(export) and report.rows == orders == report.valid + report.rejected_total
    assert set(report.rejected) == {"excluded: Financial Status in [voided, expired]",
                                    "fully refunded (not a purchase)", "excluded: Cancelled at is not empty",
                                    "excluded: Payment Method in [bogus]"}
    assert data.currency == "EUR"
    expected = expected_customers(export)
    assert report.valid == int(data.con.execute("SELECT count(*) FROM transactions").fetchone()[0])
    end = data.date_range()[1].date()
    features = FeatureBuilder().fit_transform(data, end).df().set_index("customer_id").loc[expected.index]
    np.testing.assert_array_equal(features.purchase_days, expected.purchase_days)
    np.testing.assert_allclose(features.total_spend, expected.total_spend, rtol=1e-12)
    # every excluded or refunded order is in the rejects file at its first line, with its reason
    rejects = tmp_path / "rejects.csv"
    assert data.write_rejects(rejects) == report.rejected_total
    written = pd.read_csv(rejects)
    first_lines = export.reset_index().groupby("Name").index.min() + 1
    assert set(written.source_row) <= set(first_lines)


@pytest.mark.parametrize(("rule", "text", "kept"), [
    ("exclude", "Status in [Voided, 'refunded']", "ace"),
    ("exclude", "Status not in [paid]", "ae"),  # an empty status is in no list
    ("exclude", "Tags contains TEST", "acde"),
    ("exclude", "Tags not contains test", "b"),
    ("exclude", "Status is empty", "abde"),
    ("exclude", "Status is not empty", "c"),
    ("include", "Status in [paid]", "ae"),
    ("include", "Tags is empty", "ad"),
])
def test_row_filters_keep_exactly_the_rows_they_name(rule, text, kept, tmp_path):
    pd.DataFrame({"customer_id": list("abcde"), "timestamp": "2024-01-01", "amount": [1.0, 2.0, 3.0, 4.0, 5.0],
                  "Status": ["paid", "voided", "", "refunded", " PAID "],
                  "Tags": ["", "test order", "x", "", "Gift"]}).to_csv(tmp_path / "orders.csv", index=False)
    data = load(transactions=TableSource(path=str(tmp_path / "orders.csv"), **{rule: [text]}))
    valid = [c for (c,) in data.con.execute("SELECT customer_id FROM transactions ORDER BY 1").fetchall()]
    assert "".join(valid) == kept
    reason = f"{'excluded' if rule == 'exclude' else 'not included'}: {text}"
    assert data.report["transactions"].rejected == ({reason: 5 - len(kept)} if len(kept) < 5 else {})


def test_a_row_filter_that_cannot_be_read_or_names_no_column_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"'Status = paid' is not a row filter: write 'COLUMN in \[a, b\]'"):
        TableSource(path="x.csv", exclude=["Status = paid"])
    pd.DataFrame({"customer_id": ["a"], "timestamp": "2024-01-01", "amount": [1.0]}).to_csv(tmp_path / "o.csv",
                                                                                          index=False)
    with pytest.raises(LifecycleError, match=r"1 column not found: 'Status' \(in a row filter\); the file has"):
        load(transactions=TableSource(path=str(tmp_path / "o.csv"), exclude=["Status in [voided]"]))


@pytest.mark.parametrize(("expression", "amounts", "reasons"), [
    ("Total Price + Add-on Total", [12.5, 10.0, 2.5], {"missing amount": 1, "unparseable amount": 1}),
    ("Total Price - Add-on Total", [7.5, 10.0], {"missing amount": 1, "unparseable amount": 1,
                                                 "negative amount": 1}),
])
def test_the_amount_from_several_columns(expression, amounts, reasons, tmp_path):
    """Columns joined by + and -: an empty one counts as 0, all empty is a missing amount, text is unparseable."""
    pd.DataFrame({"customer_id": list("abcde"), "timestamp": "2024-01-01",
                  "Total Price": ["10", "10", "", "x", "1"],
                  "Add-on Total": ["2.5", "", "", "1", "1.5" if "+" in expression else "2.5"],
                  }).to_csv(tmp_path / "orders.csv", index=False)
    data = load(transactions=TableSource(path=str(tmp_path / "orders.csv"), columns={"amount": expression}))
    got = [a for (a,) in data.con.execute("SELECT amount FROM transactions ORDER BY customer_id").fetchall()]
    assert got == amounts and data.report["transactions"].rejected == reasons


def test_refunds_are_netted_and_a_fully_refunded_order_is_not_a_purchase(tmp_path):
    pd.DataFrame({"customer_id": list("abcd"), "timestamp": "2024-01-01", "Total": [50.0, 50.0, 50.0, 0.0],
                  "Refunded": [None, 20.0, 50.0, 0.0]}).to_csv(tmp_path / "orders.csv", index=False)
    data = load(transactions=TableSource(path=str(tmp_path / "orders.csv"),
                                         columns={"amount": "Total", "refunded": "Refunded"}))
    got = data.con.execute("SELECT customer_id, amount, refunded FROM transactions ORDER BY 1").fetchall()
    assert got == [("a", 50.0, None), ("b", 30.0, 20.0), ("d", 0.0, 0.0)]
    assert data.report["transactions"].rejected == {"fully refunded (not a purchase)": 1}


def test_line_items_roll_up_into_orders_by_first_value_or_sum(tmp_path):
    lines = pd.DataFrame({"order": ["#1", "#1", "#2", "#3", "#3", "#3", ""],
                          "email": ["a@x", "a@x", "b@x", "c@x", "c@x", "c@x", "d@x"],
                          "created": ["2024-01-01", "", "2024-01-02", "2024-01-03", "2024-01-03", "", "2024-01-04"],
                          "total": ["30", "", "5", "", "7", "oops", "9"],
                          "line": ["10", "20", "5", "1", "2", "4", "9"]})
    lines.to_csv(tmp_path / "lines.csv", index=False)
    columns = {"customer_id": "email", "timestamp": "created", "order_id": "order"}
    first = load(transactions=TableSource(path=str(tmp_path / "lines.csv"), columns={**columns, "amount": "total"},
                                          line_items="first"))
    rows = first.con.execute("SELECT order_id, amount FROM transactions ORDER BY 1").fetchall()
    assert rows == [("#1", 30.0), ("#2", 5.0), ("#3", 7.0), (None, 9.0)]  # the first non-empty total
    report = first.report["transactions"]
    assert (report.lines, report.rows, report.valid) == (7, 4, 4)
    summed = load(transactions=TableSource(path=str(tmp_path / "lines.csv"), columns={**columns, "amount": "line"},
                                           line_items="sum"))
    rows = summed.con.execute("SELECT order_id, amount FROM transactions ORDER BY 1").fetchall()
    assert rows == [("#1", 30.0), ("#2", 5.0), ("#3", 7.0), (None, 9.0)]
    broken = load(transactions=TableSource(path=str(tmp_path / "lines.csv"), columns={**columns, "amount": "total"},
                                           line_items="sum"))
    assert broken.report["transactions"].rejected == {"unparseable amount": 1}  # order #3's 'oops' line
    rejects = tmp_path / "rejects.csv"
    broken.write_rejects(rejects)
    assert pd.read_csv(rejects).source_row.tolist() == [4]  # the order's first line
    with pytest.raises(LifecycleError, match=r"line_items needs the order id: set inputs\.transactions\.columns"):
        load(transactions=TableSource(path=str(tmp_path / "lines.csv"), line_items="first",
                                      columns={"customer_id": "email", "timestamp": "created", "amount": "total"}))


def test_email_ids_are_trimmed_and_compared_in_any_case_in_every_table(tmp_path):
    orders = pd.DataFrame({"customer_id": [" Ann@Shop.com", "ann@shop.com ", "BOB@shop.com"],
                           "timestamp": "2024-01-01", "amount": 1.0})
    customers = pd.DataFrame({"customer_id": ["ann@SHOP.com", "bob@shop.com"], "signup_date": "2023-01-01"})
    data = sources.load(sources.connect(), {"transactions": orders, "customers": customers}, now=NOW, emails=True)
    ids = data.con.execute("SELECT DISTINCT customer_id FROM transactions ORDER BY 1").fetchall()
    assert ids == [("ann@shop.com",), ("bob@shop.com",)]
    joined = data.con.execute("SELECT count(*) FROM transactions JOIN customers USING (customer_id)").fetchone()
    assert joined == (3,)
    exact = sources.load(sources.connect(), {"transactions": orders}, now=NOW)
    assert exact.con.execute("SELECT count(DISTINCT customer_id) FROM transactions").fetchone() == (3,)


def test_timestamps_with_a_utc_offset_are_moved_to_utc():
    orders = pd.DataFrame({"customer_id": list("abcde"), "amount": 1.0,
                           "timestamp": ["2024-03-01 00:30:00 +0100", "2024-03-01 00:30:00+01:00",
                                         "2024-03-01T23:30:00Z", "2024-03-01 20:00:00 -0500", "2024-03-01 00:30:00"]})
    data = load(transactions=orders)
    got = [str(t) for (t,) in data.con.execute("SELECT timestamp FROM transactions ORDER BY customer_id").fetchall()]
    assert got == ["2024-02-29 23:30:00", "2024-02-29 23:30:00", "2024-03-01 23:30:00", "2024-03-02 01:00:00",
                   "2024-03-01 00:30:00"]


def test_the_currency_is_the_orders_one_or_the_configured_one():
    orders = pd.DataFrame({"customer_id": list("abcd"), "timestamp": "2024-01-01", "amount": 1.0,
                           "currency": ["eur", "EUR ", "usd", "euro"]})

    def loaded(frame, currency=None):
        return sources.load(sources.connect(), {"transactions": frame}, now=NOW, currency=currency)

    configured = loaded(orders, "EUR")
    assert configured.currency == "EUR"
    assert configured.report["transactions"].rejected == {"currency is not EUR": 1,
                                                          "unparseable currency (not an ISO code)": 1}
    with pytest.raises(LifecycleError, match=r"the orders are in 2 currencies \(EUR 2, USD 1\); set currency"):
        loaded(orders.iloc[:3])
    assert loaded(orders.iloc[:2]).currency == "EUR"
    assert loaded(orders.drop(columns="currency")).currency is None
    unnamed = loaded(orders.assign(currency=np.nan))  # a frame's column of nothing but missing values
    assert unnamed.currency is None and unnamed.report["transactions"].valid == 4


EXPORTS = {  # platform: (the export, the file name the platform gives it, independent expectations, currency)
    "Shopify orders export": (shopify_export, "orders_export_1.csv", expected_customers, "EUR"),
    "WooCommerce export (Advanced Order Export)": (woocommerce_export, "orders-2025-06-30.csv", expected_woocommerce,
                                                   "GBP"),
    "Stripe payments export": (stripe_export, "unified_payments.csv", expected_stripe, "USD"),
}


@pytest.mark.parametrize("platform", list(EXPORTS))
def test_lifecycle_init_then_train_score_and_report_with_no_other_flag(platform, tmp_path, cli):
    """A platform's export, as the platform writes it: `lifecycle init FILE` recognises it and writes the
    configuration; `features`, `train`, `score` and `report` then need no flag, and every customer's purchase days
    and net spend to date equal an independent pandas computation."""
    make, name, expected_of, currency = EXPORTS[platform]
    export = make(customers=250)
    export.to_csv(tmp_path / name, index=False)

    def lifecycle(*args: str):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())

    said = lifecycle("init", name)
    assert f"recognised a {platform}" in said and f"amounts in {currency}" in said
    written = (tmp_path / "lifecycle.toml").read_text()
    assert f'currency = "{currency}"' in written and 'customer_ids = "email"' in written
    lifecycle("features", "--out", "features.parquet")
    expected = expected_of(export)
    features = pd.read_parquet(tmp_path / "features.parquet").set_index("customer_id")
    assert sorted(features.index[features.orders > 0]) == sorted(expected.index)
    np.testing.assert_array_equal(features.loc[expected.index].purchase_days, expected.purchase_days)
    np.testing.assert_allclose(features.loc[expected.index].total_spend, expected.total_spend, rtol=1e-12)
    assert "version 1: promoted to champion" in lifecycle("train")
    assert f"{len(features):,} customers" in lifecycle("score")
    assert pd.read_parquet(tmp_path / "scores.parquet").customer_id.is_unique
    reported = lifecycle("report")
    assert "predicted CLV" in reported and currency in reported and (tmp_path / "report/report.html").is_file()


def test_init_guesses_other_files_and_says_what_it_could_not(tmp_path, cli):
    """A file no preset knows: its columns guessed from common names in any case, a status column it does not
    filter by warned about, a missing column named; an existing configuration kept unless --force."""
    pd.DataFrame({"Customer": ["a@x.com", "B@x.com"], "Order Date": ["2024-01-01", "2024-02-01"],
                  "Grand Total": [10.0, 20.0], "Order Status": ["complete", "cancelled"]}).to_csv(
        tmp_path / "sales.csv", index=False)
    pd.DataFrame({"user_id": ["a@x.com"], "Event": ["email_open"], "time": ["2024-01-02"]}).to_csv(
        tmp_path / "events.csv", index=False)
    pd.DataFrame({"Customer": ["a@x.com"], "Signed up at": ["2023-12-01"], "Channel": ["ads"]}).to_csv(
        tmp_path / "people.csv", index=False)
    made = cli("init", "sales.csv", "events.csv", "people.csv", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    out, err = " ".join(made.stdout.split()), " ".join(made.stderr.split())
    assert ("columns guessed from their names: customer_id = 'Customer', timestamp = 'Order Date', amount = "
            "'Grand Total'") in out
    assert "'Order Status' is not filtered (values in the first rows: cancelled 1, complete 1)" in err
    written = (tmp_path / "lifecycle.toml").read_text()
    assert 'customer_ids = "email"' in written and "[inputs.events]" in written and "[inputs.customers]" in written
    assert 'columns = { customer_id = "user_id", timestamp = "time", event_type = "Event" }' in written
    assert 'columns = { customer_id = "Customer", signup_date = "Signed up at", acquisition_channel = "Channel" }' in (
        written)
    again = cli("init", "sales.csv", cwd=tmp_path)
    assert again.returncode == 2 and "lifecycle.toml exists: pass --force to replace it" in again.stderr
    pd.DataFrame({"who": ["a"], "when": ["2024-01-01"]}).to_csv(tmp_path / "thin.csv", index=False)
    thin = cli("init", "thin.csv", "--force", cwd=tmp_path)
    assert "no column for customer_id (set inputs.transactions.columns.customer_id)" in thin.stderr
    assert "no column for amount" in thin.stderr


def test_flags_and_the_environment_replace_the_configured_filters(tmp_path, monkeypatch, cli):
    """--exclude, and LIFECYCLE_INPUTS__TRANSACTIONS__EXCLUDE, replace what `lifecycle init` configured; a filter
    that cannot be read is one line."""
    shopify_export(customers=40, seed=3).to_csv(tmp_path / "orders_export_1.csv", index=False)
    assert cli("init", "orders_export_1.csv", cwd=tmp_path).returncode == 0

    def reasons(*flags: str) -> set[str]:
        made = cli("features", "--out", "f.parquet", *flags, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        return set(pd.read_parquet(tmp_path / "f.rejects.parquet").reason)

    assert "excluded: Payment Method in [bogus]" in reasons()
    flagged = reasons("--exclude", "Financial Status in [voided, refunded]")
    assert "excluded: Financial Status in [voided, refunded]" in flagged
    assert not flagged & {"excluded: Payment Method in [bogus]", "excluded: Cancelled at is not empty"}
    monkeypatch.setenv("LIFECYCLE_INPUTS__TRANSACTIONS__EXCLUDE", '["Tags contains gift"]')
    assert reasons() & {"excluded: Tags contains gift", "excluded: Payment Method in [bogus]"} == {
        "excluded: Tags contains gift"}
    bad = cli("features", "--out", "i.parquet", "--exclude", "Tags = test", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "'Tags = test' is not a row filter: write 'COLUMN in [a, b]'" in bad.stderr


def test_the_spark_engine_refuses_what_it_does_not_do_yet():
    """Filters, line items and amounts from several columns need the user's own columns in Spark's partitions:
    refused in one line before Spark starts; refunds, emails and a configured currency go through."""
    from features.spark import check_supported

    with pytest.raises(LifecycleError, match=r"transactions: row filters \(exclude, include\), line_items, an amount "
                                             "from several columns not supported with the Spark engine yet"):
        check_supported("transactions", TableSource(path="x.csv", exclude=["Tags contains test"], line_items="first",
                                                    columns={"amount": "Total - Refunds"}), None)
    with pytest.raises(LifecycleError, match="a currency column without the currency setting"):
        check_supported("transactions", TableSource(path="x.csv", columns={"currency": "Currency"}), None)
    check_supported("transactions", TableSource(path="x.csv", columns={"refunded": "R", "currency": "C"}), "EUR")
