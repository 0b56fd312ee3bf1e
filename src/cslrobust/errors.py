"""User-facing error types.

Every error a user can cause (bad config value, missing archive, checksum mismatch, ...) is raised as a
:class:`CslRobustError` whose message is one line naming the bad value and what was expected. The CLI
prints that line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class CslRobustError(Exception):
    """Base class for errors caused by user input; the message is a one-line explanation."""


class ConfigError(CslRobustError):
    """A configuration key or value is invalid."""


class DataError(CslRobustError):
    """A data set, archive, image or cache cannot be used."""


class CheckpointError(CslRobustError):
    """A checkpoint is missing, incomplete or does not match the model."""


class TrainingDivergedError(CslRobustError):
    """The training loss became NaN or infinite."""
