"""Merchants' own exports read as they are: row filters, an amount from several columns, refunds netted into spend,
line items rolled up into orders, emails as ids, UTC offsets and the currency. Each is checked against what the rows
say, and a Shopify-style export end to end against an independent pandas computation."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from features import sources
from features.build import FeatureBuilder
from features.errors import LifecycleError
from features.tables import TableSource
from tests.helpers import NOW, load, run_here

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
SHOPIFY_SOURCE = {
    "columns": {"customer_id": "Email", "timestamp": "Created at", "amount": "Total", "order_id": "Name",
                "refunded": "Refunded Amount", "currency": "Currency"},
    "line_items": "first",
    "exclude": ["Financial Status in [voided]", "Cancelled at is not empty", "Tags contains test"],
}


def shopify_export(orders: int = 400, seed: int = 0) -> pd.DataFrame:
    """A Shopify-style orders export: 1-3 lines per order; voided, cancelled, test, refunded and partially refunded
    orders; emails in mixed case with stray spaces; local times with UTC offsets; EUR."""
    rng = np.random.default_rng(seed)
    people = [f"Customer{k}@Example.com" for k in range(60)]
    rows = []
    start = pd.Timestamp("2024-01-01")
    for number in range(orders):
        email = people[rng.integers(len(people))]
        email = rng.choice([email, email.lower(), f" {email.upper()} "])
        offset = int(rng.choice([-5, 0, 1, 2]))
        local = start + pd.Timedelta(minutes=int(rng.integers(0, 600 * 24 * 60)))
        created = f"{local:%Y-%m-%d %H:%M:%S} {'+' if offset >= 0 else '-'}{abs(offset):02d}00"
        status = rng.choice(["paid", "paid", "paid", "refunded", "partially_refunded", "voided", "pending"])
        total = round(float(rng.gamma(2, 30)), 2)
        refunded = {"refunded": total, "partially_refunded": round(total * 0.4, 2)}.get(status, 0.0)
        cancelled = f"{local + pd.Timedelta(days=1):%Y-%m-%d %H:%M:%S} +0100" if rng.random() < 0.05 else ""
        tags = "test" if rng.random() < 0.03 else rng.choice(["", "vip", "wholesale, Gift"])
        for line in range(int(rng.integers(1, 4))):
            row = dict.fromkeys(SHOPIFY, "")
            row |= {"Name": f"#{1001 + number}", "Email": email, "Created at": created, "Lineitem quantity": "1",
                    "Lineitem name": f"Item {line}", "Lineitem price": f"{total / 2:.2f}"}
            if line == 0:
                row |= {"Financial Status": status, "Currency": "EUR", "Total": f"{total:.2f}",
                        "Subtotal": f"{total:.2f}", "Refunded Amount": f"{refunded:.2f}" if refunded else "",
                        "Cancelled at": cancelled, "Tags": tags, "Id": str(6_000_000 + number)}
            rows.append(row)
    return pd.DataFrame(rows, columns=SHOPIFY)


def expected_customers(export: pd.DataFrame) -> pd.DataFrame:
    """Independently: each customer's purchase days (UTC) and net spend from a Shopify-style export, in pandas."""
    first = export.groupby("Name", sort=False).first().replace("", np.nan)
    first = first[first["Financial Status"] != "voided"]
    first = first[first["Cancelled at"].isna() & ~first["Tags"].fillna("").str.lower().str.contains("test")]
    total = first["Total"].astype(float)
    refunded = first["Refunded Amount"].astype(float).fillna(0.0)
    first = first[~((refunded > 0) & (refunded >= total))]  # a fully refunded order is not a purchase
    when = pd.to_datetime(first["Created at"], format="%Y-%m-%d %H:%M:%S %z", utc=True).dt.tz_localize(None)
    orders = pd.DataFrame({"customer_id": first["Email"].str.strip().str.lower(), "day": when.dt.normalize(),
                           "net": (total - refunded)[first.index]})
    return orders.groupby("customer_id").agg(purchase_days=("day", "nunique"), total_spend=("net", "sum"))


def test_a_shopify_export_is_read_as_orders_with_net_spend(tmp_path):
    export = shopify_export()
    path = tmp_path / "orders_export_1.csv"
    export.to_csv(path, index=False)
    data = sources.load(sources.connect(), {"transactions": TableSource(path=str(path), **SHOPIFY_SOURCE)},
                        now=NOW, emails=True)
    report = data.report["transactions"]
    orders = export.Name.nunique()
    assert report.lines == len(export) and report.rows == orders == report.valid + report.rejected_total
    assert set(report.rejected) <= {"excluded: Financial Status in [voided]", "excluded: Cancelled at is not empty",
                                    "excluded: Tags contains test", "fully refunded (not a purchase)"}
    assert len(report.rejected) == 4 and data.currency == "EUR"
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


def test_an_export_configured_in_toml_the_environment_or_flags(tmp_path, monkeypatch, capsys):
    """The Shopify settings above in lifecycle.toml: `lifecycle features` reads the export with no other flag; the
    environment and --exclude replace the configured filters; a filter that cannot be read is one line."""
    shopify_export(orders=150, seed=3).to_csv(tmp_path / "orders_export_1.csv", index=False)
    source = SHOPIFY_SOURCE["columns"]
    (tmp_path / "lifecycle.toml").write_text(
        '[inputs]\ncustomer_ids = "email"\n[inputs.transactions]\npath = "orders_export_1.csv"\n'
        f"columns = {{ {', '.join(f'{k} = {v!r}' for k, v in source.items())} }}\n".replace("'", '"')
        + 'line_items = "first"\n'
        + f"exclude = [{', '.join(repr(e) for e in SHOPIFY_SOURCE['exclude'])}]\n".replace("'", '"'))
    made = run_here("features", "--out", "f.parquet", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert made.returncode == 0, made.stderr
    out = " ".join(made.stdout.split())
    assert re.search(r"│ transactions │ 150 \([\d,]+ lines\) │", out)
    reasons = set(pd.read_parquet(tmp_path / "f.rejects.parquet").reason)
    assert {"excluded: Financial Status in [voided]", "fully refunded (not a purchase)"} <= reasons
    expected = expected_customers(shopify_export(orders=150, seed=3))
    features = pd.read_parquet(tmp_path / "f.parquet").set_index("customer_id")
    np.testing.assert_allclose(features.loc[expected.index].total_spend, expected.total_spend, rtol=1e-12)
    flagged = run_here("features", "--out", "g.parquet", "--exclude", "Financial Status in [voided, refunded]",
                       cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert flagged.returncode == 0
    reasons = set(pd.read_parquet(tmp_path / "g.rejects.parquet").reason)
    assert "excluded: Financial Status in [voided, refunded]" in reasons  # instead of the configured filters
    assert not reasons & {"excluded: Financial Status in [voided]", "excluded: Cancelled at is not empty"}
    monkeypatch.setenv("LIFECYCLE_INPUTS__TRANSACTIONS__EXCLUDE", '["Tags contains gift"]')
    from_environment = run_here("features", "--out", "h.parquet", cwd=tmp_path, monkeypatch=monkeypatch,
                                capsys=capsys)
    assert from_environment.returncode == 0
    assert "excluded: Tags contains gift" in set(pd.read_parquet(tmp_path / "h.rejects.parquet").reason)
    bad = run_here("features", "--out", "i.parquet", "--exclude", "Tags = test", cwd=tmp_path,
                   monkeypatch=monkeypatch, capsys=capsys)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "'Tags = test' is not a row filter: write 'COLUMN in [a, b]'" in bad.stderr


def test_the_spark_engine_refuses_what_it_does_not_do_yet():
    """Filters, line items and amounts from several columns need the user's own columns in Spark's partitions:
    refused in one line before Spark starts; refunds, emails and a configured currency go through."""
    from serving.spark import check_supported

    with pytest.raises(LifecycleError, match=r"transactions: row filters \(exclude, include\), line_items, an amount "
                                             "from several columns not supported with the Spark engine yet"):
        check_supported("transactions", TableSource(path="x.csv", exclude=["Tags contains test"], line_items="first",
                                                    columns={"amount": "Total - Refunds"}), None)
    with pytest.raises(LifecycleError, match="a currency column without the currency setting"):
        check_supported("transactions", TableSource(path="x.csv", columns={"currency": "Currency"}), None)
    check_supported("transactions", TableSource(path="x.csv", columns={"refunded": "R", "currency": "C"}), "EUR")
