"""Errors raised by the stages for a user's mistake (bad model name, bad ratio)."""

from hardware.errors import HardwareError


class StageError(HardwareError):
    """A stage was called with a value it cannot use; the message names it."""
