"""What every command shares: one-line errors, exit codes, the storage and hardware options."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn, Optional

import typer

from rcutune import sim
from rcutune.sim import ProfileError
from rcutune.storage import DatabaseUnreachable, StorageError, Unwritable, interrupted, is_disk_full

from .._errors import UserError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

DISK_FULL = (
    "the disk is full (a write found no space); free some space, or point --storage (or --out) at "
    "another disk, then run the same command again: everything completed so far is kept"
)

HardwareOpt = Annotated[
    str, typer.Option("--hardware", "-H", metavar="NAME|FILE", help="Hardware profile name or path to a .toml file.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Override a profile key: hardware.<key>=<value> or workload.<key>=<value>. Repeatable.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the answer and the next step.")]
StorageOpt = Annotated[
    Optional[str],
    typer.Option(
        "--storage", metavar="URL", help="Database URL (default: $RCUTUNE_STORAGE, else sqlite:///rcutune.db here)."
    ),
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into `error: <one line>` and exit code 2.

    A full disk, a database that can no longer be written and a database server that stayed away
    are not bad input but a failed run: one line saying so and how to go on, exit code 1.
    """
    try:
        yield
    except Exception as err:
        if interrupted(err):  # Ctrl-C or SIGTERM that a database driver reported as its own error
            _interrupted()
        if is_disk_full(err):
            typer.echo(f"error: {DISK_FULL}", err=True)
            raise typer.Exit(EXIT_FAILURE) from None
        if isinstance(err, (DatabaseUnreachable, Unwritable)):
            typer.echo(f"error: {' '.join(str(err).split())}", err=True)
            raise typer.Exit(EXIT_FAILURE) from None
        if not isinstance(err, (UserError, ProfileError, StorageError, ValueError)):
            raise
        message = " ".join(str(err).split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        _interrupted()


def _interrupted() -> NoReturn:
    typer.echo("interrupted", err=True)
    stop_stray_heartbeats()
    raise typer.Exit(130) from None


def stop_stray_heartbeats() -> None:
    """Stop Optuna heartbeat threads an interrupt left running, so that the process can end.

    Optuna starts a trial's heartbeat thread (not a daemon) on entering the trial and stops it on
    leaving; an interrupt that lands between the two (inside the start itself) leaves it beating for
    ever, and the interpreter waits for it at exit: a worker sent SIGTERM said "interrupted" and
    never ended. Its stop event is the thread's third argument (`_record_heartbeat`'s signature).
    """
    for thread in threading.enumerate():
        if thread.daemon or "_record_heartbeat" not in thread.name:
            continue
        stop = getattr(thread, "_args", ())[2:3]
        if stop and hasattr(stop[0], "set"):
            stop[0].set()
            thread.join(timeout=5)


def is_terminal() -> bool:
    return sys.stderr.isatty()


def load_profiles(hardware: str, workload: str | None, settings: list[str] | None):
    """Profiles with `--set` overrides applied; raises ProfileError with a one-line message."""
    overrides = sim.split_overrides(settings or [])
    hw = sim.load_hardware(hardware, overrides["hardware"])
    wl = sim.load_workload(workload, overrides["workload"]) if workload is not None else None
    if wl is None and overrides["workload"]:
        raise UserError("--set workload.* needs --workload")
    return hw, wl


def interrupt_on_sigterm(signum, frame) -> None:
    """A polite kill stops like Ctrl-C: in-flight trials are failed and queued again at once."""
    raise KeyboardInterrupt
