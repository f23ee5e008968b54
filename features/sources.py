"""Validating the input tables through DuckDB (``features.files`` reads them).

Each table (transactions, events, customers) comes from a CSV or Parquet file or glob, or from a
pandas DataFrame (the API path). Columns are mapped from the user's names to ours, values are
parsed, and every row either becomes a valid row or a reject with exactly one reason. Nothing is
dropped silently: ``rows in = valid + rejected`` per table, and ``Dataset.report`` says so.

A little over 400 lines on purpose: one job (a table's mapping, parsing and reasons to reject) whose steps
share the validation's SQL; reading files is ``features.files``, the platforms' exports ``features.exports``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Self

import duckdb

from features.errors import LifecycleError
from features.exports import filter_sql, rolled_up, sum_of, terms
from features.files import columns_of, ident, malformed_lines, raw_relation, sql_literal, write_relation
from features.tables import SCHEMAS, TIME_COLUMNS, RowFilter, TableSource

if TYPE_CHECKING:  # pandas loads only where a frame is given (the CLI starts without it)
    import pandas as pd

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
_SQL_TYPE = {"id": "VARCHAR", "key": "VARCHAR", "label": "VARCHAR", "timestamp": "TIMESTAMP",
             "amount": "DOUBLE", "number": "DOUBLE", "currency": "VARCHAR"}


@dataclass(frozen=True)
class Rules:
    """What every table's rows are checked against: the latest acceptable timestamp, the customer ids' SQL type,
    whether ids are emails (trimmed, any case), and the one currency orders must be in (None: any one)."""

    future_limit: datetime
    id_type: str = "VARCHAR"
    emails: bool = False
    currency: str | None = None


@dataclass
class TableReport:
    """Row accounting of one input table (``lines``: the lines read, where line items were rolled up into rows)."""

    rows: int
    valid: int
    rejected: dict[str, int] = field(default_factory=dict)
    lines: int | None = None

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class Dataset:
    """Validated input tables registered as DuckDB views ``transactions``, ``events``, ``customers``.

    Empty views stand in for tables that were not given, so the feature SQL never branches on
    which tables exist. ``rejects`` is a view of every rejected row with its reason and raw record.
    """

    con: duckdb.DuckDBPyConnection
    report: dict[str, TableReport]
    materialized: bool = False
    as_of: date | None = None  # the day ``until`` cut the data to (None: it runs to its last order)
    currency: str | None = None  # of every amount: configured, or the one the orders name
    span: tuple[datetime, datetime] | None = None  # the whole shop's first and last order, where this holds a sample

    def materialize(self) -> Self:
        """Keep the valid rows of every given table in DuckDB for jobs that read them many times.

        The views re-parse and re-validate their source on every read, which one pass (``lifecycle
        features``) wants; training reads each table about ten times. DuckDB's tables are
        compressed and spill to its temporary directory beyond the memory limit. Idempotent.
        """
        if not self.materialized:
            for table in self.report:
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_valid AS SELECT * FROM {table}")
                self.con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM {table}_valid")
            self.materialized = True
        return self

    def until(self, day: date) -> Self:
        """Hide every order, event and sign-up after ``day`` (materializing first): this dataset's views become the
        data as it stood then, and it ends there (``as_of``)."""
        self.materialize()
        self.as_of = day
        bound = f"TIMESTAMP '{day + timedelta(days=1)}'"
        for table, column in TIME_COLUMNS.items():
            if table in self.report:
                self.con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM {table}_valid "
                                 f"WHERE {column} IS NULL OR {column} < {bound}")
        return self

    def date_range(self) -> tuple[datetime | None, datetime | None]:
        """First and last valid transaction timestamp (of the whole shop, where this holds a sample of its customers:
        ``span``)."""
        if self.span is not None:
            return self.span
        return self.con.execute("SELECT min(timestamp), max(timestamp) FROM transactions").fetchall()[0]

    def customers_count(self) -> int:
        return self.con.execute("SELECT count(DISTINCT customer_id) FROM transactions").fetchall()[0][0]

    def write_rejects(self, path: str | Path) -> int:
        """Write every rejected row (table, source_row, reason, raw record as JSON); returns the count."""
        total = sum(r.rejected_total for r in self.report.values())
        if total:
            write_relation(self.con.sql("SELECT * FROM rejects ORDER BY input_table, source_row"), path)
        return total


def connect(memory_limit: str | None = None, temp_directory: str | Path | None = None,
            threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection set up for bounded-memory, UTC work."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # (In Jupyter the bar is already off, and DuckDB refuses to touch it without ipywidgets.)
    if con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0]:
        con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")  # lets DuckDB write and spill in parallel
    if memory_limit:
        con.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
    if temp_directory:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {sql_literal(str(Path(temp_directory).resolve()))}")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def load(
    con: duckdb.DuckDBPyConnection,
    sources: Mapping[str, TableSource | pd.DataFrame | None],
    now: datetime,
    future_tolerance_days: int = 1,
    emails: bool = False,
    currency: str | None = None,
    until: date | None = None,
) -> Dataset:
    """Register, map and validate the input tables; ``transactions`` is required.

    Timestamps later than ``now + future_tolerance_days`` are rejected as far-future; rows after
    an as-of date are *not* rejected (the feature build just does not read them), and with ``until`` (the day a
    command works as of) the rows after it are not read at all where the files tell (``files.until_condition``:
    day partitions, Parquet timestamps), nor validated or counted. ``emails``: customer ids
    are emails, compared trimmed and in any case. ``currency``: the one currency orders must be in, where they
    name theirs (``columns.currency``); without it, they must all name the same one.
    """
    given = {}  # table -> (raw view, its source)
    for table in SCHEMAS:
        source = sources.get(table)
        if isinstance(source, TableSource):
            if source.path is not None:
                given[table] = (rolled_up(con, table, raw_relation(con, table, source, until), source), source)
        elif source is not None:  # a data frame
            given[table] = (raw_relation(con, table, source), TableSource())
    if "transactions" not in given:
        raise LifecycleError("no orders given: pass --transactions FILE, or set inputs.transactions.path in "
                             "lifecycle.toml (LIFECYCLE_INPUTS__TRANSACTIONS__PATH)")
    rules = Rules(now + timedelta(days=future_tolerance_days), _id_type(con, given, emails), emails, currency)
    report: dict[str, TableReport] = {}
    reject_views = []
    for table, schema in SCHEMAS.items():
        if table not in given:
            _empty_view(con, table, schema, rules.id_type)
            continue
        raw, source = given[table]
        try:  # the first full read of the files: where a dataset's unreadable file shows
            _checked_view(con, table, schema, raw, source, rules)
            report[table] = _count(con, table, raw, source.line_items is not None)
        except (duckdb.IOException, duckdb.InvalidInputException) as exc:
            raise LifecycleError(f"{table}: cannot read {source.path!r}: {str(exc).splitlines()[0]}") from None
        if table == "transactions" and not report[table].rows and isinstance(sources[table], TableSource):
            raise LifecycleError("transactions: no rows (the file has a header and nothing else)")
        if report[table].rows and not report[table].valid:  # a wrong format or column map, most likely
            raise LifecycleError(f"{table}: no valid rows ({_describe(report[table])})")
        reject_views.append(
            f"SELECT '{table}' AS input_table, source_row, reason, record FROM {table}_rejected "
            f"JOIN {table}_numbered USING (source_row) "
            f"UNION ALL SELECT '{table}', NULL, reason, record FROM {table}_malformed"
        )
    con.execute("CREATE OR REPLACE TEMP VIEW rejects AS " + " UNION ALL ".join(reject_views))
    return Dataset(con, report, currency=_currency(con, given, currency))


def _describe(report: TableReport) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in report.rejected.items())
    return f"{report.rows} rows, {report.rejected_total} rejected" + (f": {reasons}" if reasons else "")


def _currency(con, given, configured: str | None) -> str | None:
    """The currency of the orders: the configured one, else the one their currency column names (if mapped)."""
    raw, source = given["transactions"]
    if configured or source.columns.get("currency", "currency") not in columns_of(con, raw)[0]:
        return configured
    found = con.execute("SELECT currency, count(*) FROM transactions WHERE currency IS NOT NULL GROUP BY 1 "
                        "ORDER BY 2 DESC, 1").fetchall()
    if len(found) > 1:
        counts = ", ".join(f"{code} {n:,}" for code, n in found)
        raise LifecycleError(f"transactions: the orders are in {len(found)} currencies ({counts}); set currency "
                             "(LIFECYCLE_CURRENCY) to the one to keep: orders in the others are rejected")
    return found[0][0] if found else None


def _id_type(con, given, emails: bool) -> str:
    """BIGINT when every given table stores customer ids as integers (faster) and they are not emails, else
    VARCHAR."""
    if emails:
        return "VARCHAR"
    for raw, source in given.values():
        names, types = columns_of(con, raw)
        dtype = dict(zip(names, types, strict=True)).get(source.columns.get("customer_id", "customer_id"))
        if dtype not in _INTEGER_TYPES:
            return "VARCHAR"
    return "BIGINT"


def _checked_view(con, table: str, schema, raw: str, source: TableSource, rules: Rules) -> None:
    """Create ``{table}_parsed`` (every row, parsed, with a reason or NULL), ``{table}_rejected`` (the rejected
    row numbers and reasons) and ``{table}`` (the valid rows; an order's amount net of its refund)."""
    rolled = source.line_items is not None  # ``raw`` is the orders ``rolled_up``: a row counts at its first line
    available = {name: dtype for name, dtype in zip(*columns_of(con, raw), strict=True)
                 if not (rolled and name == "_line")}
    mapping = source.columns
    unknown = set(mapping) - set(schema)
    if unknown:
        raise LifecycleError(f"{table}: column map names unknown columns {sorted(unknown)}; ours are {list(schema)}")
    filters = source.filters()
    _check_columns(table, schema, source, filters, available)
    given, parsed, checks = [], [], []
    for k, (condition, keep) in enumerate(filters):  # first: a row left out is not checked further
        given.append(f"{filter_sql(condition, f'raw.{ident(condition.column)}')} AS _filter_{k}")
        checks.append((f"{'NOT ' if keep else ''}_filter_{k}",
                       f"{'not included' if keep else 'excluded'}: {condition.text}"))
    for ours, (required, kind) in schema.items():
        theirs = mapping.get(ours, ours)
        summed = terms(theirs, available) if kind == "amount" and theirs not in available else None
        if theirs not in available and summed is None:  # an optional column not given (``_check_columns``)
            parsed.append(f"CAST(NULL AS {_SQL_TYPE[kind]}) AS {ours}")
            continue
        if summed is None:
            _check_type(table, ours, kind, theirs, available[theirs])
            inputs, value, column_checks = _parse(ours, kind, f"raw.{ident(theirs)}", available[theirs],
                                                  source.timestamp_format, required, rules)
        else:
            inputs, value, column_checks = sum_of(ours, theirs, {t: available[t] for t in summed})
        given.append(inputs)
        parsed.append(f"{value} AS {ours}")
        checks.extend(column_checks)
    if table == "transactions" and mapping.get("refunded", "refunded") in available:
        checks.append(("refunded > 0 AND refunded >= amount", "fully refunded (not a purchase)"))
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {sql_literal(why)}" for cond, why in checks) + " END"
    record = "to_json({" + ", ".join(f"{sql_literal(c)}: raw.{ident(c)}" for c in available) + "})"
    row = "raw._line" if rolled else "row_number() OVER ()"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {table}_numbered AS SELECT {row} AS source_row, {record} AS record "
                f"FROM {raw} AS raw")
    # One layer per step, under the row numbering, so that DuckDB computes each text, value and check
    # once per row (a filter on ``reason`` pushed into one expression would repeat the parsing ~10x).
    numbered = ("SELECT _line AS source_row, * EXCLUDE (_line)" if rolled else "SELECT row_number() OVER () AS "
                "source_row, *")
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW {table}_parsed AS
        {numbered} FROM (
            SELECT {", ".join(schema)}, {reason} AS reason{", _line" if rolled else ""} FROM (
                SELECT *, {", ".join(parsed)} FROM (SELECT {", ".join(given + (["raw._line"] if rolled else []))}
                FROM {raw} AS raw)))
    """)
    # The one full validation pass keeps only the rejected row numbers; valid rows are an anti-join.
    # row_number() OVER () follows the input's order in every scan (tests/test_sources.py checks it).
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_rejected AS "
                f"SELECT source_row, reason FROM {table}_parsed WHERE reason IS NOT NULL")
    key = {"transactions": "order_id", "customers": "customer_id"}.get(table)
    if key:
        _reject_repeated_keys(con, table, key)
    columns = ["amount - coalesce(refunded, 0) AS amount" if c == "amount" and "refunded" in schema else c
               for c in schema]
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT {', '.join(columns)} FROM {table}_parsed "
        f"ANTI JOIN {table}_rejected USING (source_row)"
    )
    malformed_lines(con, table)


def _check_columns(table: str, schema, source: TableSource, filters: list[tuple[RowFilter, bool]],
                   available) -> None:
    """Refuse, in one line, every column the table needs and the file does not have: required ones, mapped ones and
    those the row ``filters`` name, each with the file's closest names (any case)."""
    needed = [(ours, source.columns.get(ours, ours)) for ours, (required, kind) in schema.items()
              if (required or ours in source.columns) and source.columns.get(ours, ours) not in available
              and not (kind == "amount" and terms(source.columns.get(ours, ours), available))]
    wanted = [(theirs, f"for {ours}") for ours, theirs in needed]
    wanted += [(condition.column, "in a row filter") for condition, _ in filters if condition.column not in available]
    if not wanted:
        return
    by_case = {name.lower(): name for name in available}

    def closest(name: str) -> str:
        close = [by_case[name.lower()]] if name.lower() in by_case else [
            by_case[c] for c in difflib.get_close_matches(name.lower(), list(by_case), n=2, cutoff=0.6)]
        return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""

    named = ", ".join(f"{name!r} ({why}{closest(name)})" for name, why in wanted)
    unmapped = [ours for ours, theirs in needed if theirs == ours]
    hint = f"; map yours in inputs.{table}.columns ({', '.join(unmapped)})" if unmapped else ""
    raise LifecycleError(f"{table}: {len(wanted)} column{'s' if len(wanted) > 1 else ''} not found: {named}; the "
                         f"file has {sorted(available)}{hint}")


def _reject_repeated_keys(con, table: str, key: str) -> None:
    """Add each valid row that repeats the ``key`` of an earlier valid row to ``{table}_rejected``.

    Keys that occur more than once are found by partitioning the key column alone (nothing else is
    parsed or carried); only their rows (usually none) are then checked and put in input order.
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_repeats AS SELECT {key} FROM (
            SELECT {key}, row_number() OVER (PARTITION BY {key}) AS n FROM {table}_parsed WHERE {key} IS NOT NULL)
        WHERE n = 2
    """)
    if con.execute(f"SELECT count(*) FROM {table}_repeats").fetchall()[0][0]:
        con.execute(f"""
            INSERT INTO {table}_rejected
            SELECT source_row, 'repeated {key}' FROM (
                SELECT source_row, row_number() OVER (PARTITION BY {key} ORDER BY source_row) AS n
                FROM {table}_parsed WHERE reason IS NULL AND {key} IN (SELECT {key} FROM {table}_repeats))
            WHERE n > 1
        """)


def _check_type(table: str, ours: str, kind: str, theirs: str, dtype: str) -> None:
    """A typed (Parquet) column whose type cannot hold our kind of value is the user's mistake, named as theirs."""
    numeric = dtype in _INTEGER_TYPES or dtype.startswith(("DOUBLE", "FLOAT", "DECIMAL", "HUGEINT", "UBIGINT",
                                                           "UHUGEINT"))
    fits = {"amount": numeric, "number": numeric, "timestamp": dtype.startswith(("TIMESTAMP", "DATE"))}
    if dtype not in ("VARCHAR", '"NULL"') and not fits.get(kind, True):
        wanted = "a date or timestamp" if kind == "timestamp" else "a number"
        raise LifecycleError(f"{table}: column {theirs!r} (for {ours}) holds {dtype} values; it must be {wanted} "
                             "(or text we can parse)")


def _parse(ours, kind, column, dtype, fmt, required, rules: Rules):
    """How one column is parsed: (its input as given, named ``_in_{ours}``, its value, the (condition, reason) checks
    it adds).

    The value is SQL over ``_in_{ours}`` (the input: trimmed text, or a typed column as it is) and
    the checks over both names, so each is computed once per row in its own layer of the query.
    """
    typed = dtype != "VARCHAR"
    given = column if typed and kind not in ("label", "currency") else f"NULLIF(trim(CAST({column} AS VARCHAR)), '')"
    if kind == "id" and rules.emails:
        given = f"lower({given})"
    elif kind == "currency":
        given = f"upper({given})"
    field = f"_in_{ours}"
    given = f"{given} AS {field}"
    checks = [(f"{field} IS NULL", f"missing {ours}")] if required or kind == "id" else []
    if kind == "id" and rules.id_type == "BIGINT":
        return given, f"CAST({field} AS BIGINT)", checks
    if kind == "key":  # only compared for duplicates, so its own type will do
        return given, field, checks
    if kind == "id":
        return given, f"CAST({field} AS VARCHAR)", checks
    if kind == "label":
        return given, f"lower({field})", checks
    if kind == "currency":
        checks.append((f"NOT regexp_full_match({field}, '[A-Z]{{3}}')", f"unparseable {ours} (not an ISO code)"))
        if rules.currency:
            checks.append((f"{field} <> {sql_literal(rules.currency)}", f"{ours} is not {rules.currency}"))
        return given, field, checks
    if kind == "timestamp":
        if dtype.startswith(("TIMESTAMP", "DATE")):
            value = f"CAST({field} AS TIMESTAMP)"
        elif fmt:
            value = f"try_strptime({field}, {sql_literal(fmt)})"
        else:  # ISO 8601; one with a UTC offset ('+01:00', '+0100', 'Z') is moved to UTC
            offset = (f"CAST(coalesce(try_cast({field} AS TIMESTAMPTZ), try_strptime({field}, '%Y-%m-%d %H:%M:%S %z'))"
                      " AS TIMESTAMP)")
            value = (f"CASE WHEN length({field}) > 19 AND regexp_matches({field}, '([+-][0-9][0-9]:?[0-9][0-9]|Z)$') "
                     f"THEN {offset} ELSE try_cast({field} AS TIMESTAMP) END")
        if not dtype.startswith(("TIMESTAMP", "DATE")):
            checks.append((f"{field} IS NOT NULL AND {ours} IS NULL", f"unparseable {ours}"))
        checks.append((f"{ours} > TIMESTAMP '{rules.future_limit:%Y-%m-%d %H:%M:%S}'", f"{ours} in the future"))
        return given, value, checks
    # amount / number
    value = f"CAST({field} AS DOUBLE)" if typed else f"try_cast({field} AS DOUBLE)"
    if not typed:
        checks.append((f"{field} IS NOT NULL AND {ours} IS NULL", f"unparseable {ours}"))
    checks.append((f"isnan({ours}) OR isinf({ours})", f"{ours} is not a finite number"))
    if kind == "amount":
        checks.append((f"{ours} < 0", f"negative {ours}"))
    return given, value, checks


def _count(con, table: str, relation: str, rolled: bool) -> TableReport:
    """Rows in (of ``relation``; where line items were ``rolled`` up into orders, the lines counted too), valid and
    rejected."""
    rejected = dict(con.execute(
        f"SELECT reason, count(*) FROM (SELECT reason FROM {table}_rejected UNION ALL "
        f"SELECT reason FROM {table}_malformed) GROUP BY reason ORDER BY 2 DESC, 1").fetchall())
    malformed = con.execute(f"SELECT count(*) FROM {table}_malformed").fetchall()[0][0]
    rows = con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0] + malformed
    lines = con.execute(f"SELECT count(*) FROM {table}_raw").fetchall()[0][0] + malformed if rolled else None
    return TableReport(rows=rows, valid=rows - sum(rejected.values()), rejected=rejected, lines=lines)


def _empty_view(con, table: str, schema, id_type: str) -> None:
    cols = ", ".join(
        f"CAST(NULL AS {id_type if kind == 'id' else _SQL_TYPE[kind]}) AS {name}" for name, (_, kind) in schema.items()
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT {cols} WHERE false")
