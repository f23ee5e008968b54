"""Reading and validating the input tables through DuckDB.

Each table (transactions, events, customers) comes from a CSV or Parquet file or glob, or from a
pandas DataFrame (the API path). Columns are mapped from the user's names to ours, values are
parsed, and every row either becomes a valid row or a reject with exactly one reason. Nothing is
dropped silently: ``rows in = valid + rejected`` per table, and ``Dataset.report`` says so.
"""

from __future__ import annotations

import glob
import gzip
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Self

import duckdb

from features.errors import LifecycleError
from features.tables import COMPRESSIONS, CSV_SUFFIXES, SCHEMAS, TableSource, output_format

if TYPE_CHECKING:  # pandas loads only where a frame is given (the CLI starts without it)
    import pandas as pd

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
_SQL_TYPE = {"id": "VARCHAR", "key": "VARCHAR", "label": "VARCHAR", "timestamp": "TIMESTAMP",
             "amount": "DOUBLE", "number": "DOUBLE"}


@dataclass
class TableReport:
    """Row accounting of one input table."""

    rows: int
    valid: int
    rejected: dict[str, int] = field(default_factory=dict)

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
        for table, column in (("transactions", "timestamp"), ("events", "timestamp"), ("customers", "signup_date")):
            if table in self.report:
                self.con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM {table}_valid "
                                 f"WHERE {column} IS NULL OR {column} < {bound}")
        return self

    def date_range(self) -> tuple[datetime | None, datetime | None]:
        """First and last valid transaction timestamp."""
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
) -> Dataset:
    """Register, map and validate the input tables; ``transactions`` is required.

    Timestamps later than ``now + future_tolerance_days`` are rejected as far-future; rows after
    an as-of date are *not* rejected here (the feature build just does not read them).
    """
    if sources.get("transactions") is None:
        raise LifecycleError("no transactions given: pass --transactions or set inputs.transactions.path")
    future_limit = now + timedelta(days=future_tolerance_days)
    given = {}  # table -> (raw view, column map, timestamp format)
    for table in SCHEMAS:
        source = sources.get(table)
        if isinstance(source, TableSource):
            if source.path is not None:
                given[table] = (_raw_relation(con, table, source), source.columns, source.timestamp_format)
        elif source is not None:  # a data frame
            given[table] = (_raw_relation(con, table, source), {}, None)
    id_type = _id_type(con, given)
    report: dict[str, TableReport] = {}
    reject_views = []
    for table, schema in SCHEMAS.items():
        if table not in given:
            _empty_view(con, table, schema, id_type)
            continue
        raw, mapping, fmt = given[table]
        _checked_view(con, table, schema, raw, mapping, fmt, future_limit, id_type)
        report[table] = _count(con, table)
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
    return Dataset(con, report)


def _describe(report: TableReport) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in report.rejected.items())
    return f"{report.rows} rows, {report.rejected_total} rejected" + (f": {reasons}" if reasons else "")


def _raw_relation(con: duckdb.DuckDBPyConnection, table: str, source: TableSource | pd.DataFrame) -> str:
    """Register the user's table as view ``{table}_raw`` and return its name."""
    name = f"{table}_raw"
    # CSV files keep their malformed lines in these (see below); none may linger from an earlier load
    con.execute(f"DROP TABLE IF EXISTS {table}_csv_errors; DROP TABLE IF EXISTS {table}_csv_scans")
    if not isinstance(source, TableSource):
        con.register(f"{name}_frame", source)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {name}_frame")
        return name
    path = source.path
    files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    if not files or not all(Path(f).is_file() for f in files):
        raise LifecycleError(f"{table}: no file matches {path!r}")
    empty = [f for f in files if Path(f).stat().st_size == 0]
    if empty:
        raise LifecycleError(f"{table}: {empty[0]!r} is empty (0 bytes)")
    suffixes = {_format_suffix(f) for f in files}
    if suffixes <= {".parquet", ".pq"}:
        quoted = "[" + ", ".join(sql_literal(f) for f in files) + "]"
        reader = f"SELECT * FROM read_parquet({quoted}, union_by_name = true)"
    elif suffixes <= set(CSV_SUFFIXES):
        reader = _csv_reader(table, files)
    else:
        raise LifecycleError(f"{table}: {path!r} is neither CSV ({', '.join(CSV_SUFFIXES)}, optionally "
                             f"{' or '.join(COMPRESSIONS)}) nor Parquet, by its extension")
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {reader}")
    except duckdb.Error as exc:
        raise LifecycleError(f"{table}: cannot read {path!r}: {str(exc).splitlines()[0]}") from None
    return name


def _csv_reader(table: str, files: list[str]) -> str:
    """SQL reading CSV ``files`` as text, with lines of too few or too many fields set aside.

    DuckDB keeps such lines in its rejects tables (read by ``_malformed_lines``) only when one read
    does not match files by column name, so each run of files with the same header line is one
    read, and the runs are matched by name.
    """
    options = (f"all_varchar = true, header = true, store_rejects = true, "
               f"rejects_table = '{table}_csv_errors', rejects_scan = '{table}_csv_scans'")
    runs = groupby(files, key=_header_line)
    return " UNION ALL BY NAME ".join(
        "SELECT * FROM read_csv([" + ", ".join(sql_literal(f) for f in run) + f"], {options})" for _, run in runs)


def _format_suffix(path: str) -> str:
    """The extension that says a file's format, under a compression DuckDB reads: ``.csv`` for ``x.csv.gz``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _header_line(path: str) -> bytes:
    compression = Path(path).suffix.lower()
    if compression == ".gz":
        with gzip.open(path, "rb") as file:
            return file.readline().strip()
    if compression == ".zst":  # no zstd reader in Python 3.11's standard library: ask DuckDB
        return str(duckdb.execute("SELECT Columns FROM sniff_csv(?)", [path]).fetchone()[0]).encode()
    with open(path, "rb") as file:
        return file.readline().strip()


def _id_type(con, given) -> str:
    """BIGINT when every given table stores customer ids as integers (faster), else VARCHAR."""
    for raw, mapping, _ in given.values():
        names, types = _columns(con, raw)
        dtype = dict(zip(names, types, strict=True)).get(mapping.get("customer_id", "customer_id"))
        if dtype not in _INTEGER_TYPES:
            return "VARCHAR"
    return "BIGINT"


def _checked_view(con, table, schema, raw, mapping, fmt, future_limit, id_type) -> None:
    """Create ``{table}_parsed`` (every row, parsed, with a reason or NULL), ``{table}_rejected`` (the rejected
    row numbers and reasons) and ``{table}`` (the valid rows)."""
    available = {name: dtype for name, dtype in zip(*_columns(con, raw), strict=True)}
    unknown = set(mapping) - set(schema)
    if unknown:
        raise LifecycleError(f"{table}: column map names unknown columns {sorted(unknown)}; ours are {list(schema)}")
    given, parsed, checks = [], [], []
    for ours, (required, kind) in schema.items():
        theirs = mapping.get(ours, ours)
        if theirs not in available:
            if required:
                raise LifecycleError(
                    f"{table}: column {theirs!r} (for {ours}) not found; the file has {sorted(available)}"
                    + ("" if ours in mapping else f"; map yours with inputs.{table}.columns.{ours}")
                )
            parsed.append(f"CAST(NULL AS {_SQL_TYPE[kind]}) AS {ours}")
            continue
        _check_type(table, ours, kind, theirs, available[theirs])
        source, value, column_checks = _parse(ours, kind, f"raw.{_ident(theirs)}", available[theirs], fmt,
                                              required, future_limit, id_type)
        given.append(f"{source} AS _in_{ours}")
        parsed.append(f"{value} AS {ours}")
        checks.extend(column_checks)
    reason = "CASE " + " ".join(f"WHEN {cond} THEN '{why}'" for cond, why in checks) + " END"
    record = "to_json({" + ", ".join(f"{sql_literal(c)}: raw.{_ident(c)}" for c in available) + "})"
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {table}_numbered AS "
        f"SELECT row_number() OVER () AS source_row, {record} AS record FROM {raw} AS raw"
    )
    # One layer per step, under the row numbering, so that DuckDB computes each text, value and check
    # once per row (a filter on ``reason`` pushed into one expression would repeat the parsing ~10x).
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW {table}_parsed AS
        SELECT row_number() OVER () AS source_row, * FROM (
            SELECT {", ".join(schema)}, {reason} AS reason FROM (
                SELECT *, {", ".join(parsed)} FROM (SELECT {", ".join(given)} FROM {raw} AS raw)))
    """)
    # The one full validation pass keeps only the rejected row numbers; valid rows are an anti-join.
    # row_number() OVER () follows the input's order in every scan (tests/test_sources.py checks it).
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_rejected AS "
                f"SELECT source_row, reason FROM {table}_parsed WHERE reason IS NOT NULL")
    key = {"transactions": "order_id", "customers": "customer_id"}.get(table)
    if key:
        _reject_repeated_keys(con, table, key)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT {', '.join(schema)} FROM {table}_parsed "
        f"ANTI JOIN {table}_rejected USING (source_row)"
    )
    _malformed_lines(con, table)


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


def _malformed_lines(con, table: str) -> None:
    """``{table}_malformed``: the CSV lines DuckDB could not split into the header's fields (set aside by the
    validation pass above; every later scan adds them again, so they are kept once, now), with the line."""
    errors = f"{table}_csv_errors"
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [errors]).fetchall()[0][0]:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_malformed (reason VARCHAR, record JSON)")
        return
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_malformed AS
        SELECT 'malformed CSV line' AS reason,
            to_json({{'file': file_path, 'line': line, 'text': csv_line, 'error': error_message}}) AS record
        FROM (SELECT DISTINCT ON (file_path, line) file_path, line, csv_line, error_message
              FROM {errors} JOIN {table}_csv_scans USING (scan_id, file_id) ORDER BY file_path, line)
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


def _parse(ours, kind, column, dtype, fmt, required, future_limit, id_type):
    """How one column is parsed: (its input as given, its value, the (condition, reason) checks it adds).

    The value is SQL over ``_in_{ours}`` (the input: trimmed text, or a typed column as it is) and
    the checks over both names, so each is computed once per row in its own layer of the query.
    """
    typed = dtype != "VARCHAR"
    given = column if typed and kind != "label" else f"NULLIF(trim(CAST({column} AS VARCHAR)), '')"
    field = f"_in_{ours}"
    checks = [(f"{field} IS NULL", f"missing {ours}")] if required or kind == "id" else []
    if kind == "id" and id_type == "BIGINT":
        return given, f"CAST({field} AS BIGINT)", checks
    if kind == "key":  # only compared for duplicates, so its own type will do
        return given, field, checks
    if kind == "id":
        return given, f"CAST({field} AS VARCHAR)", checks
    if kind == "label":
        return given, f"lower({field})", checks
    if kind == "timestamp":
        if dtype.startswith(("TIMESTAMP", "DATE")):
            value = f"CAST({field} AS TIMESTAMP)"
        elif fmt:
            value = f"try_strptime({field}, {sql_literal(fmt)})"
        else:
            value = f"try_cast({field} AS TIMESTAMP)"
        if not dtype.startswith(("TIMESTAMP", "DATE")):
            checks.append((f"{field} IS NOT NULL AND {ours} IS NULL", f"unparseable {ours}"))
        checks.append((f"{ours} > TIMESTAMP '{future_limit:%Y-%m-%d %H:%M:%S}'", f"{ours} in the future"))
        return given, value, checks
    # amount / number
    value = f"CAST({field} AS DOUBLE)" if typed else f"try_cast({field} AS DOUBLE)"
    if not typed:
        checks.append((f"{field} IS NOT NULL AND {ours} IS NULL", f"unparseable {ours}"))
    checks.append((f"isnan({ours}) OR isinf({ours})", f"{ours} is not a finite number"))
    if kind == "amount":
        checks.append((f"{ours} < 0", f"negative {ours}"))
    return given, value, checks


def _count(con, table: str) -> TableReport:
    rejected = dict(con.execute(
        f"SELECT reason, count(*) FROM (SELECT reason FROM {table}_rejected UNION ALL "
        f"SELECT reason FROM {table}_malformed) GROUP BY reason ORDER BY 2 DESC, 1").fetchall())
    rows = con.execute(f"SELECT (SELECT count(*) FROM {table}_raw) + (SELECT count(*) FROM {table}_malformed)"
                       ).fetchall()[0][0]
    return TableReport(rows=rows, valid=rows - sum(rejected.values()), rejected=rejected)


def _empty_view(con, table: str, schema, id_type: str) -> None:
    cols = ", ".join(
        f"CAST(NULL AS {id_type if kind == 'id' else _SQL_TYPE[kind]}) AS {name}" for name, (_, kind) in schema.items()
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT {cols} WHERE false")


def _columns(con, relation: str) -> tuple[list[str], list[str]]:
    described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return [row[0] for row in described], [row[1] for row in described]


def write_relation(relation: duckdb.DuckDBPyRelation, path: str | Path) -> None:
    """Write a relation to Parquet or CSV, chosen by the file extension."""
    path = Path(path)
    parquet = output_format(path) == "parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if parquet:
        relation.write_parquet(str(path))
    else:
        relation.write_csv(str(path), header=True)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(text: str) -> str:
    """``text`` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
