"""The one exception type users see: a one-line message, printed without a traceback."""


class SaedexError(Exception):
    """A user-facing error: one line, no traceback."""
