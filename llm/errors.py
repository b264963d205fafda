"""Errors a user can fix: the CLIs print these as one line and exit with code 2."""


class UserError(Exception):
    """A problem with the user's input (a file, a config, a corpus, a checkpoint).

    The message names the input and what is wrong with it; no traceback is shown.
    """


class ConfigError(UserError):
    """A config or search space that is malformed or violates a constraint."""


class DataError(UserError):
    """A corpus or prepared dataset that is missing, empty or unusable."""


class CheckpointError(UserError):
    """A checkpoint or model directory that is missing, incomplete or corrupt."""


class OutputError(UserError):
    """An output path that cannot be written: no permission, a file where a folder should
    be, a full or read-only disk."""
