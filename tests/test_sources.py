"""Input validation: every row is either valid or rejected with one reason; nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.errors import LifecycleError
from features.tables import TableSource
from tests.helpers import NOW, load

CASES = [  # (customer, timestamp, amount, order id) -> expected reason or None
    ("a", "2020-01-01 10:00:00", "1.50", "o1", None),
    ("b", "2020-02-01", "x", "o2", "unparseable amount"),
    ("", "2020-01-01", "1", "o3", "missing customer_id"),
    ("c", "not a date", "1", "o4", "unparseable timestamp"),
    ("d", "2099-01-01", "1", "o5", "timestamp in the future"),
    ("e", "2020-01-01", "-2", "o6", "negative amount"),
    ("f", "2020-01-01", "NaN", "o7", "amount is not a finite number"),
    ("a", "2020-03-01", "3", "o1", "repeated order_id"),
    ("g", "", "4", "o8", "missing timestamp"),
    ("h", "2020-01-05", "", "o9", "missing amount"),
    ("i", "2020-01-05", "0", "o10", None),
    ("j", "2020-01-05", "7", "", None),
    ("j", "2020-01-05", "7", "", None),  # no order id: identical rows are separate orders
]


@pytest.fixture()
def orders_csv(tmp_path):
    frame = pd.DataFrame([c[:4] for c in CASES], columns=["cust", "ts", "price", "oid"])
    path = tmp_path / "orders.csv"
    frame.to_csv(path, index=False)
    return path


def _source(path) -> TableSource:
    return TableSource(path=str(path), columns={"customer_id": "cust", "timestamp": "ts", "amount": "price",
                                                "order_id": "oid"})


def test_every_bad_row_is_rejected_with_its_reason(orders_csv, tmp_path):
    data = load(transactions=_source(orders_csv))
    report = data.report["transactions"]
    expected = pd.Series([c[4] for c in CASES]).value_counts().to_dict()
    assert report.rows == len(CASES)
    assert report.valid == sum(c[4] is None for c in CASES) == 4
    assert report.rejected == expected
    assert report.rows == report.valid + report.rejected_total

    valid = data.con.execute("SELECT customer_id, amount FROM transactions ORDER BY customer_id").fetchall()
    assert valid == [("a", 1.5), ("i", 0.0), ("j", 7.0), ("j", 7.0)]

    path = tmp_path / "rejects.csv"
    assert data.write_rejects(path) == 9
    rejects = pd.read_csv(path)
    by_row = dict(zip(rejects.source_row, rejects.reason, strict=True))
    assert by_row == {i + 1: c[4] for i, c in enumerate(CASES) if c[4]}
    record = json.loads(rejects.set_index("source_row").loc[2, "record"])
    assert record == {"cust": "b", "ts": "2020-02-01", "price": "x", "oid": "o2"}


def test_csv_lines_with_too_few_or_too_many_fields_are_rejected_with_their_line(orders_csv, tmp_path):
    lines = orders_csv.read_text().splitlines()
    lines[3:3] = ["k,2020-01-06", "l,2020-01-07,2,o12,surplus"]  # file lines 4 and 5
    orders_csv.write_text("\n".join(lines) + "\n")
    data = load(transactions=_source(orders_csv))
    report = data.report["transactions"]
    assert report.rows == len(CASES) + 2 and report.valid == 4
    assert report.rejected["malformed CSV line"] == 2 and report.rows == report.valid + report.rejected_total

    path = tmp_path / "rejects.parquet"
    assert data.write_rejects(path) == 11
    malformed = pd.read_parquet(path).query("reason == 'malformed CSV line'")
    assert malformed.source_row.isna().all()
    records = [json.loads(r) for r in malformed.record]
    assert [(r["line"], r["text"]) for r in records] == [(4, "k,2020-01-06"), (5, "l,2020-01-07,2,o12,surplus")]
    # source_row counts the rows that could be read: the fourth, after the two malformed lines, is still 4
    query = "SELECT source_row FROM rejects WHERE reason = 'unparseable timestamp'"
    assert data.con.execute(query).fetchall() == [(4,)]


def test_materialized_tables_hold_the_same_valid_rows_without_the_source(orders_csv):
    data = load(transactions=_source(orders_csv))
    query = "SELECT customer_id, timestamp, amount FROM transactions ORDER BY ALL"
    before = data.con.execute(query).fetchall()
    data.materialize().materialize()
    orders_csv.unlink()  # a view would now fail: the rows are DuckDB's own
    assert data.con.execute(query).fetchall() == before


def test_a_repeated_order_id_keeps_its_first_valid_row():
    frame = pd.DataFrame({"customer_id": ["a", "a", "a"], "timestamp": ["2020-01-01", "2020-01-02", "2020-01-03"],
                          "amount": [-1.0, 2.0, 3.0], "order_id": ["o1", "o1", "o1"]})
    data = load(transactions=frame)
    assert data.report["transactions"].rejected == {"negative amount": 1, "repeated order_id": 1}
    assert data.con.execute("SELECT amount FROM transactions").fetchall() == [(2.0,)]


def test_repeated_order_ids_in_a_large_parquet_log_match_pandas(tmp_path):
    """Among the valid rows, every occurrence of an order id after its first is rejected (pandas as the truth)."""
    rng = np.random.default_rng(7)
    n = 50_000
    frame = pd.DataFrame({"customer_id": rng.integers(0, 5_000, n),
                          "timestamp": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 10**7, n), "s"),
                          "amount": rng.normal(20, 15, n), "order_id": rng.integers(0, 45_000, n)})
    frame.to_parquet(tmp_path / "orders.parquet", row_group_size=4_096)
    data = load(transactions=TableSource(path=str(tmp_path / "orders.parquet")))
    valid = frame[frame.amount >= 0]
    repeated = valid.order_id.duplicated()
    assert data.report["transactions"].rejected == {"negative amount": int((frame.amount < 0).sum()),
                                                    "repeated order_id": int(repeated.sum())}
    rows = data.con.execute("SELECT source_row FROM rejects WHERE reason = 'repeated order_id' ORDER BY 1").fetchall()
    assert [r for (r,) in rows] == list(valid.index[repeated] + 1)


def test_timestamp_format_and_parquet_glob(tmp_path):
    for part in range(3):
        pd.DataFrame({"id": [part, part + 10], "day": ["20200101", "20200315"], "value": [1.0, 2.0]}).to_parquet(
            tmp_path / f"part-{part}.parquet")
    source = TableSource(path=str(tmp_path / "part-*.parquet"), timestamp_format="%Y%m%d",
                         columns={"customer_id": "id", "timestamp": "day", "amount": "value"})
    data = load(transactions=source)
    assert data.report["transactions"].valid == 6
    first, last = data.date_range()
    assert (str(first), str(last)) == ("2020-01-01 00:00:00", "2020-03-15 00:00:00")
    # integer ids everywhere stay integers (faster joins), text ids stay text
    assert data.con.execute("SELECT typeof(customer_id) FROM transactions LIMIT 1").fetchall() == [("BIGINT",)]


def test_a_csv_glob_matches_columns_by_name_and_rejects_malformed_lines_per_file(tmp_path):
    (tmp_path / "day-1.csv").write_text("customer_id,timestamp,amount\na,2020-01-01,1\nb,2020-01-02,2,surplus\n"
                                        "c,2020-01-03,-3\n")
    (tmp_path / "day-2.csv").write_text("amount,customer_id,timestamp,order_id\n4,d,2020-02-01,o1\n2020-02-02\n"
                                        "5,e,2020-02-03,o1\n6,f,2020-02-04,o2\n")
    (tmp_path / "day-3.csv").write_text("amount,customer_id,timestamp,order_id\n7,g,2020-03-01,o3,x\n"
                                        "8,h,2020-03-02,o4\n")
    data = load(transactions=TableSource(path=str(tmp_path / "day-*.csv")))
    report = data.report["transactions"]
    assert report.rows == 9 and report.valid == 4
    assert report.rejected == {"malformed CSV line": 3, "negative amount": 1, "repeated order_id": 1}
    rows = data.con.execute("SELECT customer_id, amount, order_id FROM transactions ORDER BY 1").fetchall()
    assert rows == [("a", 1.0, None), ("d", 4.0, "o1"), ("f", 6.0, "o2"), ("h", 8.0, "o4")]
    rejects = data.con.execute("SELECT source_row, reason, record FROM rejects ORDER BY 2, 1").fetchall()
    malformed = [json.loads(record) for _, reason, record in rejects if reason == "malformed CSV line"]
    assert [(Path(r["file"]).name, r["line"], r["text"]) for r in malformed] == [
        ("day-1.csv", 3, "b,2020-01-02,2,surplus"), ("day-2.csv", 3, "2020-02-02"),
        ("day-3.csv", 2, "7,g,2020-03-01,o3,x")]
    # rows are numbered across the files in order (the malformed lines are not rows)
    assert [(row, reason) for row, reason, _ in rejects if row] == [(2, "negative amount"), (4, "repeated order_id")]


def test_unknown_or_missing_columns_are_named(orders_csv):
    with pytest.raises(LifecycleError) as missing:
        load(transactions=TableSource(path=str(orders_csv)))
    assert str(missing.value) == (
        "transactions: 3 columns not found: 'customer_id' (for customer_id), 'timestamp' (for timestamp), 'amount' "
        "(for amount); the file has ['cust', 'oid', 'price', 'ts']; map yours in inputs.transactions.columns "
        "(customer_id, timestamp, amount)")
    with pytest.raises(LifecycleError) as misspelt:  # every one at once, with the closest names in any case
        load(transactions=TableSource(path=str(orders_csv), exclude=["Stat in [x]"],
                                      columns={"customer_id": "Cust", "timestamp": "tss", "amount": "prize",
                                               "order_id": "order"}))
    assert str(misspelt.value) == (
        "transactions: 5 columns not found: 'Cust' (for customer_id; did you mean 'cust'?), 'tss' (for timestamp; "
        "did you mean 'ts'?), 'prize' (for amount; did you mean 'price'?), 'order' (for order_id), 'Stat' (in a row "
        "filter); the file has ['cust', 'oid', 'price', 'ts']")
    with pytest.raises(LifecycleError, match="unknown columns"):
        load(transactions=TableSource(path=str(orders_csv), columns={"customer": "cust"}))
    with pytest.raises(LifecycleError, match="no file matches"):
        load(transactions=TableSource(path=str(orders_csv) + ".missing"))
    with pytest.raises(LifecycleError, match=r"no orders given: pass --transactions FILE, or set "
                                             r"inputs\.transactions\.path"):
        load(events=TableSource(path=str(orders_csv)), transactions=TableSource())


def test_a_table_without_any_valid_row_is_an_error():
    frame = pd.DataFrame({"customer_id": ["a"], "timestamp": ["2020-01-01"], "amount": [-5.0]})
    with pytest.raises(LifecycleError, match=r"no valid rows.*1 negative amount"):
        load(transactions=frame)


def test_events_and_customers_are_validated():
    orders = pd.DataFrame({"customer_id": ["a"], "timestamp": ["2020-01-01"], "amount": [5.0]})
    events = pd.DataFrame({"customer_id": ["a", "a", "b", "c"],
                           "timestamp": ["2020-01-02", "2020-01-03", "2020-01-04", "2020-01-05"],
                           "event_type": ["Session", None, "nps", "nps"], "value": [None, None, "9", "great"]})
    customers = pd.DataFrame({"customer_id": ["a", "a", "b", "c"],
                              "signup_date": ["2019-12-01", "2019-12-02", "2030-01-01", "2019-01-01"],
                              "acquisition_cost": [1.0, 2.0, 3.0, -4.0]})
    data = load(transactions=orders, events=events, customers=customers)
    assert data.report["events"].rejected == {"missing event_type": 1, "unparseable value": 1}
    assert data.con.execute("SELECT event_type FROM events ORDER BY timestamp").fetchall() == [("session",), ("nps",)]
    assert data.report["customers"].rejected == {
        "repeated customer_id": 1, "signup_date in the future": 1, "negative acquisition_cost": 1}


def test_cdnow_master_log_is_read_whole(cdnow_master, tmp_path):
    """CDNOW's quirks are data, not errors: all 69,659 rows are valid (no order id to repeat)."""
    from features import cdnow

    log = cdnow_master
    assert len(log) == 69_659 and log.customer_id.nunique() == 23_570
    assert (log.timestamp.min(), log.timestamp.max()) == (pd.Timestamp("1997-01-01"), pd.Timestamp("1998-06-30"))
    assert log.duplicated(["customer_id", "timestamp"]).sum() == 2_068
    assert (log.amount == 0).sum() == 80
    assert log.duplicated().sum() == 255

    data = load(transactions=TableSource(path=str(cdnow.write_master(tmp_path))))
    report = data.report["transactions"]
    assert (report.rows, report.valid, report.rejected_total) == (69_659, 69_659, 0)
    assert data.customers_count() == 23_570


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_valid_rows_are_exactly_the_unrejected_ones_in_parallel_scans(fmt, tmp_path):
    """Rejects are remembered by row number; the numbering must agree between scans of big files."""
    import numpy as np

    n = 300_000
    rng = np.random.default_rng(1)
    amount = rng.uniform(1, 100, n)
    bad = rng.random(n) < 0.01
    amount[bad] = -1.0
    frame = pd.DataFrame({"customer_id": rng.integers(0, 50_000, n), "amount": amount, "order_id": np.arange(n),
                          "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**7, n), "s")})
    path = tmp_path / f"orders.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path, row_group_size=10_000)  # many row groups: scanned by both threads
    else:
        frame.to_csv(path, index=False)
    data = load(transactions=TableSource(path=str(path)))
    assert data.report["transactions"].rejected == {"negative amount": int(bad.sum())}
    valid = data.con.execute(
        "SELECT count(*), count(*) FILTER (WHERE amount < 0), sum(CAST(order_id AS BIGINT)) FROM transactions")
    assert valid.fetchall()[0] == (n - bad.sum(), 0, int(np.arange(n)[~bad].sum()))


def _partitioned(tmp_path: Path, orders: pd.DataFrame, by: str) -> Path:
    """``orders`` written as a hive-style Parquet dataset: one folder per day (``dt=2024-01-31``) or per year and
    month (``year=2024/month=1``), by DuckDB's partitioned writer."""
    import duckdb

    folder = tmp_path / by
    keys = ("CAST(ts AS DATE) AS dt", "dt") if by == "day" else ("year(ts) AS year, month(ts) AS month", "year, month")
    con = duckdb.connect()
    con.register("orders", orders)
    con.execute(f"COPY (SELECT *, {keys[0]} FROM orders) TO '{folder}' (FORMAT parquet, PARTITION_BY ({keys[1]}))")
    return folder


@pytest.mark.parametrize("by", ["day", "month"])
def test_a_dataset_partitioned_by_date_is_read_only_up_to_the_as_of_day(tmp_path, by):
    """A folder of Parquet files partitioned by day or by year and month is one table; as of a day, the later
    partitions' files are not opened at all (one that is not Parquet does not stop the run, and stops it without the
    day) and Parquet timestamps are filtered in the scan; the rows read are exactly the file's up to that day,
    rows without a timestamp still rejected."""
    from datetime import date

    from features.sources import connect
    from features.sources import load as load_sources

    rng = np.random.default_rng(2)
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 120 * 24, 3000), unit="h")
    orders = pd.DataFrame({"cust": rng.integers(0, 300, 3000).astype(str), "ts": ts,
                           "amount": rng.gamma(2, 20, 3000).round(2)})
    orders.loc[:4, "ts"] = pd.NaT
    folder = _partitioned(tmp_path, orders, by)
    late = sorted(f for f in folder.rglob("*.parquet") if "HIVE_DEFAULT" not in str(f))[-1]  # (no timestamp: NULL)
    late.write_bytes(b"not parquet")  # in the last partition, after the as-of day
    day = date(2024, 2, 20)
    source = TableSource(path=str(folder), columns={"customer_id": "cust", "timestamp": "ts"})
    data = load_sources(connect(), {"transactions": source}, now=NOW, until=day)
    kept = orders[orders.ts.isna() | (orders.ts < pd.Timestamp(day) + pd.Timedelta(days=1))]
    assert data.report["transactions"].rows == len(kept)
    assert data.report["transactions"].rejected == {"missing timestamp": 5}
    read = data.con.sql("SELECT customer_id, timestamp, amount FROM transactions ORDER BY ALL").df()
    expected = kept.dropna().rename(columns={"cust": "customer_id", "ts": "timestamp"}).sort_values(
        ["customer_id", "timestamp", "amount"], ignore_index=True)
    pd.testing.assert_frame_equal(read, expected, check_dtype=False)
    plan = " ".join(data.con.sql("EXPLAIN SELECT * FROM transactions_raw").fetchall()[0][1].split())
    scan = plan[plan.index("READ_PARQUET"):]  # the filters are the scan's: files skipped, row groups tested
    assert "(ts IS NULL) OR (ts < '2024-02-21 00:00:00'::TIMESTAMP)" in scan
    files = sorted(folder.rglob("*.parquet"))
    opened = [f for f in files if "HIVE_DEFAULT" in str(f) or (
        f.parent.name <= f"dt={day}" if by == "day" else int(f.parent.name.removeprefix("month=")) <= day.month)]
    assert f"Scanning Files: {len(opened)}/{len(files)}" in scan and len(opened) < len(files) / 2 + 3
    with pytest.raises(LifecycleError, match=f"transactions: cannot read '{folder}'.*{late.name}"):
        load_sources(connect(), {"transactions": source}, now=NOW)
