"""Many machines on one campaign: `rcutune worker` processes sharing its studies through a database server.

`rcutune study ... --no-run` stores each study's budget (complete plus pruned trials) in the Optuna
study's `user_attrs`. A worker that finds a study with no trial waiting and none running plans the
next batch (`_protocol.plan_batch`) and queues it; workers then take the queued trials one at a
time inside `study.optimize`, so Optuna records a heartbeat while each runs. A worker that stops
beating (killed, cut off) has its trial failed by the next worker that looks, and the trial's
parameters queued again (`RetryHeartbeatStaleTrialCallback`). Every trial a worker creates (planned,
retried) is created under a row lock on the study's `rcutune_studies` row, and taking a queued
trial holds it too until the trial is RUNNING: trial numbers stay unique, the complete and pruned
trials end at exactly the budget, and the batches are those `rcutune study` would plan.

A database server that restarts or stops for a while is waited for (`storage.Reconnect`, through
`ReconnectingStorage`): every operation is retried with bounded backoff until the server is back,
or until the outage outlasts `db_timeout_s` (then `storage.DatabaseUnreachable`). The row lock dies
with the server, so what it guards is also made safe without it:

- a trial created twice (a batch planned by two workers, a retry queued twice) is a redundant copy:
  of the trials that share a batch, a slot and the trial they retry, only the lowest-numbered
  runs; another is failed at once (`fail_reason` "redundant: ...") and never retried;
- a trial Optuna created because no queued one was left (another worker took it) is failed at once
  ("unplanned: ...");
- a trial whose worker was cut off for longer than the grace period was failed and queued again by
  another worker: its first worker drops its result instead of telling it (the retry counts);
- a tell whose first attempt committed before the connection dropped is recognised, not repeated.
- a planner asks its lock's own connection before each trial it queues (`_StudyLock.alive()`): a
  fast restart ends the lock while the storage's pooled connections reconnect without an error, and
  the rest of a batch written after another worker planned the next one would run on top of the
  budget.

So each slot of a batch ends complete or pruned once, however the server and the workers fail.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from rcutune import sim, storage

from .._errors import UserError
from ._campaign import CampaignDefinition, stored_definition
from ._pool import SimTask, SimulationPool
from ._protocol import (
    MAX_FAILURES_IN_A_ROW,
    SimJob,
    drive,
    fail_trial,
    finish_trial,
    plan_batch,
    retry_attrs,
    seen_before,
    start_trial,
    trial_protocol,
)
from ._reconnecting import ReconnectingStorage, open_reconnecting
from ._stored import (
    BUDGET_ATTR,
    GRACE_PERIOD_S,
    PLANNED,
    SAMPLER_ATTR,
    SPENT,
    fail_and_retry,
    queue_retry,
    stored_trial,
    trial_id,
)

HEARTBEAT_INTERVAL_S = 10
MAX_RETRIES = 3
"""A trial whose worker dies this many times is left failed (the budget is met by other trials)."""


class TrialFailed(Exception):
    """A simulation of the trial failed or timed out; the trial is failed, the worker goes on."""


class NotToRun(Exception):
    """The trial this worker was given is a redundant copy or was never planned; it is failed, not run."""


@dataclass(frozen=True)
class WorkerRequest:
    """What `rcutune worker` was asked to do; see `run_worker`."""

    campaign: str
    storage_url: str | None = None
    jobs: int = 1
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S
    grace_period_s: int = GRACE_PERIOD_S
    sim_timeout_s: float | None = None  # None: 30 wall seconds per simulated second, at least 30
    db_timeout_s: float = storage.DEFAULT_DB_TIMEOUT_S  # an outage of the database server this long ends the worker


@dataclass
class WorkerResult:
    """What one worker did: trials it finished per workload, and studies it gave up on."""

    campaign: str
    storage_url: str
    finished: dict[str, int] = field(default_factory=dict)  # workload -> complete or pruned trials it ran
    failed: dict[str, int] = field(default_factory=dict)  # workload -> trials that failed in this worker
    aborted: dict[str, str] = field(default_factory=dict)  # workload -> why this worker stopped on it
    dropped: dict[str, int] = field(default_factory=dict)  # workload -> results dropped: another worker retried them
    wall_seconds: float = 0.0


@dataclass
class _Study:
    workload: sim.WorkloadProfile
    record_id: int
    study: optuna.Study
    budget: int
    sampler: str
    failures_in_a_row: int = 0


@dataclass(frozen=True)
class _Counts:
    spent: int  # complete and pruned
    running: int
    waiting: int


_RETRY_SYSTEM_ATTRS = ("fixed_params", "failed_trial", "retry_history")
"""What a retry keeps of its failed trial's system attributes: the queued point and Optuna's retry
history, not what the failed run stored (its constraints, which the retry sets anew)."""


class _RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial, keeping rcutune's labels and naming the trial it retries."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = retry_attrs(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k in _RETRY_SYSTEM_ATTRS}
        super().__call__(study, trial)


def run_worker(
    request: WorkerRequest,
    on_trial: Callable[[str, FrozenTrial, str | None], None] | None = None,
    on_outage: Callable[[str], None] | None = None,
) -> WorkerResult:
    """Run trials of every study of a campaign until each study's budget is spent.

    Several workers, on one machine or many, may run this at once against one database server.
    Once the campaign is found, a server that goes away is waited for, up to `db_timeout_s` per
    outage; `on_outage` receives one line when an outage begins. `on_trial` receives each trial this
    worker ended, with a note when its result was dropped or it was not run.

    Raises:
        UserError, storage.StorageError: SQLite storage, unknown campaign, a campaign without budgets
            (not created with --no-run), one a single-writer `rcutune study` is running, or a server
            that cannot be reached at the start.
        storage.DatabaseUnreachable: the server stayed away longer than `db_timeout_s`.
    """
    start = time.monotonic()
    url = storage.resolve_url(request.storage_url)
    if storage.sqlite_path(url) is not None or url.startswith("sqlite"):
        raise UserError(
            f"rcutune worker needs a database server that several processes write at once "
            f"(--storage postgresql+psycopg://...), not {url}; on one machine, "
            "rcutune study --jobs J runs a SQLite campaign in parallel"
        )
    # A session of ours idle inside a transaction for a grace period belongs to a worker that froze or
    # was cut off holding row locks: the server ends it (the others' waits end; its trial goes stale).
    idle = float(request.grace_period_s)
    db = storage.open_database(url, create=False, idle_in_transaction_s=idle)  # no server now: bad input, exit 2
    reconnect = storage.Reconnect(url, request.db_timeout_s, report=on_outage, who="worker")
    rdb = None
    try:
        definition, campaign_id, records = reconnect.call(_load_campaign, db, url, request.campaign)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            rdb = open_reconnecting(
                url,
                reconnect,
                engine_kwargs=storage.engine_kwargs(url, idle_in_transaction_s=idle),
                skip_table_creation=True,
                heartbeat_interval=request.heartbeat_interval_s,
                grace_period=request.grace_period_s,
                heartbeat_stale_trial_callback=_RetryStale(max_retry=MAX_RETRIES),
            )
        workloads = {w.name: w for w in definition.workloads}
        studies = []
        for record_id, workload, optuna_name in records:
            study = optuna.load_study(study_name=optuna_name, storage=rdb, sampler=PLANNED)
            if BUDGET_ATTR not in study.user_attrs:
                raise UserError(
                    f"study '{optuna_name}' has no trial budget; create the campaign for workers with "
                    f"rcutune study --hardware {definition.hardware.name} --study {request.campaign} "
                    "--storage URL --trials T --no-run"
                )
            studies.append(
                _Study(
                    workloads[workload],
                    record_id,
                    study,
                    int(study.user_attrs[BUDGET_ATTR]),
                    study.user_attrs.get(SAMPLER_ATTR, "tpe"),
                )
            )
        result = WorkerResult(campaign=request.campaign, storage_url=url)
        timeout = request.sim_timeout_s or max(30.0, 30.0 * definition.settings.max_seconds)
        with SimulationPool(request.jobs, timeout) as pool:
            _Fleet(db, rdb, reconnect, campaign_id, definition, studies, pool, result, request, on_trial).run()
        result.wall_seconds = time.monotonic() - start
        return result
    except storage.DatabaseUnreachable:
        if reconnect.stopped:  # Ctrl-C or SIGTERM while the server was away: an interrupt, not a failure
            raise KeyboardInterrupt from None
        raise
    finally:
        if rdb is not None:
            _quietly(rdb.remove_session)
            _quietly(rdb.engine.dispose)
        _quietly(db.close)


def _quietly(close: Callable[[], None]) -> None:
    """Close something whose connections may be dead (the server went away): nothing to report."""
    try:
        close()
    except Exception as err:
        if not storage.connection_lost(err):
            raise


def _load_campaign(
    db: storage.Database, url: str, name: str
) -> tuple[CampaignDefinition, int, list[tuple[int, str, str]]]:
    with db.session() as session:
        has_tables = storage.ensure_schema(db.engine, create=False) is not None
        campaign = storage.find_campaign(session, name) if has_tables else None
        if campaign is None:
            known = ", ".join(c.name for c in storage.list_campaigns(session)) if has_tables else ""
            raise UserError(
                f"no campaign named '{name}' in {url}{f' (campaigns: {known})' if known else ''}; "
                f"create it with rcutune study --hardware H --study {name} --no-run"
            )
        if campaign.owner and storage.owner_alive(campaign.owner, campaign.owner_heartbeat_at):
            raise storage.CampaignBusy(
                f"campaign '{campaign.name}' is being run by {campaign.owner} (rcutune study); wait for it to finish"
            )
        return (
            stored_definition(campaign),
            campaign.id,
            [(s.id, s.workload_name, s.optuna_study_name) for s in campaign.studies],
        )


class _Fleet:
    """One worker's loop over the studies of a campaign."""

    def __init__(
        self,
        db: storage.Database,
        rdb: ReconnectingStorage,
        reconnect: storage.Reconnect,
        campaign_id: int,
        d: CampaignDefinition,
        studies: list[_Study],
        pool: SimulationPool,
        result: WorkerResult,
        request: WorkerRequest,
        on_trial: Callable[[str, FrozenTrial, str | None], None] | None,
    ) -> None:
        self.db, self.rdb, self.d, self.studies, self.pool, self.result = db, rdb, d, studies, pool, result
        self.reconnect = reconnect
        self.campaign_id = campaign_id
        self.request = request
        self.on_trial = on_trial or (lambda workload, trial, note: None)
        self.memo: dict[tuple, sim.Metrics] = {}  # simulate() is pure: (policy, seed, seconds) -> metrics
        self.unbeaten: dict[int, float] = {}  # RUNNING trial id without any heartbeat -> first seen (monotonic)

    def run(self) -> None:
        last_look = -float("inf")
        while True:
            # Every heartbeat interval, look around: the campaign's owner, the budgets (`rcutune study
            # ... --no-run` may add to them meanwhile) and, in every study, workers that stopped beating
            # (Optuna sweeps the study it asks in before each trial; this covers the others).
            if time.monotonic() - last_look >= self.request.heartbeat_interval_s:
                self._check_no_single_writer()
                for s in self.studies:
                    s.budget = int(s.study.user_attrs.get(BUDGET_ATTR, s.budget))
                self._sweep()
                last_look = time.monotonic()
            live = [s for s in self.studies if s.workload.name not in self.result.aborted]
            counts = {id(s): self._counts(s) for s in live}
            if all(counts[id(s)].spent >= s.budget for s in live):
                for s in self.studies:  # copies queued by an outage's double write would wait forever
                    with self._ask_lock(s):
                        self._fail_redundant_waiting(s)
                return
            ready = [s for s in live if self._actionable(s, counts[id(s)])]
            if not ready:  # every remaining trial is running elsewhere: watch for workers that stop beating
                time.sleep(min(1.0, self.request.heartbeat_interval_s))
                continue
            self._run_one(max(ready, key=lambda s: s.budget - counts[id(s)].spent))

    @staticmethod
    def _actionable(s: _Study, c: _Counts) -> bool:
        """A queued trial to take, or a finished batch and room in the budget for the next one."""
        return c.waiting > 0 or (c.running == 0 and c.spent < s.budget)

    def _check_no_single_writer(self) -> None:
        """Stop if a `rcutune study` process took the campaign meanwhile (its trials have no heartbeats)."""

        def owner() -> tuple[str | None, object]:
            with self.db.session() as session:
                return tuple(
                    session.execute(
                        sa.select(storage.Campaign.owner, storage.Campaign.owner_heartbeat_at).where(
                            storage.Campaign.id == self.campaign_id
                        )
                    ).one()
                )

        owner, beat_at = self.reconnect.call(owner)
        if owner and storage.owner_alive(owner, beat_at):
            raise storage.CampaignBusy(
                f"campaign '{self.result.campaign}' is being run by {owner} (rcutune study); "
                "this worker stops until it finishes"
            )

    @staticmethod
    def _counts(s: _Study) -> _Counts:
        trials = s.study.get_trials(deepcopy=False, states=(*SPENT, TrialState.RUNNING, TrialState.WAITING))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        return _Counts(len(trials) - running - waiting, running, waiting)

    def _sweep(self) -> None:
        """Fail and queue again the trials of workers that stopped beating, in every study.

        Under the study's lock, like every trial this worker creates: Optuna numbers a new trial by
        counting the committed ones, so two created at once could share a number.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for s in self.studies:
                with self._ask_lock(s):
                    optuna.storages.fail_stale_trials(s.study)
                    self._sweep_unbeaten(s)
                    self._fail_redundant_waiting(s)

    def _fail_redundant_waiting(self, s: _Study) -> None:
        """Fail the queued trials that are redundant copies (see `not_to_run`), so none waits for ever once
        the slot they copy is done; the caller holds the study's lock."""
        trials = s.study.get_trials(deepcopy=False)
        for t in trials:
            reason = not_to_run(trials, t.number, t.user_attrs) if t.state == TrialState.WAITING else None
            if reason is None or not reason.startswith("redundant"):
                continue
            tid = trial_id(self.rdb, s.study, t.number)
            self.rdb.set_trial_user_attr(tid, "fail_reason", reason)
            try:
                self.rdb.set_trial_state_values(tid, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass

    def _sweep_unbeaten(self, s: _Study) -> None:
        """A worker killed between asking for a trial and its first heartbeat leaves a RUNNING trial that
        Optuna never calls stale; one that stays so for a grace period (on this worker's clock) is.

        Not within a grace period after this worker lost the database, or after the server started:
        no worker could beat meanwhile."""
        if (
            self.reconnect.lost_within(self.request.grace_period_s)
            or self.reconnect.call(self.rdb.server_up_for) < self.request.grace_period_s
        ):
            self.unbeaten.clear()
            return
        running = s.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        ids = {trial_id(self.rdb, s.study, t.number): t for t in running}

        def beating_ids() -> set[int]:
            with self.rdb.engine.connect() as conn:
                return set(
                    conn.execute(
                        sa.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
                            sa.bindparam("ids", expanding=True)
                        ),
                        {"ids": list(ids)},
                    ).scalars()
                )

        beating = self.reconnect.call(beating_ids)
        now = time.monotonic()
        for tid in ids:
            if tid in beating:
                self.unbeaten.pop(tid, None)
                continue
            first = self.unbeaten.setdefault(tid, now)
            if now - first > self.request.grace_period_s:
                try:
                    if self.rdb.set_trial_state_values(tid, TrialState.FAIL):
                        callback = self.rdb.get_heartbeat_stale_trial_callback()
                        if callback is not None:
                            callback(s.study, copy.deepcopy(self.rdb.get_trial(tid)))
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass
                self.unbeaten.pop(tid, None)

    @contextmanager
    def _ask_lock(self, s: _Study) -> Iterator[_StudyLock]:
        """Hold the study's row lock; yields it (call it to release, once the trial is RUNNING).

        The lock dies with its connection when the server goes away; the caller sees that in
        `self.reconnect.outages` or, when the storage's pooled connections reconnected without an
        error (a fast restart), in `alive()` (and what it guards is safe without it: see the module
        docstring).
        """

        def acquire() -> tuple[sa.Connection, sa.RootTransaction]:
            conn = self.db.engine.connect()
            try:
                tx = conn.begin()
                conn.execute(
                    sa.select(storage.StudyRecord.id).where(storage.StudyRecord.id == s.record_id).with_for_update()
                )
            except BaseException:
                _quietly(conn.close)
                raise
            return conn, tx

        conn, tx = self.reconnect.call(acquire)
        try:
            yield _StudyLock(conn, tx)
        finally:
            if tx.is_active:
                _quietly(tx.rollback)
            _quietly(conn.close)

    def _run_one(self, s: _Study) -> None:
        objective = _Objective(self, s)
        with self._ask_lock(s) as lock:
            held = self.reconnect.outages
            c = self._counts(s)  # again, now that no other worker can ask
            if not self._actionable(s, c) or self.reconnect.outages != held or not lock.alive():
                return  # nothing to do, or the lock died with the connection: look again
            if c.waiting == 0:
                # Planning writes several trials under the lock, each without waiting for a lost server:
                # after an outage the lock is gone, and another worker may be planning this very batch.
                try:
                    with self.reconnect.no_wait():
                        self._plan(s, min(s.budget - c.spent, self.d.settings.batch_size), lock.alive)
                except storage.DatabaseUnreachable:
                    self.reconnect.raise_if_gave_up()
                    if self.reconnect.stopped:
                        raise KeyboardInterrupt from None
                    return  # what was queued before the outage runs; later batches fill the budget
                if self.reconnect.outages != held or not lock.alive():
                    return  # the lock died while planning: what was queued runs, the rest is planned again
            objective.release = lock
            # The queued trial Optuna is about to take (the lowest-numbered; no other worker takes one
            # while we hold the lock): an interrupt before our objective starts hands that one back.
            queued = s.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            objective.expected = min((t.number for t in queued), default=None)
            try:
                s.study.optimize(objective, n_trials=1, catch=(TrialFailed, NotToRun))
            except Exception:
                # Optuna may replace our exception with its own when the clean-up of a failed tell fails too.
                self.reconnect.raise_if_gave_up()
                if self.reconnect.stopped:  # interrupted while the server was away
                    lock()
                    objective.hand_back()
                    raise KeyboardInterrupt from None
                if not objective.handed_over():
                    raise
                self.result.dropped[s.workload.name] = self.result.dropped.get(s.workload.name, 0) + 1
                dropped = stored_trial(self.rdb, s.study, objective.number)  # type: ignore[arg-type]
                self.on_trial(
                    s.workload.name, dropped, "dropped: another worker declared it stale meanwhile and runs it again"
                )
                return
            except BaseException:
                lock()
                objective.hand_back()
                raise
        if objective.number is None:
            return
        trial = stored_trial(self.rdb, s.study, objective.number)
        w = s.workload.name
        if objective.not_run is not None:
            self.on_trial(w, trial, objective.not_run)
            return
        if trial.state == TrialState.FAIL:
            self.result.failed[w] = self.result.failed.get(w, 0) + 1
            s.failures_in_a_row += 1
            if s.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                self.result.aborted[w] = (
                    f"{s.failures_in_a_row} trials in a row failed, the last with: "
                    f"{trial.user_attrs.get('fail_reason', 'failed')}"
                )
        elif trial.state in SPENT:
            s.failures_in_a_row = 0
            self.result.finished[w] = self.result.finished.get(w, 0) + 1
        self.on_trial(w, trial, None)

    def _plan(self, s: _Study, size: int, locked: Callable[[], bool]) -> None:
        """Queue the study's next batch (the caller holds its lock, and every earlier trial is told).

        Stops when the lock is gone (`locked()`): after a server restart another worker may plan the
        next batch, numbered after the slots written so far, and the rest of this one would then
        run on top of the budget."""
        trials = s.study.get_trials(deepcopy=False)
        refine = s.sampler == "tpe" and "n_per_cpu" in self.d.space.names()
        for planned in plan_batch(trials, self.d, s.workload.name, size=size, sampler=s.sampler, refine=refine):
            if not locked():
                return
            s.study.enqueue_trial(planned.params, user_attrs=planned.attrs)

    def simulate(
        self, number: int, workload: sim.WorkloadProfile, policy: sim.Policy, jobs: list[SimJob]
    ) -> list[sim.Metrics]:
        """Run (seed, seconds) simulations of one policy in the pool; raises TrialFailed on the first failure."""
        out: dict[int, sim.Metrics] = {}
        for i, (seed, seconds) in enumerate(jobs):
            known = self.memo.get((policy, seed, seconds))
            if known is not None:
                out[i] = known
            else:
                self.pool.submit(
                    SimTask((number, i), self.d.hardware, workload, policy, seconds, seed, self.d.kernel),
                    priority=(number, i),
                )
        while len(out) < len(jobs):
            for result in self.pool.collect(timeout=1.0):
                _, i = result.key  # type: ignore[misc]
                if result.error is not None:
                    self.pool.cancel_all()
                    raise TrialFailed(result.error)
                assert result.metrics is not None
                out[i] = result.metrics
                self.memo[(policy, *jobs[i])] = result.metrics
        return [out[i] for i in range(len(jobs))]


@dataclass
class _StudyLock:
    """A study's row lock, held by an open transaction on a connection of its own."""

    conn: sa.Connection
    tx: sa.RootTransaction

    def __call__(self) -> None:
        """Release it."""
        if self.tx.is_active:
            _quietly(self.tx.commit)

    def alive(self) -> bool:
        """Whether it still holds: its connection still answers. A server restart ends it while the
        storage's pooled connections reconnect at their next checkout without raising, so the
        reconnect count alone does not show it."""
        if not self.tx.is_active:
            return False
        try:
            self.conn.execute(sa.text("SELECT 1"))
        except sa.exc.DBAPIError:
            _quietly(self.tx.rollback)  # the transaction is gone with its connection: nothing to release
            return False
        return True


class _Objective:
    """One trial as `study.optimize` runs it: the trial protocol, its simulations in this worker's pool."""

    def __init__(self, fleet: _Fleet, s: _Study) -> None:
        self.fleet, self.s = fleet, s
        self.release: Callable[[], None] = lambda: None
        self.expected: int | None = None  # the queued trial Optuna should give this objective
        self.number: int | None = None
        self.not_run: str | None = None  # why the trial was failed without running (redundant, unplanned)
        self.ran = False  # the protocol ran to its end: what is left is storing the result and the tell
        self.finished_elsewhere = False  # a write found the trial finished: another worker failed it as stale

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.number = trial.number
        self.release()  # the trial is RUNNING: other workers may count it and ask
        try:
            return self._run(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.finished_elsewhere = True
            raise
        except KeyboardInterrupt:
            self.fleet.reconnect.stop_waiting()  # Optuna's tell follows: it must not wait out an outage
            raise
        except Exception as err:
            if not storage.interrupted(err):
                raise
            self.fleet.reconnect.stop_waiting()  # an interrupt a driver reported as its own error
            raise KeyboardInterrupt from None

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        d, s, fleet = self.fleet.d, self.s, self.fleet
        trials = s.study.get_trials(deepcopy=False)
        reason = not_to_run(trials, trial.number, trial.user_attrs)
        if reason is not None:
            self.not_run = reason
            trial.set_user_attr("fail_reason", reason)
            raise NotToRun(reason)
        trial.set_user_attr("worker", storage.this_owner())
        policy = start_trial(trial, d)
        told = [t for t in trials if t.state in SPENT]
        protocol = trial_protocol(
            d, s.workload, trial.user_attrs.get("design"), seen_before(told, int(trial.user_attrs.get("batch", -1)), d)
        )
        simulations = [0]

        def simulate(jobs: list[SimJob]) -> list[sim.Metrics]:
            simulations[0] += sum((policy, *j) not in fleet.memo for j in jobs)
            return fleet.simulate(trial.number, s.workload, policy, jobs)

        try:
            run = drive(protocol, simulate)
        except TrialFailed as err:
            fail_trial(trial, str(err), simulations[0])
            raise
        self.ran = True
        state, values, _, _ = finish_trial(trial, d, s.workload, run, simulations[0])
        if state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"hopeless at low fidelity against trial {run.pruned_by}")
        assert values is not None
        return values

    def handed_over(self) -> bool:
        """Whether `study.optimize` failed because another worker had failed this trial as stale (and
        queued it again): its result is dropped, the retry counts."""
        if self.number is None or not (self.ran or self.finished_elsewhere):
            return False
        return stored_trial(self.fleet.rdb, self.s.study, self.number).state == TrialState.FAIL

    def hand_back(self) -> None:
        """After Ctrl-C or SIGTERM, the trial runs again in another worker: failed (if Optuna did not)
        and queued again under the study's lock, like every trial a worker creates.

        Without waiting for a server that is away: then its heartbeat stops, and another worker
        fails and queues it after the grace period."""
        number = self.number if self.number is not None else self.expected
        if number is None or self.not_run is not None:
            return
        fleet, study = self.fleet, self.s.study
        try:
            with fleet.reconnect.no_wait(), fleet._ask_lock(self.s):
                trial = stored_trial(fleet.rdb, study, number)
                if self.number is None and (trial.state != TrialState.RUNNING or "worker" in trial.user_attrs):
                    return  # stopped before Optuna took it from the queue, or another worker has it
                if fail_and_retry(fleet.rdb, study, number, "interrupted: the worker was stopped"):
                    return  # it was still RUNNING (stopped before Optuna could fail it)
                trial = stored_trial(fleet.rdb, study, number)
                if trial.state == TrialState.FAIL:  # failed by Optuna on the interrupt, or by a worker's sweep
                    queue_retry(study, trial)  # what it had chosen (or was queued with), even if stopped mid-suggestion
        except storage.DatabaseUnreachable:
            pass


def not_to_run(trials: Sequence[FrozenTrial], number: int, attrs: dict[str, Any]) -> str | None:
    """Why trial `number` (user attributes `attrs`), just taken from the queue, must not run; None when it should.

    Redundant: an earlier trial has the same batch, slot and retried trial (a plan or a retry
    written twice). Unplanned: it carries no batch (Optuna made it because the queue was empty).
    """
    if "batch" not in attrs:
        return "unplanned: no queued trial was left when this worker asked (another worker took it)"
    if "slot" not in attrs:
        return None  # planned before slots were recorded

    def key(a: dict[str, Any]) -> tuple:
        return a.get("batch"), a.get("slot"), a.get("retry_of")

    mine = key(attrs)
    first = min([t.number for t in trials if "slot" in t.user_attrs and key(t.user_attrs) == mine] + [number])
    if first < number:
        return f"redundant: a second copy of batch {mine[0]} slot {mine[1]} (trial #{first} is the one that runs)"
    return None
