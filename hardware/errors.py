"""The project's exception hierarchy starts here, at the lowest layer."""


class MemAdmmError(ValueError):
    """Base of every error memristor-admm raises for a value it cannot use."""


class HardwareError(MemAdmmError):
    """A hardware-model argument was refused; the message names it, its value and what is allowed."""
