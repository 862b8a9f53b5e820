"""A full disk, or a database file that can no longer be written: recognised wherever it surfaces
(SQLite, Optuna's wrapping of it, a plain file write)."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator

try:
    import resource
except ImportError:  # not POSIX: no file-size limit to run into
    resource = None  # type: ignore[assignment]

from ._url import StorageError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def exception_chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and every exception it was raised from or during (and a driver error a library wrapped),
    each once: where a cause surfaces depends on which library caught it first."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "orig", None)]


class DiskFull(StorageError):
    """A write failed for want of space (or over the process's file-size limit); nothing stored was lost."""


class Unwritable(StorageError):
    """A write to a SQLite database failed (its file system turned read-only, or the disk failed);
    what was committed before is kept. The message is one line."""


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or any exception it was raised from or during, is a write that found no space.

    SQLite says SQLITE_FULL when the disk is full; a write over the file-size limit (`ulimit -f`,
    EFBIG) reaches it as a plain write error, which counts here only while such a limit is set.
    """
    for e in exception_chain(err):
        if isinstance(e, DiskFull):
            return True
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error):
            name = getattr(e, "sqlite_errorname", "")
            if name == "SQLITE_FULL" or (name == "SQLITE_IOERR_WRITE" and _file_size_limited()):
                return True
    return False


def _file_size_limited() -> bool:
    if resource is None:
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return soft != resource.RLIM_INFINITY


_UNWRITABLE_SQLITE = ("SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")


def is_unwritable(err: BaseException) -> bool:
    """Whether `err`, or an exception it was raised from or during, is SQLite failing to write its
    files (read-only, I/O error, cannot open the journal) or a write refused by a read-only file system.

    A full disk is `is_disk_full`, checked first by callers.
    """
    for e in exception_chain(err):
        if isinstance(e, Unwritable):
            return True
        if isinstance(e, OSError) and e.errno == errno.EROFS:
            return True
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorname", "").startswith(_UNWRITABLE_SQLITE):
            return True
    return False
