"""Speed and memory measurements; each module prints a table. Run from the project root:
``python -m benchmarks.features``, ``python -m benchmarks.training``."""
