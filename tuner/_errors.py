"""User errors: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from rcutune.sim import ProfileError
from rcutune.storage import StorageError, is_disk_full


class UserError(Exception):
    """Something the user can mend (bad value, bad file, unknown name); the message is one line."""


EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

DISK_FULL = ("the disk is full (a write found no space); free some space, or point --storage (or --out) at "
             "another disk, then run the same command again: everything completed so far is kept")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into `error: <one line>` and exit code 2.

    A full disk is not bad input but a failed run: one line saying so and how to go on, exit code 1.
    """
    try:
        yield
    except Exception as err:
        if is_disk_full(err):
            typer.echo(f"error: {DISK_FULL}", err=True)
            raise typer.Exit(EXIT_FAILURE) from None
        if not isinstance(err, (UserError, ProfileError, StorageError, ValueError)):
            raise
        message = " ".join(str(err).split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def is_terminal() -> bool:
    return sys.stderr.isatty()
