"""Workers on a PostgreSQL server that restarts, stops for a while, or stays away; a worker cut off.

These tests own their server (a throwaway cluster) because they stop and restart it. What a
campaign must look like afterwards is `tests.support.workers.check_campaign`: nothing lost, no slot
of a batch run twice, nothing left running, every budget met exactly.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from rcutune.tuner.cli import app
from tests.support import postgres_server
from tests.support.study import TINY
from tests.support.workers import check_campaign, reported, start_worker, stop_all, wait_all

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
FAST_BEATS = ("--heartbeat-interval", "1", "--grace-period", "5")


@pytest.fixture(scope="module")
def cluster() -> Iterator[postgres_server.Cluster]:
    try:
        import psycopg  # noqa: F401

        context = postgres_server.throwaway_cluster()
        running = context.__enter__()
    except (postgres_server.NoPostgres, OSError, ImportError) as err:
        if os.environ.get("CI"):
            pytest.fail(f"these tests restart their own PostgreSQL server: {err}")
        pytest.skip(f"these tests restart their own PostgreSQL server: {err}")
    try:
        yield running
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def url(cluster) -> Iterator[str]:
    if not cluster.running:
        cluster.start()
    with postgres_server.fresh_database(cluster.url) as fresh:
        yield fresh


def create(url: str, campaign: str, trials: int, workloads: tuple[str, ...]) -> None:
    argv = ["study", *TINY, "--storage", url, "--study", campaign, "--trials", str(trials), "--no-run"]
    for w in workloads:
        argv += ["--workload", w]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output


def count_now(url: str, sql: str) -> int:
    """One count from the database now (0 while the server is away)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def spent(url: str) -> int:
    """Complete and pruned trials now."""
    return count_now(url, "SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')")


def workers_seen(url: str) -> int:
    """Workers that have taken a trial: each is past its start-up check."""
    return count_now(url, "SELECT count(DISTINCT value_json) FROM trial_user_attributes WHERE key = 'worker'")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


def outputs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in paths)


def test_four_workers_ride_out_a_fast_restart_and_a_20_s_stop_losing_and_running_twice_nothing(cluster, url, tmp_path):
    create(url, "outage", 14, ("steady", "bursty"))
    outs = [tmp_path / f"worker-{i}.out" for i in range(4)]
    errs = [tmp_path / f"worker-{i}.err" for i in range(4)]
    procs = [start_worker(url, "outage", outs[i], *FAST_BEATS, err=errs[i]) for i in range(4)]
    try:
        wait_until(lambda: spent(url) >= 4, 300, "4 trials are told")
        cluster.restart("fast")
        wait_until(lambda: spent(url) >= 10, 300, "10 trials are told")
        assert all(p.poll() is None for p in procs), outputs(outs + errs)
        cluster.stop("fast")
        time.sleep(20)
        cluster.start()
        assert wait_all(procs, 600), "workers did not finish in time"
    finally:
        stop_all(procs)
    assert [p.returncode for p in procs] == [0] * 4, outputs(outs + errs)
    check = check_campaign(url, "outage", reported("outage", [o.read_text() for o in outs]))
    assert (check.lost, check.duplicated, check.stuck_running, check.problems) == (0, 0, 0, []), outputs(outs + errs)
    assert check.trials == 28
    for err in errs:
        lines = err.read_text().splitlines()
        # The 20 s stop is one outage for every worker; the restart (a fraction of a second) is seen
        # only by a worker that had a statement in flight: the others reconnect without a word.
        assert 1 <= len(lines) <= 2, outputs(errs)
        assert all(
            line.startswith("worker: lost the database") and "reconnecting for up to 120 s" in line for line in lines
        ), outputs(errs)


def test_a_server_away_longer_than_db_timeout_ends_each_worker_with_exit_1_and_the_campaign_resumes_later(
    cluster, url, tmp_path
):
    create(url, "away", 12, ("steady",))
    outs = [tmp_path / f"worker-{i}.out" for i in range(2)]
    errs = [tmp_path / f"worker-{i}.err" for i in range(2)]
    procs = [start_worker(url, "away", outs[i], *FAST_BEATS, "--db-timeout", "6", err=errs[i]) for i in range(2)]
    try:
        # Both workers past their start-up check (which does not wait for a server that is away: a
        # worker still starting when the server stops exits 2, as `rcutune worker` on a wrong URL).
        wait_until(lambda: spent(url) >= 1 and workers_seen(url) == 2, 300, "a trial is told and both workers run")
        cluster.stop("fast")
        stopped = time.monotonic()
        assert wait_all(procs, 120), "workers did not give up"
        took = time.monotonic() - stopped
    finally:
        stop_all(procs)
        cluster.start()
    assert [p.returncode for p in procs] == [1, 1], outputs(outs + errs)
    assert took < 6 + 30, took  # the timeout, the last backoff (at most 5 s) and a busy machine's slack
    for err in errs:
        text = err.read_text()
        assert "Traceback" not in text, text
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "stayed unreachable for 6 s" in errors[0] and "this worker stops" in errors[0], text
        assert [line for line in text.splitlines() if not line.startswith("error:")] == [
            line for line in text.splitlines() if line.startswith("worker: lost the database")
        ], text
    # Back, the campaign resumes: the trials the two workers held are failed by their stale heartbeats
    # and run again.
    last = start_worker(url, "away", tmp_path / "last.out", *FAST_BEATS, err=tmp_path / "last.err")
    try:
        assert wait_all([last], 300), "the last worker did not finish"
    finally:
        stop_all([last])
    assert last.returncode == 0, outputs([tmp_path / "last.out", tmp_path / "last.err"])
    texts = [o.read_text() for o in outs + [tmp_path / "last.out"]]
    check = check_campaign(url, "away", reported("away", texts))
    assert (check.lost, check.duplicated, check.stuck_running, check.problems) == (0, 0, 0, []), "\n".join(texts)


_RUNNING_MID_PROTOCOL = sa.text(
    "SELECT t.trial_id, t.number, a.value_json FROM trials t "
    "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'worker' "
    "WHERE t.state = 'RUNNING' AND NOT EXISTS (SELECT 1 FROM trial_user_attributes f "
    "WHERE f.trial_id = t.trial_id AND f.key = 'low_fidelity')"
)


def running_mid_protocol(url: str, pid: int) -> tuple[int, int] | None:
    """(trial id, number) of a trial `pid` runs and has not started to store the result of, if any."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            for tid, number, worker in conn.execute(_RUNNING_MID_PROTOCOL):
                if json.loads(worker).rpartition(":")[2] == str(pid):
                    return tid, number
    finally:
        engine.dispose()
    return None


def state_of(url: str, tid: int) -> str:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT state FROM trials WHERE trial_id = :t"), {"t": tid}).scalar()
    finally:
        engine.dispose()


def test_a_worker_cut_off_longer_than_the_grace_period_drops_its_result_and_the_retry_counts(cluster, url, tmp_path):
    create(url, "cut", 8, ("steady",))
    outs = [tmp_path / "cut-a.out", tmp_path / "cut-b.out"]
    beats = ("--heartbeat-interval", "1", "--grace-period", "3")
    a = start_worker(url, "cut", outs[0], *beats)
    b = start_worker(url, "cut", outs[1], *beats)
    try:
        victim = None
        while victim is None:  # freeze `a` mid-trial: before it stores any result of it
            assert a.poll() is None and b.poll() is None, outputs(outs)
            if running_mid_protocol(url, a.pid) is not None:
                os.killpg(a.pid, signal.SIGSTOP)
                victim = running_mid_protocol(url, a.pid)  # still so, now that it cannot move
                if victim is None:
                    os.killpg(a.pid, signal.SIGCONT)
            time.sleep(0.02)
        tid, number = victim
        wait_until(lambda: state_of(url, tid) == "FAIL", 120, "the other worker fails the frozen worker's trial")
        os.killpg(a.pid, signal.SIGCONT)
        assert wait_all([a, b], 300), "workers did not finish"
    finally:
        stop_all([a, b])
    assert (a.returncode, b.returncode) == (0, 0), outputs(outs)
    assert (
        f"#{number} fail" in outs[0].read_text() and "dropped: another worker declared it stale" in outs[0].read_text()
    ), outputs(outs)
    check = check_campaign(url, "cut", reported("cut", [o.read_text() for o in outs]))
    assert (check.lost, check.duplicated, check.stuck_running, check.problems) == (0, 0, 0, []), outputs(outs)


def test_a_batch_queued_twice_runs_once_and_its_copies_are_failed_unrun(postgres_url, tmp_path):
    # What two workers that both found the study idle (their locks gone with a server that restarted)
    # would queue: the same batch twice.
    import optuna

    from rcutune import storage
    from rcutune.tuner.search import plan_batch, stored_definition

    create(postgres_url, "twice", 8, ("steady",))
    db = storage.open_database(postgres_url, create=False)
    with db.session() as session:
        d = stored_definition(storage.find_campaign(session, "twice"))
    db.close()
    rdb = optuna.storages.RDBStorage(postgres_url)
    study = optuna.load_study(study_name="twice/steady", storage=rdb)
    for _ in range(2):
        for planned in plan_batch([], d, "steady", size=4, sampler="tpe", refine=True):
            study.enqueue_trial(planned.params, user_attrs=planned.attrs)
    worker = start_worker(postgres_url, "twice", tmp_path / "w.out", *FAST_BEATS)
    try:
        assert wait_all([worker], 300), "the worker did not finish"
    finally:
        stop_all([worker])
    text = (tmp_path / "w.out").read_text()
    assert worker.returncode == 0, text
    trials = {t.number: t for t in study.get_trials()}
    rdb.engine.dispose()
    assert [trials[n].state.name for n in range(4, 8)] == ["FAIL"] * 4, text
    assert all(
        trials[n].user_attrs["fail_reason"].startswith(f"redundant: a second copy of batch 0 slot {n - 4}")
        for n in range(4, 8)
    )
    check = check_campaign(postgres_url, "twice", reported("twice", [text]))
    assert (check.trials, check.lost, check.duplicated, check.stuck_running, check.problems) == (8, 0, 0, 0, []), text
