"""Errors a user can fix; entry points print their message alone and exit with status 2.

Anything else that goes wrong is a bug and ends in a traceback.
"""


class ChurnformerError(ValueError):
    """Base of every error whose message is meant for the user, not a traceback."""


class ConfigError(ChurnformerError):
    """A configuration that cannot run as asked (a setting out of range, a component that does not exist)."""


class InputError(ChurnformerError):
    """An event log or table that does not satisfy the contract; the message names file, column and rows."""


class ModelFileError(ChurnformerError):
    """A model or checkpoint file that cannot be used (missing, truncated, not churnformer's, too old)."""
