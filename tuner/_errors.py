"""User errors: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from sim import ProfileError
from storage import StorageError


class UserError(Exception):
    """Something the user can mend (bad value, bad file, unknown name); the message is one line."""


EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into `error: <one line>` and exit code 2."""
    try:
        yield
    except (UserError, ProfileError, StorageError, ValueError) as err:
        message = " ".join(str(err).split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def is_terminal() -> bool:
    return sys.stderr.isatty()
