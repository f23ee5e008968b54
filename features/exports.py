"""A merchant's export shaped into rows of our tables before they are checked: line items rolled up into orders,
row filters as SQL, and an amount written as several columns (docs/data.md, "Exports as shops have them")."""

from __future__ import annotations

import re

from features.errors import LifecycleError
from features.files import columns_of, ident, sql_literal
from features.tables import RowFilter, TableSource

_TERM = re.compile(r"\s+([+-])\s+")  # between the columns of an amount's expression: 'Total - Refunded Amount'


def rolled_up(con, table: str, raw: str, source: TableSource) -> str:
    """``raw`` itself, or with ``source.line_items`` the view ``{table}_orders``: the lines sharing an order id as
    one row (a line without an id is an order of its own), each column its first non-empty value in file order, or
    with ``"sum"`` the amount's columns summed over the lines (their first unreadable value, if one is: it is then
    rejected as such). ``_line`` is the order's first line, counted as ``source_row`` counts rows."""
    if source.line_items is None:
        return raw
    names, types = columns_of(con, raw)
    if "order_id" not in source.columns and "order_id" not in names:
        raise LifecycleError(f"{table}: line_items needs the order id: set inputs.{table}.columns.order_id")
    summed = set()
    if source.line_items == "sum":
        amount = source.columns.get("amount", "amount")
        summed = {*(terms(amount, names) or [amount]), source.columns.get("refunded", "refunded")} & set(names)
    order = ident(source.columns.get("order_id", "order_id"))
    con.execute(f"CREATE OR REPLACE TEMP VIEW {table}_lines AS SELECT row_number() OVER () AS _line, * FROM {raw}")
    columns = []
    for name, dtype in zip(names, types, strict=True):
        column, text = ident(name), f"NULLIF(trim(CAST({ident(name)} AS VARCHAR)), '')"
        first = f"arg_min({column}, _line) FILTER (WHERE {text} IS NOT NULL)"
        if name in summed and dtype == "VARCHAR":
            unreadable = f"{text} IS NOT NULL AND try_cast({text} AS DOUBLE) IS NULL"
            first = (f"coalesce(arg_min({column}, _line) FILTER (WHERE {unreadable}), "
                     f"CAST(sum(try_cast({text} AS DOUBLE)) AS VARCHAR))")
        elif name in summed:
            first = f"sum({column})"
        columns.append(f"{first} AS {column}")
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW {table}_orders AS
        SELECT min(_line) AS _line, {", ".join(columns)} FROM {table}_lines
        GROUP BY coalesce(NULLIF(trim(CAST({order} AS VARCHAR)), ''), '#line ' || _line)
    """)
    return f"{table}_orders"


def terms(expression: str, available) -> list[str] | None:
    """The columns of an amount's expression in order (``"A + B - C"``: each is a column of ``available``), or
    None where it is not one (a single name is not an expression)."""
    parts = _TERM.split(expression.strip())
    columns = parts[::2]
    return columns if len(columns) > 1 and all(c in available for c in columns) else None


def filter_sql(condition: RowFilter, column: str) -> str:
    """A row filter as SQL that is true or false, never NULL (an empty value is in no list and contains nothing)."""
    text = f"lower(trim(CAST({column} AS VARCHAR)))"
    if condition.test == "in":
        test = f"coalesce({text} IN ({', '.join(sql_literal(v) for v in condition.values)}), false)"
    elif condition.test == "contains":
        test = f"coalesce(contains({text}, {sql_literal(condition.values[0])}), false)"
    else:
        test = f"coalesce({text}, '') = ''"
    return f"NOT {test}" if condition.negated else test


def sum_of(ours: str, expression: str, terms: dict[str, str]) -> tuple[str, str, list[tuple[str, str]]]:
    """``_parse`` for an amount written as columns joined by ``+`` and ``-``: an empty column counts as 0, all of
    them empty is a missing amount, and any value that is not a number makes it unparseable."""
    signs = ["+", *_TERM.findall(expression.strip())]
    numbers = {t: (f"raw.{ident(t)}" if dtype != "VARCHAR"
                   else f"try_cast(NULLIF(trim(raw.{ident(t)}), '') AS DOUBLE)") for t, dtype in terms.items()}
    texts = [f"NULLIF(trim(CAST(raw.{ident(t)} AS VARCHAR)), '')" for t in terms]
    total = " ".join(f"{sign} coalesce({numbers[t]}, 0)" for sign, t in zip(signs, terms, strict=True))
    unreadable = " OR ".join(f"({text} IS NOT NULL AND {numbers[t]} IS NULL)"
                             for text, t in zip(texts, terms, strict=True))
    given = (f"CASE WHEN {' AND '.join(f'{t} IS NULL' for t in texts)} THEN NULL ELSE {total} END AS _in_{ours}, "
             f"({unreadable}) AS _unreadable_{ours}")
    checks = [(f"_in_{ours} IS NULL", f"missing {ours}"), (f"_unreadable_{ours}", f"unparseable {ours}"),
              (f"isnan({ours}) OR isinf({ours})", f"{ours} is not a finite number"),
              (f"{ours} < 0", f"negative {ours}")]
    return given, f"_in_{ours}", checks
