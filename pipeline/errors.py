"""The pipeline's errors for a user's mistake (one line, exit status 2) and shared CLI plumbing."""

import functools
import sys

import click

from hardware.errors import MemAdmmError
from stages.errors import StageError


class UserError(StageError):
    """A mistake the user can fix (bad config value, unknown preset, bad path)."""


class ConfigError(UserError):
    """A config value was refused; the message names the field, the value and what is allowed."""


def user_errors(fn):
    """CLI decorator: any project error (a user's mistake) is one line on stderr and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MemAdmmError as exc:      # UserError, and a stage's or the hardware model's refusal
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    return wrapper


def run_options(fn):
    """The options `memadmm run` and `memadmm submit` share: --config, --set, --run-id."""
    fn = click.option("--run-id", default=None, help="run id (default: time stamp and random suffix)")(fn)
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="override a field, e.g. --set admm.epochs=10 (repeatable)")(fn)
    return click.option("--config", "source", default="quick", show_default=True,
                        help="preset name (see `memadmm validate --list`) or YAML file")(fn)
