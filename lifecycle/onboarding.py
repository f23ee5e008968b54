"""``lifecycle init``: a first, commented ``lifecycle.toml`` written from the user's own files, so that ``train``,
``score`` and ``report`` then run with no other flag."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from features.errors import LifecycleError
from features.platforms import Reading, guess_table, read_orders
from features.tables import TableSource


@dataclass
class Onboarding:
    """What ``lifecycle init`` read and wrote: the orders' reading, the other tables' sources, the file."""

    orders: Reading
    others: dict[str, TableSource]
    path: Path


def initialise(files: list[str], target: Path, force: bool = False) -> Onboarding:
    """Read ``files`` (the orders first; then engagement events or a customer table, told apart by their columns)
    and write the configuration that reads them to ``target``; an existing one is kept unless ``force``."""
    if target.exists() and not force:
        raise LifecycleError(f"{target} exists: pass --force to replace it")
    orders = read_orders(files[0])
    others: dict[str, TableSource] = {}
    for path in files[1:]:
        table, source = guess_table(path)
        if table in others:
            raise LifecycleError(f"{path}: looks like a second {table} table; give one file (or a glob) per table")
        others[table] = source
    target.write_text(config_text(files, orders, others), encoding="utf-8")
    return Onboarding(orders, others, target)


def config_text(files: list[str], orders: Reading, others: dict[str, TableSource]) -> str:
    """The configuration as TOML, each decision with a comment saying why."""
    made_from = orders.platform or "columns guessed from their names"
    lines = [f"# Written by `lifecycle init {' '.join(files)}` on {date.today()}: {made_from}.",
             "# Check it, then run: lifecycle train, lifecycle score, lifecycle report.",
             "# Every setting and its default: `lifecycle config show`; the data contract: docs/data.md.", ""]
    if orders.currency:
        lines += ["# Every amount is in this currency (the orders' currency column names it).",
                  f"currency = {_text(orders.currency)}", ""]
    lines += ["[inputs]"]
    if orders.emails:
        lines += ["# Customers are their emails: trimmed and compared in any case, in every table.",
                  'customer_ids = "email"']
    notes = [f"# {note[0].upper()}{note[1:]}." for note in (orders.decided[1:] if orders.platform else ())]
    lines += ["", "[inputs.transactions]", *notes, *_source_lines(orders.source)]
    for table, source in others.items():
        lines += ["", f"[inputs.{table}]", *_source_lines(source)]
    return "\n".join(lines) + "\n"


def _source_lines(source: TableSource) -> list[str]:
    lines = [f"path = {_text(source.path)}"]
    if source.columns:
        mapped = ", ".join(f"{ours} = {_text(theirs)}" for ours, theirs in source.columns.items())
        lines += ["# our column = your column", f"columns = {{ {mapped} }}"]
    if source.line_items:
        lines.append(f"line_items = {_text(source.line_items)}")
    for key, rules in (("exclude", source.exclude), ("include", source.include)):
        if rules:
            lines.append(f"{key} = [{', '.join(_text(rule) for rule in rules)}]")
    return lines


def _text(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)
