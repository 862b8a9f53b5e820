"""Shared set-up of the study tests: a tiny campaign (vm-2, short runs, few seeds) in a temporary SQLite file."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import optuna
from typer.testing import CliRunner

from rcutune.tuner.cli import app

# One steady workload, 0.1 simulated s, one replication, random sampling: the quickest real study,
# for tests that kill or interrupt it.
FAST = [
    "--hardware",
    "vm-2",
    "--workload",
    "steady",
    "--seconds",
    "0.1",
    "--replications",
    "1",
    "--race-replications",
    "1",
    "--jobs",
    "1",
    "--sampler",
    "random",
]
TINY = ["--hardware", "vm-2", "--seconds", "0.3", "--replications", "2", "--race-replications", "1", "--jobs", "1"]


def url(db: Path) -> str:
    return f"sqlite:///{db}"


def run_study(db: Path, *args: str, workloads: tuple[str, ...] = ("steady",)):
    argv = ["study", *TINY, "--storage", url(db), *args]
    for w in workloads:
        argv += ["--workload", w]
    return CliRunner().invoke(app, argv)


def trials(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url(db)).get_trials()


def file_digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def files_digest(directory: Path) -> dict[str, str]:
    """Each file in `directory` by name, with its contents' hash."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file()}


def refuse(db: Path, argv: list[str], says: tuple[str, ...]) -> None:
    """The command exits 2 with one line naming the file, and touches nothing in its directory."""
    files = files_digest(db.parent)
    result = CliRunner().invoke(app, argv)
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.output, result.exception)
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    assert str(db) in err or url(db) in err, err
    for fragment in says:
        assert fragment in err, (fragment, err)
    assert files_digest(db.parent) == files, "byte-identical, and no file added"
