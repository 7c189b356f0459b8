"""Exceptions whose message is the whole story for a user.

Every error that names a file, line or key for the user derives from :class:`MicroactError`; the
CLI prints such errors as one line (no traceback) and exits with status 2.
"""


class MicroactError(Exception):
    """Base class of errors that are reported to users without a traceback.

    Attributes:
        same_on_every_rank: the error follows from the recipe and the launch alone (a recipe value, a global batch
            that does not divide over the torchrun processes), so every rank raises it alike: the CLI prints it on
            rank 0 only and the other ranks exit with the same code quietly. Leave it False for anything a rank
            can meet on its own (a file, a device, data), or that rank's message would be lost.
    """

    same_on_every_rank: bool = False
