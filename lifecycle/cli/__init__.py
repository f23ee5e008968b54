"""The ``lifecycle`` command line: the application and its entry point (``application``), the commands
(``commands``: data, features, training and the registry; ``scoring``: score, report, serve, demo) and how they
show their results (``render``)."""

from lifecycle.cli import commands, scoring  # noqa: F401  (they register their commands with the application)
from lifecycle.cli.application import app, main

__all__ = ["app", "main"]
