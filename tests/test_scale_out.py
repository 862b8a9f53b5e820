"""Many machines on one campaign: `rcutune worker` processes sharing its studies on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from typer.testing import CliRunner

from rcutune.tuner.cli import app
from tests.support.study import TINY

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("steady", "bursty")
BUDGET = 10  # the initial design of kernel 6.3 has 10 points: never pruned, so every trial ends COMPLETE


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _create(url: str, *args: str, trials: int = BUDGET, workloads: tuple[str, ...] = WORKLOADS):
    argv = ["study", *TINY, "--storage", url, "--trials", str(trials), "--no-run", *args]
    for w in workloads:
        argv += ["--workload", w]
    return CliRunner().invoke(app, argv)


def _worker(url: str, out: Path, *args: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "rcutune.tuner.cli",
        "worker",
        "--study",
        "vm-2",
        "--storage",
        url,
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "5",
        *args,
    ]
    with out.open("w") as sink:
        return subprocess.Popen(argv, env=_env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


@contextmanager
def _study(url: str, workload: str, **storage_kwargs) -> Iterator[optuna.Study]:
    storage = optuna.storages.RDBStorage(url, **storage_kwargs)
    try:
        yield optuna.load_study(study_name=f"vm-2/{workload}", storage=storage)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _trials(url: str, workload: str) -> list[optuna.trial.FrozenTrial]:
    with _study(url, workload) as study:
        return study.get_trials()


_RUNNING_WITH_WORKER = sa.text(
    "SELECT t.trial_id, a.value_json FROM trials t JOIN trial_user_attributes a "
    "ON a.trial_id = t.trial_id AND a.key = 'worker' WHERE t.state = 'RUNNING'"
)


def _wait(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            pytest.fail("workers did not finish in time")


def test_no_run_creates_the_campaign_and_its_budgets_without_running_a_trial(postgres_url):
    result = _create(postgres_url)
    assert result.exit_code == 0, result.output
    assert "rcutune worker --study vm-2" in result.output
    for w in WORKLOADS:
        with _study(postgres_url, w) as study:
            assert study.user_attrs["budget"] == BUDGET
            assert study.get_trials() == []
    assert _create(postgres_url, trials=4).exit_code == 0  # again: the budget grows by --trials
    with _study(postgres_url, "steady") as study:
        assert study.user_attrs["budget"] == BUDGET + 4


def test_four_workers_spend_the_budget_exactly_and_retry_the_trial_of_one_killed_with_kill_9(postgres_url, tmp_path):
    assert _create(postgres_url).exit_code == 0
    procs = [_worker(postgres_url, tmp_path / f"worker-{i}.out") for i in range(4)]
    pids = {p.pid: p for p in procs}
    engine = sa.create_engine(postgres_url)
    victim = None
    try:
        while victim is None and all(p.poll() is None for p in procs):
            with engine.connect() as conn:
                done = conn.execute(sa.text("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")).scalar()
                running = conn.execute(_RUNNING_WITH_WORKER).all()
            for trial_id, worker in running:
                pid = int(json.loads(worker).rpartition(":")[2])
                if done >= 2 and pid in pids:  # midway: some trials done, this one mid-simulation
                    os.killpg(pid, signal.SIGSTOP)  # freeze it, then make sure it is still on that trial
                    with engine.connect() as conn:
                        state = conn.execute(
                            sa.text("SELECT state FROM trials WHERE trial_id = :id"), {"id": trial_id}
                        ).scalar()
                    if state == "RUNNING":
                        victim = (pids[pid], json.loads(worker))
                        break
                    os.killpg(pid, signal.SIGCONT)
            time.sleep(0.02)
        assert victim is not None, "no worker was seen running a trial"
        process, killed_worker = victim
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        others = [p for p in procs if p is not process]
        _wait(others, timeout=150)
    finally:
        engine.dispose()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    outputs = [(tmp_path / f"worker-{i}.out").read_text() for i in range(4)]
    assert all(p.returncode == 0 for p in others), outputs

    retried = False
    for w in WORKLOADS:
        trials = _trials(postgres_url, w)
        states = [t.state for t in trials]
        assert states.count(TrialState.COMPLETE) == BUDGET, (w, states)
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states, "\n".join(
            map(
                str,
                [
                    (
                        t.number,
                        t.state.name,
                        t.params,
                        t.user_attrs.get("worker"),
                        t.user_attrs.get("retry_of"),
                        t.system_attrs,
                    )
                    for t in trials
                ]
                + outputs,
            )
        )
        numbers = [t.number for t in trials]
        assert len(numbers) == len(set(numbers))
        complete = [json.dumps(t.params, sort_keys=True) for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == len(set(complete)), "no design point ran twice"
        for t in trials:
            if t.state == TrialState.FAIL:  # only the killed worker's trial fails, by its heartbeat
                assert t.user_attrs["worker"] == killed_worker
                retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
                assert [r.state for r in retries] == [TrialState.COMPLETE]
                assert t.params.items() <= retries[0].params.items()  # it may have died mid-suggestion
                assert retries[0].user_attrs["worker"] != t.user_attrs["worker"]
                retried = True
    assert retried, "the killed worker's trial was failed and run again"


def test_a_study_lock_the_server_ended_is_seen_dead_and_releases_quietly(postgres_url):
    # A restart ends the lock's session while pooled connections reconnect without a word: the planner
    # asks the lock itself (`alive()`), and releasing a dead lock raises nothing.
    from rcutune.tuner.search._worker import _StudyLock

    engine = sa.create_engine(postgres_url)
    try:
        conn = engine.connect()
        lock = _StudyLock(conn, conn.begin())
        assert lock.alive()
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert not lock.alive() and not lock.alive()
        lock()  # the objective releases it once its trial runs: no PendingRollbackError
        conn.close()
    finally:
        engine.dispose()


def test_a_trial_left_running_without_any_heartbeat_is_failed_after_the_grace_period_and_retried(
    postgres_url, tmp_path
):
    # A worker killed between asking for its trial and its first heartbeat leaves exactly this.
    assert _create(postgres_url, trials=2, workloads=("steady",)).exit_code == 0
    with _study(postgres_url, "steady") as study:
        orphan = study.ask()
    worker = _worker(postgres_url, tmp_path / "worker.out")
    _wait([worker], timeout=60)
    assert worker.returncode == 0, (tmp_path / "worker.out").read_text()
    trials = _trials(postgres_url, "steady")
    assert trials[orphan.number].state == TrialState.FAIL
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2
    assert TrialState.RUNNING not in [t.state for t in trials]


_RUNNING_MID_PROTOCOL = sa.text(
    "SELECT t.number FROM trials t WHERE t.state = 'RUNNING' AND NOT EXISTS (SELECT 1 FROM trial_user_attributes a "
    "WHERE a.trial_id = t.trial_id AND a.key = 'low_fidelity')"
)


def test_a_worker_stopped_with_sigterm_hands_its_trial_back_at_once(postgres_url, tmp_path):
    assert _create(postgres_url, trials=3, workloads=("steady",)).exit_code == 0
    worker = _worker(postgres_url, tmp_path / "worker.out")
    engine = sa.create_engine(postgres_url)
    try:
        # The signal must land inside a trial: freeze the worker while a trial runs and none of its result
        # is stored yet (storing starts with `low_fidelity`, the tell comes after), check that it is still
        # so, and signal it frozen; it handles the signal first thing when it moves again.
        stopped = None
        deadline = time.monotonic() + 120
        while stopped is None and time.monotonic() < deadline and worker.poll() is None:
            with engine.connect() as conn:
                seen = conn.execute(_RUNNING_MID_PROTOCOL).scalars().all()
            if seen:
                os.killpg(worker.pid, signal.SIGSTOP)
                with engine.connect() as conn:
                    still = conn.execute(_RUNNING_MID_PROTOCOL).scalars().all()
                if still:
                    stopped = still[0]
                    worker.send_signal(signal.SIGTERM)
                os.killpg(worker.pid, signal.SIGCONT)
            time.sleep(0.02)
        assert stopped is not None, "the worker was never seen running a trial"
        assert worker.wait(timeout=60) == 130
    finally:
        engine.dispose()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    trials = {t.number: t for t in _trials(postgres_url, "steady")}
    assert trials[stopped].state == TrialState.FAIL, (tmp_path / "worker.out").read_text()
    assert [t.state for t in trials.values() if t.user_attrs.get("retry_of") == stopped] == [TrialState.WAITING]
    assert TrialState.RUNNING not in [t.state for t in trials.values()]


def test_every_command_works_on_postgresql(postgres_url, tmp_path):
    runner = CliRunner()
    study = runner.invoke(
        app, ["study", *TINY, "--storage", postgres_url, "--trials", "10", "--study", "tiny", "--workload", "steady"]
    )
    assert study.exit_code == 0, study.output
    listing = runner.invoke(app, ["studies", "--storage", postgres_url])
    assert listing.exit_code == 0 and listing.output.startswith("tiny: vm-2, kernel 6.18")
    report = runner.invoke(
        app, ["report", "tiny", "--storage", postgres_url, "--out", str(tmp_path), "--confirm-seeds", "1"]
    )
    assert report.exit_code == 0, report.output
    assert (tmp_path / "vm-2" / "tiny" / "recommendation.json").exists()
    recommend = runner.invoke(
        app,
        [
            "recommend",
            "--hardware",
            "vm-2",
            "--storage",
            postgres_url,
            "--study",
            "tiny",
            "--json",
            "--confirm-seeds",
            "1",
        ],
    )
    assert recommend.exit_code == 0, recommend.output
    assert json.loads(recommend.output)["campaign"] == "tiny"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_a_single_writer_study_refuses_a_campaign_whose_workers_are_running(postgres_url):
    assert _create(postgres_url, trials=2, workloads=("steady",)).exit_code == 0
    engine = sa.create_engine(postgres_url)
    with _study(postgres_url, "steady", heartbeat_interval=1) as study:
        trial = study.ask()
        study._storage.record_heartbeat(trial._trial_id)  # as a live worker does
        with engine.connect() as conn:
            before = conn.execute(sa.text("SELECT count(*), max(trial_id) FROM trials")).one()
        result = CliRunner().invoke(
            app, ["study", *TINY, "--storage", postgres_url, "--trials", "2", "--workload", "steady"]
        )
        assert result.exit_code == 2
        assert "running in rcutune worker processes" in result.output and "Traceback" not in result.output
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*), max(trial_id) FROM trials")).one() == before
        assert study.get_trials()[0].state == TrialState.RUNNING
    engine.dispose()


@pytest.mark.parametrize(
    ("setup", "args", "named"),
    [
        ("none", ["--storage", "sqlite:///{tmp}/w.db"], "needs a database server"),
        ("none", [], "no campaign named 'vm-2'"),
        ("run", [], "has no trial budget"),
        ("budget", ["--grace-period", "5", "--heartbeat-interval", "5"], "must be longer than --heartbeat-interval"),
    ],
)
def test_worker_bad_input_is_one_line_and_exit_2(postgres_url, tmp_path, setup, args, named):
    if setup == "run":
        assert (
            CliRunner()
            .invoke(app, ["study", *TINY, "--storage", postgres_url, "--trials", "1", "--workload", "steady"])
            .exit_code
            == 0
        )
    elif setup == "budget":
        assert _create(postgres_url, trials=1, workloads=("steady",)).exit_code == 0
    args = [a.format(tmp=tmp_path) for a in args]
    storage = [] if "--storage" in args else ["--storage", postgres_url]
    result = CliRunner().invoke(app, ["worker", "--study", "vm-2", *storage, *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("error: ")
    assert not (tmp_path / "w.db").exists()


def test_an_interrupt_stops_a_heartbeat_thread_optuna_left_running():
    """The SIGTERM test once saw a worker say "interrupted" and never end: an interrupt inside the
    start of a trial's heartbeat thread (not a daemon) leaves it beating, and the interpreter waits."""
    import threading

    import typer
    from optuna.storages._heartbeat import HeartbeatThread

    from rcutune.tuner.cli._common import user_errors

    class Beats:
        def get_heartbeat_interval(self):
            return 0.05

        def record_heartbeat(self, trial_id):
            pass

    beating = HeartbeatThread(1, Beats())
    beating.start()
    with pytest.raises(typer.Exit) as ended, user_errors():
        raise KeyboardInterrupt
    assert ended.value.exit_code == 130
    assert not any("_record_heartbeat" in t.name for t in threading.enumerate())


def test_a_trial_already_retried_is_not_queued_a_second_time():
    # A worker stopped with SIGTERM hands its trial back; if another worker had found that trial stale
    # and queued its retry already, a second copy would wait for ever once the budget is spent.
    from rcutune.tuner.search._stored import queue_retry

    study = optuna.create_study()
    trial = study.ask({"n_per_cpu": optuna.distributions.IntDistribution(0, 64)})
    trial.set_user_attr("batch", 0)
    trial.set_user_attr("slot", 3)
    study.tell(trial, state=TrialState.FAIL)
    failed = study.trials[0]
    assert queue_retry(study, failed)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs) for t in waiting] == [
        (failed.params, {"batch": 0, "slot": 3, "retry_of": 0})
    ]
    assert not queue_retry(study, failed)  # the retry exists: nothing more is queued
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
