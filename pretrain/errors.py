"""The one error type the ``lsmae`` CLI reports as a one-line message instead of a traceback."""


class LsmaeError(Exception):
    """A problem the user can fix (bad input, missing file, failed verification)."""
