"""Report files written so that a reader never sees a mix: each file by rename, the directory by exchange.

A report's files are written into a hidden sibling directory, which then takes the report
directory's place in one rename, so a reader (or a run killed at any moment) sees the previous
complete report or the new complete one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path


def write_atomic(path: Path, content: bytes | str) -> None:
    """Write `content` to `path` through a temporary file and a rename: readers see all or nothing."""
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it private; a report is not
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_directory(staged: Path, target: Path) -> None:
    """Put the directory `staged` at `target` in one step; the old `target`, if any, is removed.

    Linux swaps the two in one `renameat2(RENAME_EXCHANGE)`; elsewhere the old directory is renamed
    away first, so for an instant `target` is missing (but never partial). Two reports written at
    once each put theirs in place whole; the last one stays.
    """
    for _ in range(20):
        try:
            os.rename(staged, target)  # nothing there yet (or an empty directory)
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        try:
            exchanged = _exchange(staged, target)
        except FileNotFoundError:  # another report moved it away this instant
            continue
        if exchanged:
            shutil.rmtree(staged)  # the previous report
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
        try:
            os.rename(target, aside / target.name)
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(aside, ignore_errors=True)  # the previous report
    raise OSError(errno.EBUSY, "other reports kept replacing it", str(target))


def _exchange(a: Path, b: Path) -> bool:
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM):  # no such call, or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _staging_directory(target: Path) -> Path:
    """A fresh hidden sibling of `target`; leftovers of killed runs of this report are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    ours = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[A-Za-z0-9_]+")  # what mkdtemp below makes
    for leftover in target.parent.glob(f".{target.name}.*"):
        match = ours.fullmatch(leftover.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish_directory(files: dict[str, bytes | str], target: Path) -> None:
    """Write `files` into a staging sibling of `target` and put it in `target`'s place whole."""
    staged = _staging_directory(target)
    try:
        for name, content in files.items():
            write_atomic(staged / name, content)
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes it private; a report is not
        replace_directory(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
