"""What every benchmark prints: the machine it ran on and a table, on screen and as Markdown."""

from __future__ import annotations

import os
import platform
from typing import NamedTuple

from rich.console import Console
from rich.table import Table


def machine() -> str:
    """The machine in a few words: architecture, CPUs this process may use, memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, {memory:.0f} GB RAM"


def print_table(title: str, headers: list[str], rows: list[list[str]], console: Console | None = None) -> None:
    """The table for the terminal, then the same as Markdown for docs/benchmarks.md."""
    table = Table(*headers, title=title)
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)
    markdown = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    markdown += ["| " + " | ".join(row) + " |" for row in rows]
    print("\n" + title + "\n\n" + "\n".join(markdown))


def peak_memory_gb() -> float:
    """This process's peak resident memory in GB since it started (Linux's VmHWM, which ``exec`` resets).

    Read by the measured process itself, so nothing runs beside it sampling its memory (on 2 cores a
    sampler every 20 ms slows a two-threaded measurement by ~5 %, a one-threaded one not at all).
    """
    with open("/proc/self/status") as status:
        kilobytes = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kilobytes / 1024**2


class Measured(NamedTuple):
    """What ``run_measured`` saw: wall seconds, peak resident GB of the process and its children together and of the
    process alone (on Spark's local master: the driver, without the JVM and its Python workers), and its stdout."""

    seconds: float
    peak: float
    own_peak: float
    stdout: str


def run_measured(command: list[str], env: dict | None = None, interval: float = 0.02) -> Measured:
    """Run ``command`` and measure it (``Measured``; memory sampled every ``interval`` s). Raises SystemExit with its
    stderr if it fails.

    Sampled from outside because a child's own ``ru_maxrss`` also counts the parent's memory that
    it inherited before ``exec``.
    """
    import subprocess
    import tempfile
    import time

    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        watched, peak, own = psutil.Process(process.pid), 0, 0
        while process.poll() is None:
            try:
                tree = [watched, *watched.children(recursive=True)]
                sizes = [p.memory_info().rss for p in tree]
                peak, own = max(peak, sum(sizes)), max(own, sizes[0])
            except psutil.Error:  # a child ended between listing and reading it
                pass
            time.sleep(interval)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command[:4])} failed:\n{err.read().decode()}")
        return Measured(seconds, peak / 1024**3, own / 1024**3, out.read().decode())
