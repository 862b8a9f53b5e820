"""A killed study resumes intact; worker count does not change results; common random numbers hold."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from rcutune import sim
from tests.support.study import TINY, integrity, run_study, trials, url

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _complete_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_at_a_random_moment_then_resume_loses_nothing(tmp_path):
    db = tmp_path / "k.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable,
        "-m",
        "rcutune.tuner.cli",
        "study",
        *TINY,
        "--jobs",
        "2",
        "--workload",
        "steady",
        "--trials",
        "200",
        "--storage",
        url(db),
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a loaded machine starts the workers slowly
        while _complete_count(db) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)  # the study and its workers, mid-work
    finally:
        proc.wait()
    assert integrity(db) == "ok"
    before = {t.number: t for t in trials(db, "vm-2/steady")}
    completed = {n: (t.params, t.values) for n, t in before.items() if t.state == TrialState.COMPLETE}
    interrupted = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert len(completed) >= 3
    queued = sum(t.state == TrialState.WAITING for t in before.values())

    # At least the 4 trials 2 workers keep in flight, and enough to run everything already queued
    # (--trials adds exactly that many, so a smaller resume would leave queued retries for the next one).
    resume = max(6, queued + len(interrupted))
    result = run_study(db, "--trials", str(resume), "--jobs", "2")
    assert result.exit_code == 0, result.output

    after = {t.number: t for t in trials(db, "vm-2/steady")}
    assert {n: (after[n].params, after[n].values) for n in completed} == completed
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    # Retries and the queued rest of the batch go first: what still waits is a later batch's.
    waiting = [t for t in after.values() if t.state == TrialState.WAITING]
    assert all(
        t.user_attrs.get("batch", 0) > max(after[n].user_attrs.get("batch", 0) for n in completed) for t in waiting
    )
    retried = {t.user_attrs.get("retry_of") for t in after.values()}
    for n in interrupted:
        assert after[n].state == TrialState.FAIL and after[n].user_attrs["fail_reason"].startswith("interrupted")
        if "policy" in after[n].user_attrs:  # its parameters were complete, so they run again
            assert n in retried
    assert integrity(db) == "ok"


def _results(db: Path) -> set:
    return {(tuple(sorted(t.params.items())), t.state.name, tuple(t.values or ())) for t in trials(db, "vm-2/steady")}


def test_two_workers_give_the_same_trial_results_as_one_for_a_seeded_random_sampler(tmp_path):
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    assert run_study(one, "--trials", "8", "--sampler", "random", "--seed", "3", "--jobs", "1").exit_code == 0
    assert run_study(two, "--trials", "8", "--sampler", "random", "--seed", "3", "--jobs", "2").exit_code == 0
    assert _results(one) == _results(two)
    assert len(_results(one)) == 8


def test_common_random_numbers_every_policy_sees_the_same_arrivals(tmp_path):
    db = tmp_path / "crn.db"
    assert run_study(db, "--trials", "6", "--sampler", "random").exit_code == 0
    done = [t for t in trials(db, "vm-2/steady") if t.state == TrialState.COMPLETE]
    policies = {tuple(sorted(t.params.items())) for t in done}
    assert len(policies) >= 2
    base = 2  # --replications 2 in TINY
    seeds = {tuple(t.user_attrs["seeds"][:base]) for t in done}
    calls = {tuple(t.user_attrs["replications"]["calls"][:base]) for t in done}
    headless = {tuple(t.user_attrs["replications"]["calls_headless"][:base]) for t in done}
    assert len(seeds) == 1 and len(calls) == 1 and len(headless) == 1
    assert len(set(next(iter(calls)))) == base  # ...while the replications differ from each other


def test_a_study_is_readable_by_optuna_with_its_metric_names(tmp_path):
    db = tmp_path / "m.db"
    assert run_study(db, "--trials", "2").exit_code == 0
    study = optuna.load_study(study_name="vm-2/steady", storage=url(db))
    assert study.metric_names == ["reserved_mib", "fallback_cost"]
    assert study.user_attrs["campaign"] == "vm-2" and study.user_attrs["kernel"] == sim.DEFAULT_KERNEL
