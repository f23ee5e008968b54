"""Errors by kind: the user's (``LifecycleError``) and ours (``NotFittedError`` and any other exception).

The CLI prints a user's mistake on one line and exits 2; anything else is a bug of the service's, which it
reports on one line with the path of the full trace, exiting 1.
"""


class LifecycleError(Exception):
    """A mistake a user can cause (bad file, bad column map, empty data): the CLI prints its message on one line and
    exits 2."""


class NotFittedError(RuntimeError):
    """A model used before it was fitted: a programming error, never the user's (the CLI exits 1 with the trace's
    path)."""

    def __init__(self, what: str):
        super().__init__(f"{what} is not fitted: call fit() first")
