"""Exceptions whose message is the whole story for a user.

Every error that names a file, line or key for the user derives from :class:`MicroactError`; the
CLI prints such errors as one line (no traceback) and exits with status 2.
"""


class MicroactError(Exception):
    """Base class of errors that are reported to users without a traceback."""
