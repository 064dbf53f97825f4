"""The pipeline's errors for a user's mistake: reported in one line, exit status 2."""

from stages.errors import StageError


class UserError(StageError):
    """A mistake the user can fix (bad config value, unknown preset, bad path)."""


class ConfigError(UserError):
    """A config value was refused; the message names the field, the value and what is allowed."""
