"""The on-disk states a killed SQLite process leaves, built byte for byte from the file formats.

https://www.sqlite.org/fileformat.html §4 (the write-ahead log) and SQLite's `walCheckpoint`: a
checkpoint syncs the -wal, copies the newest committed frame of each page into the database file,
in ascending page order (pages past the committed size are skipped), truncates the file to the
committed size and syncs it; the next writer then restarts the -wal (a new header: checkpoint
sequence + 1, salt-1 + 1, a new salt-2), a TRUNCATE checkpoint empties it, and the last connection
to close deletes it and then the -shm. A kill (or a power cut, which may also drop or tear writes
that were not yet synced) can stop the process between any two of those writes; `checkpoint_states`
lists every state that leaves on disk.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

WAL_HEADER = 32
FRAME_HEADER = 24
_WAL_MAGIC = 0x377F0682  # | 1 when the checksums read the data as big-endian words
_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")


def wal_checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from (s0, s1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


@dataclass(frozen=True)
class Frame:
    page: int
    commit_size: int  # the database's size in pages after this frame's transaction; 0 inside one
    end: int  # the offset in the -wal just past this frame
    data: bytes


@dataclass(frozen=True)
class Wal:
    """The valid frames of a -wal up to its last commit, as SQLite's recovery reads them."""

    raw: bytes
    page_size: int
    big_endian: bool
    checkpoint_seq: int
    salts: tuple[int, int]
    frames: tuple[Frame, ...] = field(repr=False)

    @property
    def size_pages(self) -> int:
        """The database's size in pages after the last committed transaction."""
        return self.frames[-1].commit_size

    def newest_pages(self) -> dict[int, bytes]:
        """Each page's newest committed content, the pages a checkpoint copies (in key order)."""
        newest: dict[int, bytes] = {}
        for frame in self.frames:
            if frame.page <= self.size_pages:
                newest[frame.page] = frame.data
        return dict(sorted(newest.items()))

    def commit_ends(self) -> list[int]:
        """The offsets in the -wal where each committed transaction ends."""
        return [f.end for f in self.frames if f.commit_size]

    def restarted_header(self, salt2: int) -> bytes:
        """The header the next writer puts over this -wal once a checkpoint has copied all of it."""
        fields = struct.pack(
            ">6I",
            _WAL_MAGIC | self.big_endian,
            3007000,
            self.page_size,
            self.checkpoint_seq + 1,
            (self.salts[0] + 1) & 0xFFFFFFFF,
            salt2,
        )
        return fields + struct.pack(">2I", *wal_checksum(fields, self.big_endian))


def read_wal(raw: bytes) -> Wal:
    """Parse a -wal as SQLite's recovery does; raises ValueError when it holds no committed frame."""
    magic, _version, page_size, seq, salt1, salt2, c0, c1 = struct.unpack(">8I", raw[:WAL_HEADER])
    if magic & ~1 != _WAL_MAGIC:
        raise ValueError("not a write-ahead log")
    big_endian = bool(magic & 1)
    if wal_checksum(raw[:24], big_endian) != (c0, c1):
        raise ValueError("the -wal header's checksum does not match")
    sums = (c0, c1)
    frames: list[Frame] = []
    committed = 0
    offset = WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(raw):
        page, commit_size, s1, s2, f0, f1 = struct.unpack(">6I", raw[offset : offset + FRAME_HEADER])
        data = raw[offset + FRAME_HEADER : offset + FRAME_HEADER + page_size]
        sums = wal_checksum(raw[offset : offset + 8] + data, big_endian, *sums)
        if (s1, s2) != (salt1, salt2) or sums != (f0, f1) or page == 0:
            break
        offset += FRAME_HEADER + page_size
        frames.append(Frame(page, commit_size, offset, data))
        if commit_size:
            committed = len(frames)
    if not committed:
        raise ValueError("the -wal holds no committed transaction")
    return Wal(raw, page_size, big_endian, seq, (salt1, salt2), tuple(frames[:committed]))


def write_pages(db: bytes, pages: dict[int, bytes], page_size: int) -> bytes:
    """`db` after `pages` were written at their offsets (the file grows, with a hole of zeros if need be)."""
    out = bytearray(db)
    for page, data in pages.items():
        start = (page - 1) * page_size
        if len(out) < start:
            out.extend(bytes(start - len(out)))
        out[start : start + len(data)] = data
    return bytes(out)


def header_pages(db: bytes) -> int:
    """The page count the database header claims (bytes 28-31)."""
    return int.from_bytes(db[28:32], "big")


@dataclass(frozen=True)
class DiskState:
    """What a kill leaves beside the database: the file's bytes and its -wal's (None: no -wal)."""

    name: str
    kind: str  # the step the kill stopped: "copying", "torn-write", "copied", "power-cut", "torn-wal"
    db: bytes = field(repr=False)
    wal: bytes | None = field(repr=False)

    def write(self, db_path: Path, shm: bytes | None) -> None:
        db_path.write_bytes(self.db)
        if self.wal is not None:
            db_path.with_name(db_path.name + "-wal").write_bytes(self.wal)
        if shm is not None:
            db_path.with_name(db_path.name + "-shm").write_bytes(shm)


def checkpoint_states(db: bytes, wal: Wal, *, seed: int = 0) -> list[DiskState]:
    """Every state a checkpoint of `wal` into `db` passes through, killed between two of its writes.

    In order: before the first page is copied; after each page (ascending, as SQLite copies them),
    and half-way through writing each (a torn write); after the last, before the truncate to the
    committed size; after it (the database complete: before and after its sync the bytes are the
    same); then the -wal restarted by the next writer (new header over the old frames), emptied by
    a TRUNCATE checkpoint, and deleted by the last connection to close (the -shm left behind).
    Also seeded random subsets of the pages: a power cut may lose writes that were not yet synced.
    """
    size = wal.page_size
    pages = list(wal.newest_pages().items())
    states = [DiskState("before-copying", "copying", db, wal.raw)]
    copied = db
    for k, (page, data) in enumerate(pages, start=1):
        torn = write_pages(copied, {page: data[: size // 2]}, size)
        states.append(DiskState(f"page-{page}-torn", "torn-write", torn, wal.raw))
        copied = write_pages(copied, {page: data}, size)
        states.append(DiskState(f"copied-{k}-of-{len(pages)}-pages", "copying", copied, wal.raw))
    complete = copied[: wal.size_pages * size]
    assert len(complete) == wal.size_pages * size, "a checkpoint never leaves the file short of the committed size"
    states.append(DiskState("truncated-and-synced", "copied", complete, wal.raw))
    restarted = wal.restarted_header(0x5EED0001) + wal.raw[WAL_HEADER:]  # every frame behind it stale
    states.append(DiskState("wal-restarted", "copied", complete, restarted))
    states.append(DiskState("wal-truncated", "copied", complete, b""))
    states.append(DiskState("wal-deleted", "copied", complete, None))
    rng = random.Random(seed)
    for i in range(4):
        subset = dict(rng.sample(pages, rng.randint(1, len(pages) - 1)))
        states.append(
            DiskState(
                f"power-cut-{i}-{len(subset)}-of-{len(pages)}-pages",
                "power-cut",
                write_pages(db, subset, size),
                wal.raw,
            )
        )
    return states


def torn_wal_states(db: bytes, wal: Wal) -> list[tuple[DiskState, int]]:
    """A -wal whose last transaction was cut short, each paired with the -wal length SQLite keeps.

    The writer was killed inside its last transaction's frames: after a whole frame that does not
    commit, in the middle of a frame's page, and in the middle of the commit frame's header.
    """
    ends = wal.commit_ends()
    kept, last = ends[-2], ends[-1]
    frame = FRAME_HEADER + wal.page_size
    cuts = {"after-a-whole-frame": kept + frame, "mid-page": kept + frame // 2, "mid-commit-header": last - frame + 10}
    return [
        (DiskState(f"wal-torn-{name}", "torn-wal", db, wal.raw[:cut]), kept)
        for name, cut in cuts.items()
        if kept < cut < last
    ]


def journal_pages(journal: bytes) -> list[int]:
    """The pages a rollback journal holds the original content of (every segment's synced records)."""
    pages: list[int] = []
    offset, sector, page_size = 0, 0, 0
    while journal[offset : offset + 8] == _JOURNAL_MAGIC:
        n_rec = int.from_bytes(journal[offset + 8 : offset + 12], "big")
        if not sector:
            sector, page_size = struct.unpack(">2I", journal[offset + 20 : offset + 28])
        record = 4 + page_size + 4
        start = offset + sector
        pages += [int.from_bytes(journal[start + i * record : start + i * record + 4], "big") for i in range(n_rec)]
        offset = -(-(start + n_rec * record) // sector) * sector
    return pages


def with_super_journal(journal: bytes, name: str) -> bytes:
    """`journal` as one database's journal of a multi-database transaction: it ends naming their super-journal."""
    raw = name.encode()
    return (
        journal
        + struct.pack(">I", 0x40000000 // 4096 + 1)
        + raw
        + struct.pack(">II", len(raw), sum(raw))
        + _JOURNAL_MAGIC
    )
