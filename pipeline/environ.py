"""Environment variables changed for a while, then put back as they were."""

from __future__ import annotations

import contextlib
import os


def _apply(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def environment(**values: str | None):
    """os.environ with each named variable set to its value (None: unset) inside the block."""
    saved = {name: os.environ.get(name) for name in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(saved)
