"""How fast the CLI starts: ``lifecycle --help`` and the import of the CLI alone, each in fresh processes.

Every command's start pays the import; the heavy libraries (LightGBM, MLflow, BentoML, Spark,
scikit-learn, pandas, numpy, DuckDB) load inside the commands that use them. Each measurement runs
``--repeat`` times, the two taking turns; the table gives the fastest, the median and the slowest.

Usage: python -m benchmarks.startup [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import machine, print_table

COMMANDS = {
    "lifecycle --help": [str(Path(sys.executable).with_name("lifecycle")), "--help"],
    "import lifecycle.cli": [sys.executable, "-c", "import lifecycle.cli"],
    "python alone": [sys.executable, "-c", "pass"],
}


def seconds(command: list[str]) -> float:
    """Wall seconds of one run of ``command`` (its output discarded)."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="runs of each command")
    repeat = parser.parse_args().repeat
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeat):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    rows = [[name, str(repeat), f"{min(t):.2f}", f"{statistics.median(t):.2f}", f"{max(t):.2f}"]
            for name, t in times.items()]
    print_table(f"CLI start-up, seconds ({machine()})", ["command", "runs", "fastest", "median", "slowest"], rows)


if __name__ == "__main__":
    main()
