"""What every benchmark prints: the machine it ran on and a table, on screen and as Markdown."""

from __future__ import annotations

import os
import platform

from rich.console import Console
from rich.table import Table


def machine() -> str:
    """The machine in a few words: architecture, CPUs this process may use, memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, {memory:.0f} GB RAM"


def print_table(title: str, headers: list[str], rows: list[list[str]], console: Console | None = None) -> None:
    """The table for the terminal, then the same as Markdown for the README."""
    table = Table(*headers, title=title)
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)
    markdown = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    markdown += ["| " + " | ".join(row) + " |" for row in rows]
    print("\n" + title + "\n\n" + "\n".join(markdown))
