"""The user's files in and ours out: a CSV or Parquet file or glob (or a DataFrame) registered as a raw DuckDB view,
the CSV lines that could not be split, and a relation written to Parquet or CSV."""

from __future__ import annotations

import glob
import gzip
import re
from collections.abc import Callable
from datetime import date, timedelta
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from features.errors import LifecycleError
from features.tables import COMPRESSIONS, CSV_SUFFIXES, TIME_COLUMNS, TableSource, output_format

if TYPE_CHECKING:  # pandas loads only where a frame is given (the CLI starts without it)
    import pandas as pd


def raw_relation(con: duckdb.DuckDBPyConnection, table: str, source: TableSource | pd.DataFrame,
                 until: date | None = None) -> str:
    """Register the user's table as view ``{table}_raw`` and return its name.

    A folder is a Parquet dataset (its ``*.parquet`` files at any depth), hive-partitioned where its folders are
    named ``key=value``. With ``until``, the view holds only the rows on or before that day, filtered where they are
    read (``until_condition``): a dataset partitioned by day skips the later folders' files, and a Parquet timestamp
    column its later row groups.
    """
    name = f"{table}_raw"
    # CSV files keep their malformed lines in these (see below); none may linger from an earlier load
    con.execute(f"DROP TABLE IF EXISTS {table}_csv_errors; DROP TABLE IF EXISTS {table}_csv_scans")
    if not isinstance(source, TableSource):
        con.register(f"{name}_frame", source)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {name}_frame")
        return name
    path = source.path
    files = dataset_files(path)
    if not files or not all(Path(f).is_file() for f in files):
        raise LifecycleError(f"{table}: no file matches {path!r}")
    empty = [f for f in files if Path(f).stat().st_size == 0]
    if empty:
        raise LifecycleError(f"{table}: {empty[0]!r} is empty (0 bytes)")
    suffixes = {_format_suffix(f) for f in files}
    if suffixes <= {".parquet", ".pq"}:
        quoted = "[" + ", ".join(sql_literal(f) for f in files) + "]"
        # A hive dataset's files share one schema (that of its first file, as Spark reads it): reading every file's
        # to unite them by name would open the files of the partitions a day skips.
        hive = bool(hive_keys(path, files))
        options = "hive_partitioning = true" if hive else "union_by_name = true, hive_partitioning = false"
        reader = f"SELECT * FROM read_parquet({quoted}, {options})"
    elif suffixes <= set(CSV_SUFFIXES):
        reader = _csv_reader(table, files)
    else:
        raise LifecycleError(f"{table}: {path!r} is neither CSV ({', '.join(CSV_SUFFIXES)}, optionally "
                             f"{' or '.join(COMPRESSIONS)}) nor Parquet, by its extension")
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {reader}")
        if until is not None:
            names, types = columns_of(con, name)
            time_column = source.columns.get(TIME_COLUMNS[table], TIME_COLUMNS[table])
            kinds = dict(zip(names, types, strict=True))
            condition = until_condition(until, time_column, kinds.get(time_column),
                                        {key: kinds[key] for key in hive_keys(path, files) if key in kinds})
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM ({reader}) WHERE {condition}")
    except duckdb.Error as exc:
        raise LifecycleError(f"{table}: cannot read {path!r}: {str(exc).splitlines()[0]}") from None
    return name


def dataset_files(path: str) -> list[str]:
    """The files at ``path``: a file, a glob's matches, or a folder's Parquet files at any depth (a dataset)."""
    if Path(path).is_dir():
        return sorted(f for suffix in (".parquet", ".pq") for f in glob.glob(f"{glob.escape(path)}/**/*{suffix}",
                                                                              recursive=True))
    return sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]


def hive_keys(path: str, files: list[str]) -> list[str]:
    """The partition keys of a hive-style dataset: the ``key=value`` folders every file sits in below ``path`` (a
    folder, or a glob's folder before its first wildcard), outermost first; none where the files disagree."""
    root = Path(path) if Path(path).is_dir() else Path(re.split(r"[*?\[]", path)[0]).parent
    layouts = set()
    for file in files:
        try:
            folders = Path(file).relative_to(root).parent.parts
        except ValueError:
            return []
        layouts.add(tuple(folder.split("=", 1)[0] for folder in folders if "=" in folder))
    return list(layouts.pop()) if len(layouts) == 1 else []


def _csv_reader(table: str, files: list[str]) -> str:
    """SQL reading CSV ``files`` as text, with lines of too few or too many fields set aside.

    DuckDB keeps such lines in its rejects tables (read by ``malformed_lines``) only when one read
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


def malformed_lines(con, table: str) -> None:
    """``{table}_malformed``: the CSV lines DuckDB could not split into the header's fields, with the line (set
    aside by the first scan of the raw view, the validation pass; every later scan adds them again, so they are kept
    once, then)."""
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


def write_relation(relation: duckdb.DuckDBPyRelation, path: str | Path) -> None:
    """Write a relation to Parquet or CSV, chosen by the file extension."""
    path = Path(path)
    parquet = output_format(path) == "parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if parquet:
        relation.write_parquet(str(path))
    else:
        relation.write_csv(str(path), header=True)


def sql_literal(text: str) -> str:
    """``text`` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def columns_of(con: duckdb.DuckDBPyConnection, relation: str) -> tuple[list[str], list[str]]:
    """The names and DuckDB types of a relation's columns."""
    described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return [row[0] for row in described], [row[1] for row in described]


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def until_condition(day: date, time_column: str | None, time_type: str | None, partitions: dict[str, str],
                    quote: Callable[[str], str] = ident) -> str:
    """A SQL condition (DuckDB's, or Spark's with its ``quote`` of names) keeping a raw table's rows on or before
    ``day``, written so the reader can skip what is later: on a day partition (a date-typed key, or integer
    ``year``[/``month``[/``day``]] keys) and on a timestamp or date column (``time_type`` and the partitions' types as
    the engine names them). Rows without a time are kept (they are rejected as such later); ``true`` where nothing
    tells the time before parsing."""
    conditions = []
    lower = {key.lower(): key for key in partitions}
    dated = [key for key, kind in partitions.items() if kind.upper() == "DATE"]
    if dated:  # rows without a time sit in a partition without a value
        conditions.append(f"({quote(dated[0])} IS NULL OR {quote(dated[0])} <= DATE '{day}')")
    elif "year" in lower:  # compared part by part (DuckDB prunes files on that, not on a date made of the parts)
        keys = []
        for part, value in (("year", day.year), ("month", day.month), ("day", day.day)):
            if part not in lower:
                break
            keys.append((quote(lower[part]), value))
        later = f"{keys[-1][0]} <= {keys[-1][1]}"
        for key, value in reversed(keys[:-1]):
            later = f"{key} < {value} OR ({key} = {value} AND ({later}))"
        conditions.append(f"({keys[0][0]} IS NULL OR {later})")
    kind = (time_type or "").upper()
    if time_column and (kind.startswith("TIMESTAMP") or kind == "DATE"):
        column, later = quote(time_column), f"TIMESTAMP '{day + timedelta(days=1)}'"
        conditions.append(f"({column} IS NULL OR {column} < {later})")
    return " AND ".join(conditions) or "true"
