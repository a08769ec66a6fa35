"""Errors a user can fix; entry points print their message alone and exit with status 2."""


class ChurnformerError(ValueError):
    """Base of every error whose message is meant for the user, not a traceback."""


class ConfigError(ChurnformerError):
    """A configuration that cannot run as asked."""
