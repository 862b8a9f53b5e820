"""A valid database is never refused, and real damage still is (DESIGN.md §8).

A run killed at any moment leaves a database SQLite recovers whole when it next opens it, though
the file alone may look damaged: a checkpoint stopped part-way leaves a header counting pages the
file does not have yet, a transaction in rollback-journal mode leaves pages half-changed beside
the hot journal that puts them back. Each such state is built here deterministically, not by
killing at random moments: the checkpoint's states byte for byte from the WAL format
(`tests.support.sqlite_states`, checked against SQLite's own checkpoint stopped after each page),
the hot journal by a transaction killed once SQLite has spilled changed pages into the file.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from rcutune import storage
from rcutune.storage import _sqlite_file
from tests.support import sqlite_states
from tests.support.fork_runner import ForkRunner
from tests.support.sqlite_states import DiskState, Wal
from tests.support.study import FAST, files_digest, integrity, refuse, url

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STUDY = "vm-2/steady"

# Holds a read transaction begun before the resume writes, so no checkpoint can copy a frame, then
# dies without closing: the resume's transactions all stay in the -wal, as a kill leaves them.
KEEPER = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute('BEGIN')
conn.execute('SELECT count(*) FROM sqlite_master').fetchall()
print('reading', flush=True)
sys.stdin.read()
os._exit(0)
"""

# A transaction in rollback-journal mode with a tiny page cache: SQLite journals the pages it
# changes and spills them into the file before the commit; the process dies there.
SPILL_AND_DIE = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute('PRAGMA cache_size=5')
conn.execute('BEGIN')
conn.execute('UPDATE trial_values SET value = value + 1')
conn.execute("UPDATE trial_user_attributes SET value_json = value_json || ' '")
conn.execute('CREATE TABLE uncommitted (x)')
conn.execute('INSERT INTO uncommitted VALUES (zeroblob(100000))')
os._exit(0)
"""

# A SQLite checkpoint of the -wal in a process whose files may not grow past a limit: the copy stops
# at the first page past it, as a kill there would stop it.
CHECKPOINT_UNDER_LIMIT = """
import os, resource, signal, sqlite3, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchall()
except sqlite3.Error:
    pass
os._exit(0)
"""


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    forks = ForkRunner(ROOT, tmp_path_factory.mktemp("runner"))
    yield forks
    forks.close()


def study_argv(db: Path, trials_: int) -> list[str]:
    return ["study", *FAST, "--storage", url(db), "--trials", str(trials_)]


def stored_trials(db: Path) -> list[FrozenTrial]:
    rdb = optuna.storages.RDBStorage(url(db), skip_table_creation=True)
    try:
        return optuna.load_study(study_name=STUDY, storage=rdb).get_trials()
    finally:
        rdb.engine.dispose()  # no connection of this process stays open on the file


def completed(db: Path) -> dict[int, tuple]:
    """The complete trials of the study, by number: parameters and values."""
    return {t.number: (t.params, t.values) for t in stored_trials(db) if t.state == TrialState.COMPLETE}


def place(state: DiskState, directory: Path, shm: bytes | None) -> Path:
    directory.mkdir(parents=True)
    db = directory / "k.db"
    state.write(db, shm)
    return db


def as_sqlite_finds(state: DiskState, directory: Path) -> dict[int, tuple]:
    """The complete trials SQLite finds in `state` (opened normally, in a scratch copy)."""
    return completed(place(state, directory, None))


@dataclass(frozen=True)
class Killed:
    """A study's database as a kill left it: its transactions in the -wal, none copied into the file."""

    db: bytes
    wal: Wal
    shm: bytes
    complete: dict[int, tuple]


@pytest.fixture(scope="module")
def killed(runner, tmp_path_factory) -> Killed:
    directory = tmp_path_factory.mktemp("killed")
    db, log = directory / "k.db", directory / "k.log"
    assert runner.run(study_argv(db, 2), log)[0] == 0
    assert not db.with_name("k.db-wal").exists()
    before = db.read_bytes()
    keeper = subprocess.Popen(
        [sys.executable, "-c", KEEPER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert keeper.stdout.readline().strip() == "reading"
        assert runner.run(study_argv(db, 1), log)[0] == 0, log.read_text()[-3000:]
    finally:
        keeper.stdin.close()
        keeper.wait(timeout=60)
    assert db.read_bytes() == before, "no checkpoint ran: the resume's transactions are all in the -wal"
    wal = sqlite_states.read_wal(db.with_name("k.db-wal").read_bytes())
    complete = as_sqlite_finds(DiskState("killed", "copying", before, wal.raw), directory / "read")
    assert len(complete) == 3
    return Killed(before, wal, db.with_name("k.db-shm").read_bytes(), complete)


def checkpoint_states(killed: Killed) -> list[DiskState]:
    return sqlite_states.checkpoint_states(killed.db, killed.wal, seed=15)


def assert_resumes_keeping(runner: ForkRunner, db: Path, earlier: dict[int, tuple]) -> None:
    """`rcutune study` resumes: every complete trial kept as it was, at least one added, none run twice."""
    log = db.with_name("resume.log")
    code, _ = runner.run(study_argv(db, 1), log)
    assert code == 0, log.read_text()[-3000:]
    found = {t.number: t for t in stored_trials(db)}
    now = {n: (t.params, t.values) for n, t in found.items() if t.state == TrialState.COMPLETE}
    assert {n: v for n, v in now.items() if n in earlier} == earlier, "a complete trial was lost or changed"
    assert len(now) > len(earlier), "the resume added a trial"
    retried = [t.user_attrs["retry_of"] for t in found.values() if "retry_of" in t.user_attrs]
    assert len(retried) == len(set(retried)), "a trial was retried twice"
    assert not [n for n in retried if n in earlier], "a complete trial was run again"
    assert not [t for t in found.values() if t.state == TrialState.RUNNING]
    assert integrity(db) == "ok"


# -- a checkpoint killed at each step ----------------------------------------------------------------
def test_the_checkpoint_model_is_what_sqlite_writes_when_stopped_at_each_page_that_grows_the_file(killed, tmp_path):
    pytest.importorskip("resource")
    size = killed.wal.page_size
    pages = list(killed.wal.newest_pages())
    built = {s.name: s.db for s in checkpoint_states(killed)}
    growth = [p for p in pages if p * size > len(killed.db)]
    assert growth, "the resume grew the file"
    for more in range(len(growth) + 1):
        db = place(DiskState("killed", "copying", killed.db, killed.wal.raw), tmp_path / str(more), None)
        limit = len(killed.db) + more * size
        subprocess.run([sys.executable, "-c", CHECKPOINT_UNDER_LIMIT, str(db), str(limit)], check=True, timeout=60)
        copied = sum(1 for p in pages if p * size <= limit)
        assert db.read_bytes() == built[f"copied-{copied}-of-{len(pages)}-pages"], more


def test_every_state_a_killed_checkpoint_leaves_passes_the_check_and_stays_byte_identical(killed, tmp_path):
    states = checkpoint_states(killed) + [s for s, _ in sqlite_states.torn_wal_states(killed.db, killed.wal)]
    size = killed.wal.page_size
    ahead = [s.name for s in states if sqlite_states.header_pages(s.db) * size > len(s.db)]
    assert len(ahead) >= 3, "the states where the header counts pages the file lacks yet are among them"
    for state in states:
        db = place(state, tmp_path / state.name, killed.shm)
        files = files_digest(db.parent)
        storage.check_database(url(db))
        assert files_digest(db.parent) == files, f"{state.name}: the check changed or added a file"


def resumed_from(killed: Killed, kinds: tuple[str, ...]) -> list[DiskState]:
    """The states of these kinds; of the torn writes, those of page 1 (the header), of the first page
    inside the file and of each page that grows it (the file then ends mid-page): every other torn
    page is like the first, and each of them passes the check above."""
    size = killed.wal.page_size
    pages = list(killed.wal.newest_pages())
    torn = {1, pages[1]} | {p for p in pages if p * size > len(killed.db)}
    return [
        s
        for s in checkpoint_states(killed)
        if s.kind in kinds and (s.kind != "torn-write" or int(s.name.split("-")[1]) in torn)
    ]


@pytest.mark.parametrize(
    "kinds", [("copying",), ("torn-write", "copied", "power-cut")], ids=["copying", "torn-write-copied-power-cut"]
)
def test_a_study_resumes_from_every_state_a_killed_checkpoint_leaves_losing_and_duplicating_nothing(
    runner, killed, tmp_path, kinds
):
    states = resumed_from(killed, kinds)
    assert {s.kind for s in states} == set(kinds)
    for state in states:
        assert_resumes_keeping(runner, place(state, tmp_path / state.name, killed.shm), killed.complete)


def test_a_study_resumes_from_a_wal_whose_last_transaction_was_torn_keeping_every_committed_one(
    runner, killed, tmp_path
):
    torn = sqlite_states.torn_wal_states(killed.db, killed.wal)
    assert len(torn) >= 2
    for state, kept in torn:
        committed = as_sqlite_finds(
            DiskState("kept", "torn-wal", killed.db, killed.wal.raw[:kept]), tmp_path / f"{state.name}-kept"
        )
        assert_resumes_keeping(runner, place(state, tmp_path / state.name, killed.shm), committed)


def test_a_database_reached_through_a_link_is_judged_with_the_wal_beside_the_file_it_points_to(killed, tmp_path):
    db = place(
        next(s for s in checkpoint_states(killed) if s.name.startswith("copied-1-of-")), tmp_path / "db", killed.shm
    )
    link = tmp_path / "elsewhere" / "link.db"
    link.parent.mkdir()
    link.symlink_to(db)
    files = files_digest(db.parent)
    storage.check_database(url(link))
    assert files_digest(db.parent) == files and [p.name for p in link.parent.iterdir()] == ["link.db"]


# -- a hot rollback journal ------------------------------------------------------------------------
@dataclass(frozen=True)
class Hot:
    """A rollback-journal database whose writer died mid-transaction: changed pages in the file, the
    originals in the journal."""

    db: bytes
    journal: bytes
    complete: dict[int, tuple]


@pytest.fixture(scope="module")
def hot(killed, tmp_path_factory) -> Hot:
    directory = tmp_path_factory.mktemp("hot")
    db = directory / "h.db"
    db.write_bytes(next(s.db for s in checkpoint_states(killed) if s.name == "wal-deleted"))  # 3 complete trials
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conn.close()
    before = db.read_bytes()
    subprocess.run([sys.executable, "-c", SPILL_AND_DIE, str(db)], check=True, timeout=60)
    journal = db.with_name("h.db-journal").read_bytes()
    assert db.read_bytes() != before, "the transaction's pages were spilled into the file"
    assert 1 in sqlite_states.journal_pages(journal), "the journal holds page 1's original"
    alone = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        with pytest.raises(sqlite3.DatabaseError):  # the file alone is damaged: only the journal mends it
            alone.execute("PRAGMA quick_check").fetchall()
    finally:
        alone.close()
    return Hot(db.read_bytes(), journal, killed.complete)


def place_hot(hot: Hot, directory: Path, *, db: bytes | None = None, journal: bytes | None = None) -> Path:
    directory.mkdir(parents=True)
    path = directory / "h.db"
    path.write_bytes(hot.db if db is None else db)
    path.with_name("h.db-journal").write_bytes(hot.journal if journal is None else journal)
    return path


def assert_rolled_back_on_resume(runner: ForkRunner, db: Path, hot: Hot) -> None:
    files = files_digest(db.parent)
    storage.check_database(url(db))
    assert files_digest(db.parent) == files, "the check changed or added a file"
    assert_resumes_keeping(runner, db, hot.complete)
    with sqlite3.connect(db) as conn:
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'uncommitted'").fetchall()
    conn.close()


def test_a_hot_journal_left_by_a_killed_transaction_passes_and_the_resume_rolls_it_back(runner, hot, tmp_path):
    assert_rolled_back_on_resume(runner, place_hot(hot, tmp_path / "hot"), hot)


def test_a_hot_journal_beside_a_header_counting_pages_the_file_lacks_yet_passes(runner, hot, tmp_path):
    page = bytearray(hot.db[:4096])
    pages = len(hot.db) // 4096 + 3  # page 1 written first, the file not yet extended
    page[28:32] = pages.to_bytes(4, "big")
    page[92:96] = page[24:28]
    db = place_hot(hot, tmp_path / "ahead", db=bytes(page) + hot.db[4096:])
    assert_rolled_back_on_resume(runner, db, hot)


def test_a_journal_naming_a_super_journal_is_judged_without_touching_that_file(hot, tmp_path):
    directory = tmp_path / "multi"
    super_journal = directory / "h.db-mj01234567"
    db = place_hot(hot, directory, journal=sqlite_states.with_super_journal(hot.journal, str(super_journal)))
    super_journal.write_bytes(b"/elsewhere/other.db-journal\0")  # SQLite deletes one whose journals are all gone
    files = files_digest(directory)
    storage.check_database(url(db))
    assert files_digest(directory) == files


# -- real damage is still refused ------------------------------------------------------------------
def _garble_outside_the_wal(killed: Killed) -> bytes:
    rng = random.Random(7)
    size = killed.wal.page_size
    out = bytearray(killed.db)
    for page in [p for p in range(2, len(killed.db) // size + 1) if p not in killed.wal.newest_pages()][::3]:
        out[(page - 1) * size : page * size] = rng.randbytes(size)
    return bytes(out)


def _ahead(killed: Killed) -> bytes:
    """The file after a checkpoint copied page 1 (the header counts the new pages) and nothing else."""
    return next(s.db for s in checkpoint_states(killed) if s.name.startswith("copied-1-of-"))


def _stale(killed: Killed) -> bytes:
    """The -wal after the next writer restarted it: a new header, every frame behind it stale."""
    return killed.wal.restarted_header(0x5EED0002) + killed.wal.raw[sqlite_states.WAL_HEADER :]


DAMAGE = {
    "truncated-its-wal-gone": (lambda k: (_ahead(k), None), "is truncated"),
    "truncated-its-wal-emptied": (lambda k: (_ahead(k), b""), "is truncated"),
    "truncated-its-wal-stale": (lambda k: (_ahead(k), _stale(k)), "is truncated"),
    "pages-garbled-beside-a-wal": (lambda k: (_garble_outside_the_wal(k), k.wal.raw), "is corrupt"),
    "header-overwritten-beside-a-stale-wal": (
        lambda k: (b"\0" * 100 + k.db[100:], _stale(k)),
        "is not a SQLite database",
    ),
    "text-beside-a-wal": (
        lambda k: (b"campaign = vm-2\ntrials = 3\n", k.wal.raw),
        "is not a SQLite database (a text file)",
    ),
    "zero-length-beside-a-wal": (lambda k: (b"", k.wal.raw), "is empty (0 bytes)"),
}


@pytest.mark.parametrize("command", ["resume", "studies"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_is_refused_whatever_lies_beside_it_and_left_byte_identical(killed, tmp_path, damage, command):
    build, says = DAMAGE[damage]
    db_bytes, wal_bytes = build(killed)
    db = place(DiskState(damage, "damage", db_bytes, wal_bytes), tmp_path / "db", killed.shm)
    argv = study_argv(db, 1) if command == "resume" else ["studies", "--storage", url(db)]
    refuse(db, argv, (says,))


FOREIGN_IN_WAL = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute('PRAGMA wal_autocheckpoint=0')
for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
    conn.execute(f'DROP TABLE {table}')
conn.execute('CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)')
conn.execute("INSERT INTO notes (text) VALUES ('buy milk')")
os._exit(0)
"""


def test_another_applications_database_is_refused_when_its_tables_are_still_in_the_wal(killed, tmp_path):
    db = place(
        DiskState("copied", "copied", next(s.db for s in checkpoint_states(killed) if s.name == "wal-deleted"), None),
        tmp_path / "db",
        None,
    )
    subprocess.run([sys.executable, "-c", FOREIGN_IN_WAL, str(db)], check=True, timeout=60)
    assert db.with_name("k.db-wal").stat().st_size > sqlite_states.WAL_HEADER
    refuse(db, ["studies", "--storage", url(db)], ("another application's database", "tables notes"))


# -- other processes ---------------------------------------------------------------------------------
def test_a_database_another_process_has_open_is_read_through_its_locks_not_copied(killed, tmp_path, monkeypatch):
    db = place(checkpoint_states(killed)[0], tmp_path / "db", killed.shm)
    keeper = subprocess.Popen(
        [sys.executable, "-c", KEEPER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert keeper.stdout.readline().strip() == "reading"
        stored = {name: digest for name, digest in files_digest(db.parent).items() if not name.endswith("-shm")}

        def no_copy(*_args, **_kwargs):
            raise AssertionError("a database in use was copied")

        monkeypatch.setattr(_sqlite_file, "_read_a_copy", no_copy)
        storage.check_database(url(db))
        assert {n: d for n, d in files_digest(db.parent).items() if not n.endswith("-shm")} == stored
    finally:
        keeper.stdin.close()
        keeper.wait(timeout=60)


def test_a_database_checked_again_and_again_while_studies_start_write_and_finish_is_never_refused(
    runner, killed, tmp_path
):
    db = place(checkpoint_states(killed)[-1], tmp_path / "db", None)
    checks = 0
    for _ in range(3):
        runner.start(study_argv(db, 1), tmp_path / "busy.log")
        while (code := runner.wait(timeout=0)) is None:
            storage.check_database(url(db))
            checks += 1
        assert code == 0
        storage.check_database(url(db))
    assert checks >= 6
    assert integrity(db) == "ok"


def test_a_file_that_a_writer_completes_while_it_is_checked_is_looked_at_again_not_refused(
    killed, tmp_path, monkeypatch
):
    states = {s.name: s for s in checkpoint_states(killed)}
    db = place(DiskState("truncated-alone", "damage", _ahead(killed), None), tmp_path / "db", None)
    real = _sqlite_file._check_once
    looks = []

    def look_then_finish_writing(path: Path, check_contents) -> None:
        looks.append(path)
        try:
            real(path, check_contents)
        finally:
            if len(looks) == 1:  # a writer completes the file while the first look refuses it
                db.write_bytes(states["wal-deleted"].db)

    monkeypatch.setattr(_sqlite_file, "_check_once", look_then_finish_writing)
    storage.check_database(url(db))
    assert len(looks) == 2
    db.write_bytes(_ahead(killed))  # left as it is, it is refused at the first look
    with pytest.raises(storage.StorageError, match="is truncated"):
        storage.check_database(url(db))
    assert len(looks) == 3


# -- no room for a private copy --------------------------------------------------------------------
def test_without_room_for_a_copy_the_file_is_read_in_place_and_its_data_left_byte_identical(
    killed, hot, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))
    ahead = place(
        next(s for s in checkpoint_states(killed) if s.name.startswith("copied-1-of-")), tmp_path / "ahead", killed.shm
    )
    journal = place_hot(hot, tmp_path / "hot")
    for db in (ahead, journal):
        stored = {n: d for n, d in files_digest(db.parent).items() if not n.endswith("-shm")}
        storage.check_database(url(db))  # a hot journal only a write can settle: passed, the open will settle it
        assert {n: d for n, d in files_digest(db.parent).items() if not n.endswith("-shm")} == stored


def test_an_optuna_version_table_left_empty_by_a_killed_creator_is_not_refused(tmp_path):
    # A process killed between creating Optuna's alembic_version table and stamping it leaves the
    # table empty (seen when two studies race to create a new file and the winner is killed); Optuna
    # stamps such a table when it opens it, and the check before it must not stumble on it.
    from tests.support.study import run_study

    db = tmp_path / "stamped-late.db"
    assert run_study(db, "--trials", "1").exit_code == 0
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM alembic_version")
    resumed = run_study(db, "--trials", "1")
    assert resumed.exit_code == 0, resumed.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
