"""The one exception type for mistakes a user can cause (bad file, bad column map, empty data)."""


class LifecycleError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
