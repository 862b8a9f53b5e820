"""Judging a SQLite file as SQLite itself will find it, changing nothing: its -wal, hot journal and live users.

A killed process can leave a database whose file alone looks damaged while SQLite recovers it
whole when it next opens it: the committed pages of a -wal not yet (or half) copied into the file,
the header of a half-finished checkpoint counting pages the file does not have yet, a hot
rollback journal holding the pages to put back. Recovering writes (SQLite rebuilds the -shm,
checkpoints, rolls the journal back), so the check asks SQLite on a private copy instead, where
it may write what it likes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

try:
    import fcntl
except ImportError:  # not POSIX: other processes' locks cannot be seen
    fcntl = None  # type: ignore[assignment]

from ._url import StorageError

_MAGIC = b"SQLite format 3\x00"
_WAL_HEADER = 32  # a -wal no longer than its header holds nothing SQLite would read
_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
_LONGEST_PATH = 512  # the unix VFS's: SQLite ignores a longer super-journal name
_LOCK_BYTES = (0x40000000, 512)  # PENDING, RESERVED and SHARED: an open WAL connection always holds SHARED
_LOOKS = 3
_READ_TIMEOUT_S = 30.0
_CANNOT_TELL = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY")  # not the file's fault: it may be fine
# struct flock of 64-bit Linux and of the BSDs (macOS); elsewhere locks go unseen
_FLOCK = {"linux": "hhqqi", "darwin": "qqihh", "freebsd": "qqihh"}.get(sys.platform)

ContentsCheck = Callable[[sqlite3.Connection], None]


def check_sqlite_file(path: Path, check_contents: ContentsCheck) -> None:
    """Refuse (StorageError) a SQLite file only for damage SQLite will not get past; change nothing.

    `check_contents` then judges the tables through a connection to the database as SQLite finds
    it (it raises StorageError; a sqlite3.DatabaseError from it counts as damage).

    What SQLite recovers from is accepted: a -wal beside the file, with committed transactions not
    yet copied into it or half copied (the header then counts pages the file does not have yet),
    a -wal whose last frame was torn, a -shm left behind, a hot rollback journal. Refused, with one
    line naming the file and the mend: an empty file, a file that is not SQLite (text, another
    header), a file shorter than its header says with no -wal or journal to complete it, pages
    `PRAGMA quick_check` finds garbled, and whatever `check_contents` refuses.

    How it reads, so that no byte of the database, its -wal, -shm or journal changes:

    - nothing beside the file (no -wal with a frame, no journal) and no other process using it:
      the file is all there is; SQLite reads it with `immutable=1`, which creates no -wal or -shm.
    - a -wal or journal beside it and no process using it (a killed run): the file, its -wal and
      its journal are copied to a private temporary directory and SQLite opens the copy the way
      rcutune opens a database, read-write, so it runs the same recovery it will run on the real
      file (WAL recovery into a fresh -shm, rollback of a hot journal); whatever it writes, it
      writes to the copy. The -shm is not copied: with no process attached SQLite rebuilds it
      from the -wal anyway, whatever it holds.
    - another process has the database open (it holds a lock on the file, as every open WAL
      connection does): the files are not at rest, so a copy could mix moments; SQLite reads the
      file in place through its own locks (`mode=ro`), one more reader beside the live one. It
      never writes the file or the -wal then; the -shm is the live process's, shared and changed
      by every reader.

    A process that starts writing during the check could still mix moments: when the files changed
    while a refusal was being decided, the check looks again (up to three times) before refusing.
    Without room for a copy, it reads in place with `mode=ro` and passes what only a write could
    settle (a hot journal), as the command's own open will settle it.

    Like any reader outside SQLite, the check must run before this process connects to the file:
    closing a descriptor drops the POSIX locks a process holds on that file.
    """
    for look in range(_LOOKS):
        before = _fingerprint(path.resolve())
        try:
            _check_once(path, check_contents)
            return
        except StorageError:
            if look == _LOOKS - 1 or _fingerprint(path.resolve()) == before:
                raise


def _check_once(path: Path, check_contents: ContentsCheck) -> None:
    real = path.resolve()  # SQLite looks for the -wal and journal beside the file a link points to
    try:
        with real.open("rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
            in_use = _locked_by_another_process(f.fileno())
    except OSError as err:
        raise StorageError(f"{path}: cannot read it ({err.strerror}); check its permissions") from None
    if size == 0:  # SQLite takes it for a new database, and discards a -wal or journal beside it
        raise StorageError(
            f"{path} is empty (0 bytes), not a database; delete it to start a new one, "
            "or point --storage at the right file"
        )
    problem = _header_problem(path, size, header)
    to_recover = _size(real, "-wal") > _WAL_HEADER or _size(real, "-journal") > 0
    if problem and not to_recover and not in_use:
        raise StorageError(problem)
    if in_use:
        _read(path, lambda: _connect_in_place(real, "mode=ro"), check_contents, problem)
    elif to_recover:
        _read_a_copy(path, real, check_contents, problem)
    else:
        _read(path, lambda: _connect_in_place(real, "immutable=1"), check_contents, problem)


def _header_problem(path: Path, size: int, header: bytes) -> str | None:
    """What the file alone says is wrong with it; a -wal or journal beside it may still mend it."""
    if not header.startswith(_MAGIC):
        kind = "a text file" if _looks_like_text(header) else "its header is not SQLite's"
        return (
            f"{path} is not a SQLite database ({kind}); point --storage at the right file, "
            "or move this one away to start a new database"
        )
    if len(header) < 100:
        return f"{path} is truncated ({size} bytes, shorter than a SQLite header); restore it from a backup"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]  # the page count is only meaningful when these agree
    if header_valid and pages and size < pages * page_size:
        return f"{path} is truncated ({size} of {pages * page_size} bytes); restore it from a backup"
    return None


def _looks_like_text(header: bytes) -> bool:
    try:
        header.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 32 or c in (9, 10, 13) for c in header)


def _read(
    path: Path,
    connect: Callable[[], sqlite3.Connection],
    check_contents: ContentsCheck,
    problem: str | None,
    *,
    on_copy: bool = False,
) -> None:
    """Refuse what SQLite, reading through `connect`, finds damaged; `problem` names it if known.

    Raises _NotTheFile when SQLite failed for a reason of the copy's, not the file's (on_copy).
    """
    try:
        conn = connect()
    except sqlite3.Error as err:
        if on_copy:
            raise _NotTheFile from err
        raise StorageError(f"{path}: cannot open it read-only ({err})") from None
    try:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as err:
            if not _is_damage(err):
                raise
            problems = [str(err)]
        if problems != ["ok"]:
            raise StorageError(problem or _corrupt(path, problems))
        check_contents(conn)
    except sqlite3.Error as err:
        if _is_damage(err):
            raise StorageError(problem or _corrupt(path, [str(err)])) from None
        if on_copy:
            raise _NotTheFile from err
        if getattr(err, "sqlite_errorname", "").startswith(_CANNOT_TELL):
            return  # busy, or recovery needs a write: the command's own open waits or recovers
        raise StorageError(f"{path}: cannot read it ({' '.join(str(err).split())})") from None
    finally:
        conn.close()


class _NotTheFile(Exception):
    """The private copy could not be made or read (no room, no permission): nothing known of the file."""


def _read_a_copy(path: Path, real: Path, check_contents: ContentsCheck, problem: str | None) -> None:
    try:
        with tempfile.TemporaryDirectory(prefix="rcutune-check-", ignore_cleanup_errors=True) as private:
            copy = Path(private) / real.name
            try:
                for suffix in ("", "-wal", "-journal"):
                    try:
                        shutil.copyfile(real.with_name(real.name + suffix), copy.with_name(copy.name + suffix))
                    except FileNotFoundError:
                        if not suffix:
                            raise
                _settle_super_journal(copy.with_name(copy.name + "-journal"))
            except OSError as err:
                raise _NotTheFile from err
            _read(path, lambda: sqlite3.connect(copy, timeout=_READ_TIMEOUT_S), check_contents, problem, on_copy=True)
    except (_NotTheFile, OSError):  # OSError: no temporary directory to make
        _read(path, lambda: _connect_in_place(real, "mode=ro"), check_contents, problem)


def _settle_super_journal(journal: Path) -> None:
    """Make a copied journal that names a super-journal recover as the original would, touching no other file.

    The journal of a transaction over several attached databases ends with the name of their
    super-journal. SQLite rolls such a journal back only while that file exists (else the commit
    had finished and it discards the journal), and may then delete the super-journal, a file
    outside the copy. The copy's journal drops the name instead (rolled back alike), or is
    dropped itself when the super-journal is gone.
    """
    try:
        f = journal.open("r+b")
    except FileNotFoundError:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        if size < 16:
            return
        f.seek(size - 16)
        length, checksum = struct.unpack(">II", f.read(8))
        if f.read(8) != _JOURNAL_MAGIC or not 0 < length <= _LONGEST_PATH or length > size - 20:
            return
        f.seek(size - 16 - length)
        name = f.read(length)
        signed = sum(b - 256 if b > 127 else b for b in name)  # SQLite sums C chars, signed on most hosts
        if checksum not in (sum(name) & 0xFFFFFFFF, signed & 0xFFFFFFFF):
            return  # SQLite ignores a name whose checksum fails: the journal is an ordinary one
        if _exists_for_sqlite(os.fsdecode(name.split(b"\0", 1)[0])):
            f.truncate(size - 20 - length)
            return
    journal.unlink()


def _exists_for_sqlite(path: str) -> bool:
    """Whether the unix VFS says `path` exists: an empty regular file does not."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_size > 0


def _connect_in_place(real: Path, mode: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(real))}?{mode}", uri=True, timeout=_READ_TIMEOUT_S)


def _is_damage(err: sqlite3.Error) -> bool:
    return getattr(err, "sqlite_errorname", "").startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _corrupt(path: Path, problems: list[str]) -> str:
    lines = [line for p in problems for line in p.splitlines() if not line.startswith("***")]
    first = " ".join((lines or problems)[0].split())
    return (
        f"{path} is corrupt ({first}); restore it from a backup (the sqlite3 shell's '.recover' salvages what is left)"
    )


def _size(path: Path, suffix: str) -> int:
    """The size of the file beside the database with this suffix; -1 when there is none."""
    try:
        return path.with_name(path.name + suffix).stat().st_size
    except FileNotFoundError:
        return -1


def _fingerprint(path: Path) -> tuple:
    """What changes when a process writes the database, its -wal or its journal."""
    marks = []
    for suffix in ("", "-wal", "-journal"):
        try:
            st = path.with_name(path.name + suffix).stat()
            marks.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            marks.append(None)
    return tuple(marks)


def _locked_by_another_process(fd: int) -> bool:
    """Whether another process holds one of SQLite's locks on the open database file `fd` (F_GETLK asks, takes none)."""
    if fcntl is None or _FLOCK is None or struct.calcsize("P") != 8:
        return False
    start, length = _LOCK_BYTES
    fields = {"l_type": fcntl.F_WRLCK, "l_whence": os.SEEK_SET, "l_start": start, "l_len": length, "l_pid": 0}
    order = (
        ("l_type", "l_whence", "l_start", "l_len", "l_pid")
        if _FLOCK == "hhqqi"
        else ("l_start", "l_len", "l_pid", "l_type", "l_whence")
    )
    query = struct.pack(_FLOCK, *(fields[name] for name in order))
    try:
        answer = dict(zip(order, struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))))
    except OSError:
        return False
    return answer["l_type"] != fcntl.F_UNLCK
