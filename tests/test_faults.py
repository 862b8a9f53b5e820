"""Faults: kill -9 at any moment, a full disk, corrupt and foreign databases (DESIGN.md §8).

Commands that are killed run as children of `fork_runner` (rcutune imported once, one fork per
command), so the kill moments fall in the commands' own work. The moments come from fixed seeds.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import typer
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from rcutune import storage
from rcutune.tuner import report as _report
from rcutune.tuner.cli import app
from rcutune.tuner.cli._common import user_errors
from rcutune.tuner.report import _files as report_files_module  # the write a full disk fails
from tests.support.fork_runner import ForkRunner
from tests.support.study import FAST, integrity, refuse, trials, url

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STUDY = "vm-2/steady"
KILLS = 20


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    forks = ForkRunner(ROOT, tmp_path_factory.mktemp("runner"))
    yield forks
    forks.close()


def study_argv(db: Path, trials_: int, *extra: str) -> list[str]:
    return ["study", *FAST, "--storage", url(db), "--trials", str(trials_), *extra]


def by_number(db: Path) -> dict[int, FrozenTrial]:
    return {t.number: t for t in trials(db, STUDY)}


def completed(found: dict[int, FrozenTrial]) -> dict[int, tuple]:
    return {
        n: (t.params, t.values, t.user_attrs.get("replications"))
        for n, t in found.items()
        if t.state == TrialState.COMPLETE
    }


def assert_kept(earlier: dict[int, tuple], found: dict[int, FrozenTrial]) -> None:
    """Every trial complete earlier is still there, unchanged; no trial was retried twice or after completing."""
    assert {n: v for n, v in completed(found).items() if n in earlier} == earlier
    retried = [t.user_attrs["retry_of"] for t in found.values() if "retry_of" in t.user_attrs]
    assert len(retried) == len(set(retried)), "a trial was retried twice"
    assert all(found[n].state != TrialState.COMPLETE for n in retried), "a complete trial was run again"


# -- kill -9 ---------------------------------------------------------------------------------------
def test_a_study_killed_at_20_moments_resumes_after_each_losing_and_duplicating_nothing(runner, tmp_path):
    db, log = tmp_path / "k.db", tmp_path / "k.log"
    assert runner.run(study_argv(db, 3), log)[0] == 0
    moments = [random.Random(f"study-{i}").uniform(0.0, 3.0) for i in range(KILLS)]
    killed = 0
    for moment in moments:
        earlier = completed(by_number(db))
        pid = runner.start(study_argv(db, 200), log)  # still running at every moment
        _, was_killed = runner.kill_at(pid, moment)
        killed += was_killed
        assert integrity(db) == "ok"
        after_kill = by_number(db)
        assert_kept(earlier, after_kill)
        interrupted = [n for n, t in after_kill.items() if t.state == TrialState.RUNNING]

        code, _ = runner.run(study_argv(db, 1), log)  # the resume
        assert code == 0, log.read_text()[-3000:]
        resumed = by_number(db)
        assert_kept(completed(after_kill), resumed)
        assert not [t for t in resumed.values() if t.state == TrialState.RUNNING]
        retried = {t.user_attrs.get("retry_of") for t in resumed.values()}
        for n in interrupted:
            assert resumed[n].state == TrialState.FAIL
            assert resumed[n].user_attrs["fail_reason"].startswith("interrupted")
            if "policy" in resumed[n].user_attrs:  # its parameters were complete: it runs again
                assert n in retried
        assert integrity(db) == "ok"
    assert killed == KILLS


def report_files(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_report_killed_at_20_moments_is_the_previous_or_the_new_one_never_a_mix(runner, tmp_path):
    db, log = tmp_path / "r.db", tmp_path / "r.log"
    target = tmp_path / "reports"
    directory = target / "vm-2" / "vm-2"

    def report(confidence: float) -> list[str]:
        return [
            "report",
            "vm-2",
            "--storage",
            url(db),
            "--out",
            str(target),
            "--confirm-seeds",
            "1",
            "--confidence",
            str(confidence),
        ]

    assert runner.run(study_argv(db, 6), log)[0] == 0
    code, took = runner.run(report(0.9), log)
    assert code == 0, log.read_text()[-3000:]
    previous_dir = tmp_path / "previous"
    shutil.copytree(directory, previous_dir)
    previous = report_files(previous_dir)

    def restore_previous() -> None:
        shutil.rmtree(directory)
        shutil.copytree(previous_dir, directory)

    # The new report (another confidence level), computed once in the runner; written once whole.
    runner.prepare_report(url(db), "vm-2", target, confidence=0.95, confirm_seeds=1)
    durations = []
    for _ in range(2):  # how long writing it takes, at best, on this (busy) machine
        start = time.monotonic()
        code, _ = runner.kill_at(runner.start_publish(log), 600)
        durations.append(time.monotonic() - start)
        assert code == 0, log.read_text()[-3000:]
        new = report_files(directory)
        restore_previous()
    writing = min(durations)
    assert new != previous

    # A report writes nothing until its last act (its files, the swap, the database), so most moments fall
    # there: a quarter anywhere in a whole `rcutune report` run, the rest while the prepared one is written.
    rng = random.Random(20)
    plan = [("run", rng.uniform(0.0, took)) for _ in range(KILLS // 4)]
    # Denser early in the writing, where the files go down; the database write after the swap is slower.
    # Drawn as a share of the writing time, which is known better with every write that finished
    # before its kill (the other test worker may have slowed the measurement above).
    plan += [("write", rng.random() ** 2) for _ in range(KILLS - KILLS // 4)]
    outcomes = {"previous": 0, "new": 0, "mid-write": 0}
    left_behind: set[Path] = set()
    for phase, share in plan:
        pid = runner.start(report(0.95), log) if phase == "run" else runner.start_publish(log)
        start = time.monotonic()
        _, killed = runner.kill_at(pid, share if phase == "run" else share * writing)
        if phase == "write" and not killed:
            writing = min(writing, time.monotonic() - start)  # it wrote faster than measured
        found = report_files(directory)
        assert found in (previous, new), "a report directory is one whole version"
        outcomes["previous" if found == previous else "new"] += 1
        staged = set(directory.parent.glob(".vm-2.*")) - left_behind  # this kill's half-written copy
        outcomes["mid-write"] += bool(staged)
        left_behind |= staged
        assert integrity(db) == "ok"
        if found == new:  # the next kill starts from the previous version again
            restore_previous()
    assert outcomes["previous"] >= 1 and outcomes["mid-write"] >= 1, outcomes  # kills did land mid-write
    assert runner.kill_at(runner.start_publish(log), 600)[0] == 0
    assert report_files(directory) == new
    assert not list(directory.parent.glob(".vm-2.*")), "leftovers of killed runs are cleaned up"


# -- runs that collide ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_runner(tmp_path_factory):
    forks = ForkRunner(ROOT, tmp_path_factory.mktemp("runner2"))
    yield forks
    forks.close()


def refused_once(log: Path) -> str:
    """The one error line of a refused command's log (no traceback)."""
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert "Traceback" not in text and len(errors) == 1, text[-3000:]
    return errors[0]


@pytest.mark.slow
def test_two_studies_started_at_once_on_one_campaign_run_one_and_refuse_the_other_with_one_line(
    runner, second_runner, tmp_path
):
    forks = (runner, second_runner)
    for round_ in range(4):  # a new file each time: both also race to create the tables
        db = tmp_path / f"both-{round_}.db"
        logs = [tmp_path / f"both-{round_}-{side}.log" for side in "ab"]
        # Long runs (the first still runs when the second starts, however busy the machine); once one is
        # refused, the other has shown what it had to and is stopped (a run left whole is the next test's).
        pids = [forks[k].start(study_argv(db, 200), logs[k]) for k in (0, 1)]
        codes: list[int | None] = [None, None]
        deadline = time.monotonic() + 600
        while 2 not in codes:
            assert time.monotonic() < deadline and None in codes, (codes, [log.read_text()[-2000:] for log in logs])
            for k in (0, 1):
                if codes[k] is None:
                    codes[k] = forks[k].wait(timeout=0.1)
        loser = codes.index(2)
        winner = 1 - loser
        assert codes[winner] is None, "the one that took the campaign was still running"
        line = refused_once(logs[loser])
        assert f"campaign 'vm-2' is being run by {storage.this_owner().rpartition(':')[0]}:{pids[winner]}" in line
        forks[winner].kill_at(pids[winner], 0)
        assert integrity(db) == "ok"
        assert runner.run(study_argv(db, 1), logs[0])[0] == 0, logs[0].read_text()[-2000:]  # and it resumes


@pytest.mark.slow
def test_a_second_study_on_a_running_campaign_is_refused_and_the_first_finishes_unharmed(runner, tmp_path):
    db, log = tmp_path / "busy.db", tmp_path / "busy.log"
    assert runner.run(study_argv(db, 3), log)[0] == 0
    runner.start(study_argv(db, 12), log)
    deadline = time.monotonic() + 300
    while len(completed(by_number(db))) < 5:  # it is running and telling trials
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    second = CliRunner().invoke(app, study_argv(db, 5))
    assert second.exit_code == 2, second.output
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is being run by" in lines[0] and "Traceback" not in second.output, second.output
    assert runner.wait(timeout=600) == 0, log.read_text()[-3000:]
    found = by_number(db)
    assert [t.state for t in found.values()].count(TrialState.COMPLETE) == 15  # 3, then the first run's 12
    assert not [t for t in found.values() if t.state == TrialState.RUNNING]
    assert integrity(db) == "ok"


@pytest.mark.slow
def test_two_reports_of_one_campaign_written_at_once_leave_one_whole_report(runner, second_runner, tmp_path):
    db, log = tmp_path / "two.db", tmp_path / "two.log"
    target = tmp_path / "reports"
    directory = target / "vm-2" / "vm-2"
    assert runner.run(study_argv(db, 6), log)[0] == 0
    # Two different reports (two confidence levels), each computed once in its own runner.
    runner.prepare_report(url(db), "vm-2", target, confidence=0.9, confirm_seeds=1)
    second_runner.prepare_report(url(db), "vm-2", target, confidence=0.95, confirm_seeds=1)
    versions = []
    for forks in (runner, second_runner):
        assert forks.kill_at(forks.start_publish(log), 600)[0] == 0, log.read_text()[-3000:]
        versions.append(report_files(directory))
    assert versions[0] != versions[1]
    for round_ in range(6):
        if round_ % 2:  # half the time both find no report there yet
            shutil.rmtree(directory)
        pids = [runner.start_publish(log), second_runner.start_publish(log)]
        codes = [runner.wait(timeout=600), second_runner.wait(timeout=600)]
        assert codes == [0, 0], (pids, log.read_text()[-3000:])
        assert report_files(directory) in versions, "one whole report, not a mix"
        assert not list(directory.parent.glob(".vm-2.*")), "no half-written copy is left"
        assert integrity(db) == "ok"


def test_report_directories_published_at_once_by_many_writers_are_always_one_whole_version(tmp_path):
    from rcutune.tuner.report._files import publish_directory

    target = tmp_path / "vm-2"
    versions = {k: {"report.md": f"report {k}\n" * 50, "pareto.png": bytes([k]) * 4096} for k in range(3)}
    as_bytes = [{n: c.encode() if isinstance(c, str) else c for n, c in v.items()} for v in versions.values()]
    start, done = threading.Barrier(len(versions) + 1), threading.Barrier(len(versions) + 1)
    errors: list[BaseException] = []
    rounds = 60

    def writer(k: int) -> None:
        try:
            for _ in range(rounds):
                start.wait()
                try:
                    publish_directory(versions[k], target)
                except Exception as err:  # noqa: BLE001 - reported below
                    errors.append(err)
                done.wait()
        except threading.BrokenBarrierError:  # the test failed and stopped the rounds
            pass

    threads = [threading.Thread(target=writer, args=(k,)) for k in versions]
    for t in threads:
        t.start()
    try:
        for round_ in range(rounds):
            if round_ % 2:  # every other round, all of them find no report there yet
                shutil.rmtree(target, ignore_errors=True)
            start.wait()
            done.wait()
            assert errors == []
            assert {p.name: p.read_bytes() for p in target.iterdir()} in as_bytes, "one whole version"
            assert [p.name for p in tmp_path.iterdir()] == ["vm-2"], "no staging directory is left"
    finally:
        start.abort()
        done.abort()
        for t in threads:
            t.join()


def test_a_report_reads_one_snapshot_even_when_a_study_tells_trials_meanwhile(tmp_path, monkeypatch):
    import optuna
    import sqlalchemy as sa

    from rcutune.tuner.recommend import load_campaign, trials_digest

    db = tmp_path / "snap.db"
    argv = ["study", *FAST, "--workload", "bursty", "--storage", url(db)]
    assert CliRunner().invoke(app, [*argv, "--trials", "4"]).exit_code == 0
    engine = sa.create_engine(url(db))
    names = ["vm-2/steady", "vm-2/bursty"]
    before = trials_digest(engine, names)
    real = optuna.load_study
    told_meanwhile = []

    def load_study_after_a_study_told_more(*args, **kwargs):
        if not told_meanwhile:  # between the report's first read and its reading of the trials
            told_meanwhile.append(CliRunner().invoke(app, [*argv, "--trials", "2"]).exit_code)
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna, "load_study", load_study_after_a_study_told_more)
    data = load_campaign(url(db), "vm-2")
    monkeypatch.setattr(optuna, "load_study", real)
    assert told_meanwhile == [0] and trials_digest(engine, names) != before  # the database did move on
    engine.dispose()
    assert data.trials_sha256 == before
    assert {w.name: len(w.trials) for w in data.workloads} == {"steady": 4, "bursty": 4}
    assert {w.name: len(w.optuna_trials) for w in data.workloads} == {"steady": 4, "bursty": 4}


@pytest.mark.slow
def test_a_report_while_a_study_writes_is_written_and_the_study_finishes_unharmed(runner, tmp_path):
    db, log = tmp_path / "live.db", tmp_path / "live.log"
    assert runner.run(study_argv(db, 6), log)[0] == 0
    runner.start(study_argv(db, 14), log)
    target = tmp_path / "reports"
    for _ in range(2):
        result = CliRunner().invoke(
            app, ["report", "vm-2", "--storage", url(db), "--out", str(target), "--confirm-seeds", "1"]
        )
        assert result.exit_code in (0, 1) and "Traceback" not in result.output, result.output  # 1: no answer yet
        assert json.loads((target / "vm-2" / "vm-2" / "recommendation.json").read_text())["campaign"] == "vm-2"
    assert runner.wait(timeout=600) == 0, log.read_text()[-3000:]
    found = by_number(db)
    assert [t.state for t in found.values()].count(TrialState.COMPLETE) == 20
    assert not [t for t in found.values() if t.state == TrialState.RUNNING]
    assert integrity(db) == "ok"


# -- a full disk ---------------------------------------------------------------------------------
LIMITED = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'rcutune.tuner.cli', *sys.argv[2:]])"
)


def test_a_full_disk_stops_a_study_with_one_line_and_the_database_stays_resumable(runner, tmp_path):
    db, log = tmp_path / "d.db", tmp_path / "d.log"
    assert runner.run(study_argv(db, 3), log)[0] == 0
    earlier = completed(by_number(db))
    limit = db.stat().st_size + 48 * 1024  # files may not grow past this: the -wal fills up first
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *study_argv(db, 200)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    assert "the disk is full" in errors[0] and "run the same command again" in errors[0]
    assert integrity(db) == "ok"
    assert_kept(earlier, by_number(db))

    assert runner.run(study_argv(db, 2), log)[0] == 0
    resumed = by_number(db)
    assert_kept(earlier, resumed)
    assert not [t for t in resumed.values() if t.state == TrialState.RUNNING]
    assert integrity(db) == "ok"


def test_a_full_disk_is_recognised_however_it_is_wrapped():
    from optuna.exceptions import StorageInternalError

    def wrapped(cause: BaseException) -> BaseException:
        try:
            raise StorageInternalError("An exception is raised during the commit.") from cause
        except StorageInternalError as err:
            return err

    assert storage.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert storage.is_disk_full(wrapped(OSError(errno.EFBIG, "File too large")))
    assert storage.is_disk_full(storage.DiskFull("storage: database or disk is full"))
    assert not storage.is_disk_full(wrapped(OSError(errno.EACCES, "Permission denied")))
    assert not storage.is_disk_full(ValueError("no space in this message matters"))


def test_a_full_disk_while_a_report_is_written_keeps_the_previous_report_and_says_so(tmp_path, monkeypatch, capsys):
    directory = tmp_path / "vm-2" / "vm-2"
    directory.mkdir(parents=True)
    (directory / "report.md").write_text("the previous report\n")
    previous = report_files(directory)
    real = report_files_module.write_atomic

    def full_after_the_first_file(path: Path, content: bytes | str) -> None:
        if list(path.parent.iterdir()):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, content)

    monkeypatch.setattr(report_files_module, "write_atomic", full_after_the_first_file)
    prepared = _report.PreparedReport(
        "sqlite://", directory, {"pareto.png": b"png", "report.md": "new\n"}, recommendation=None, data=None, options={}
    )  # type: ignore[arg-type]
    with pytest.raises(typer.Exit) as stopped, user_errors():
        _report.publish_report(prepared)
    assert stopped.value.exit_code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: the disk is full")
    assert report_files(directory) == previous
    assert not list(directory.parent.glob(".vm-2.*")), "the half-written copy is removed"


# -- a file system that turns read-only -----------------------------------------------------------
class Ext4:
    """A small ext4 file system in a loop-mounted image, mounted `errors=remount-ro` (needs root and loop devices).

    `turn_read_only` makes the kernel record a file-system error, after which it refuses every write
    (EROFS) even through files already open, as when a disk fails under a running study;
    `repair` unmounts it, checks it and mounts it writable again.
    """

    def __init__(self, root: Path) -> None:
        self.image, self.mount = root / "fs.img", root / "mnt"
        self.mount.mkdir()
        with self.image.open("wb") as f:
            f.truncate(64 * 2**20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, capture_output=True)
        self._mount()

    def _mount(self) -> None:
        subprocess.run(
            ["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mount)], check=True, capture_output=True
        )

    def turn_read_only(self) -> None:
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(self.mount)], check=True, capture_output=True, text=True
        ).stdout.strip()
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("rcutune test\n")

    def repair(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=True, capture_output=True)
        checked = subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True, text=True)
        assert checked.returncode in (0, 1), checked.stdout  # 1: errors corrected
        self._mount()

    def remove(self) -> None:
        gc.collect()  # connections this test left to the collector hold the file open
        if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)


@pytest.fixture
def ext4(tmp_path):
    needs = [shutil.which(tool) for tool in ("mkfs.ext4", "e2fsck", "findmnt", "mount", "umount")]
    if os.geteuid() != 0 or not all(needs):
        pytest.skip("needs root and e2fsprogs to mount a file system that turns read-only")
    try:
        fs = Ext4(tmp_path)
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"cannot loop-mount an ext4 image here: {getattr(err, 'stderr', err)!r}")
    try:
        yield fs
    finally:
        fs.remove()


def read_trials(db: Path) -> dict[int, FrozenTrial]:
    """The stored trials, with every connection closed afterwards (the file system is unmounted next)."""
    import optuna

    rdb = optuna.storages.RDBStorage(url(db))
    try:
        return {t.number: t for t in optuna.load_study(study_name=STUDY, storage=rdb).get_trials()}
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


@pytest.mark.slow
def test_a_study_whose_file_system_turns_read_only_stops_with_one_line_and_resumes_once_writable(runner, ext4):
    db, log = ext4.mount / "ro.db", ext4.mount.parent / "ro.log"
    assert runner.run(study_argv(db, 3), log)[0] == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rcutune.tuner.cli", *study_argv(db, 400)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(completed(read_trials(db))) < 6:  # mid-run: it has told trials of its own
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        before = completed(read_trials(db))
        ext4.turn_read_only()
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and len(errors) == 1, stderr[-3000:]
    assert f"cannot write to the database {db}" in errors[0] and "run the same command again" in errors[0]

    ext4.repair()
    assert integrity(db) == "ok"
    assert_kept(before, read_trials(db))
    assert runner.run(study_argv(db, 2), log)[0] == 0, log.read_text()[-3000:]
    resumed = read_trials(db)
    assert_kept(before, resumed)
    assert not [t for t in resumed.values() if t.state == TrialState.RUNNING]
    assert integrity(db) == "ok"


# -- databases no command may touch --------------------------------------------------------------
@pytest.fixture(scope="module")
def good_db(runner, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("good") / "good.db"
    assert runner.run(study_argv(db, 3), db.with_suffix(".log"))[0] == 0
    assert not db.with_name(db.name + "-wal").exists()
    return db


def commands(db: Path, out: Path) -> dict[str, list[str]]:
    return {
        "study": study_argv(db, 1, "--study", "fresh"),
        "resume": study_argv(db, 1),
        "studies": ["studies", "--storage", url(db)],
        "report": ["report", "vm-2", "--storage", url(db), "--out", str(out)],
        "recommend": ["recommend", "--hardware", "vm-2", "--storage", url(db)],
    }


def _garble(data: bytes) -> bytes:
    rng = random.Random(7)
    out = bytearray(data)
    for page in range(2, len(data) // 4096, 3):
        out[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    return bytes(out)


CORRUPTIONS = {
    "header-overwritten": (lambda data: b"\0" * 100 + data[100:], "is not a SQLite database"),
    "pages-garbled": (_garble, "is corrupt"),
    "truncated": (lambda data: data[: len(data) // 2], "is truncated"),
    "zero-length": (lambda data: b"", "is empty (0 bytes)"),
    "text-file": (lambda data: b"campaign = vm-2\ntrials = 3\n", "is not a SQLite database (a text file)"),
}
COMMANDS = ("study", "resume", "studies", "report", "recommend")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_database_is_refused_by_every_command_and_left_byte_identical(good_db, tmp_path, corruption, command):
    damage, problem = CORRUPTIONS[corruption]
    db = tmp_path / "db" / "broken.db"
    db.parent.mkdir()
    db.write_bytes(damage(good_db.read_bytes()))
    refuse(db, commands(db, tmp_path / "reports")[command], (problem,))


def _newer_rcutune(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE rcutune_schema_version SET version = ?", (storage.SCHEMA_VERSION + 1,))


def _older_optuna(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    conn.execute("UPDATE version_info SET library_version = '3.0.0'")


def _newer_optuna(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE alembic_version SET version_num = 'v99.0.0.a'")


def _another_application(conn: sqlite3.Connection) -> None:
    for table in [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]:
        conn.execute(f"DROP TABLE {table}")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('buy milk')")


VERSIONS = {
    "another-application": (_another_application, ("another application's database", "tables notes")),
    "newer-rcutune": (_newer_rcutune, ("written by a newer rcutune", "upgrade rcutune")),
    "optuna-needs-upgrade": (_older_optuna, ("v3.0.0.d", "optuna storage upgrade --storage sqlite:///")),
    "newer-optuna": (_newer_optuna, ("v99.0.0.a", "upgrade optuna")),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("version", list(VERSIONS))
def test_tables_of_another_version_or_application_are_refused_with_the_mend_never_migrated(
    good_db, tmp_path, version, command
):
    change, says = VERSIONS[version]
    db = tmp_path / "db" / "other.db"
    db.parent.mkdir()
    shutil.copy(good_db, db)
    with sqlite3.connect(db) as conn:
        change(conn)
    conn.close()
    assert not db.with_name(db.name + "-wal").exists()
    refuse(db, commands(db, tmp_path / "reports")[command], says)
    if version == "optuna-needs-upgrade":
        err = CliRunner().invoke(app, ["studies", "--storage", url(db)]).stderr
        assert f"optuna storage upgrade --storage {url(db)}" in err


def test_an_interrupt_a_database_driver_reported_as_its_own_error_is_still_an_interrupt():
    """psycopg's pool ping, interrupted by SIGTERM (raised as KeyboardInterrupt), leaves the connection
    mid-transaction; SQLAlchemy and then Optuna report that instead. It stops like Ctrl-C: exit 130,
    "interrupted", not a traceback and exit 1."""
    import optuna
    import sqlalchemy as sa
    import typer

    from rcutune import storage
    from rcutune.tuner.cli._common import user_errors

    def interrupted_ping() -> None:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise sa.exc.ProgrammingError("SELECT 1", {}, Exception("can't change 'autocommit' now")) from None
        except sa.exc.ProgrammingError as err:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from err

    with pytest.raises(optuna.exceptions.StorageInternalError) as caught:
        interrupted_ping()
    assert storage.interrupted(caught.value)
    assert not storage.interrupted(optuna.exceptions.StorageInternalError("invalid data"))
    with pytest.raises(typer.Exit) as stopped, user_errors():
        interrupted_ping()
    assert stopped.value.exit_code == 130
