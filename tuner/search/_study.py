"""`rcutune study`: create or resume a campaign and run its studies in this process.

This process is the only writer (Optuna advises one writer for SQLite); J worker processes run the
simulations. Each study runs batch after batch (`_protocol`): a batch's trials are asked together,
their protocols advance as their simulations come back, and the batch is told before the next one
is planned.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from rcutune import sim, storage

from .._errors import UserError
from ._campaign import (
    DEFAULT_SETTINGS,
    DEFAULT_TRIALS,
    OBJECTIVE_KINDS,
    QUICK_SETTINGS,
    QUICK_TRIALS,
    CampaignDefinition,
    check_resumable,
    make_seeds,
)
from ._pool import SimResult, SimTask, SimulationPool
from ._progress import NullProgress, ProgressSink, TrialOutcome
from ._protocol import (
    MAX_FAILURES_IN_A_ROW,
    SAMPLERS,
    SimJob,
    TrialRun,
    fail_trial,
    finish_trial,
    plan_batch,
    seen_before,
    start_trial,
    trial_protocol,
)
from ._space import build_search_space
from ._stored import fail_and_retry, finished, live_worker_trials, open_study, set_budgets, sweep_stale_trials

HEARTBEAT_EVERY_S = 10.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class StudyAborted(Exception):
    """A study stopped early because its trials kept failing; the message says why, in one line."""


@dataclass(frozen=True)
class StudyRequest:
    """What `rcutune study` was asked to do; see `run_campaign`.

    `None` for trials, max_seconds, replications and race_replications means the preset's value
    (`--quick` or the default).
    """

    hardware: str
    workloads: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    kernel: str = sim.DEFAULT_KERNEL
    fixed: tuple[tuple[str, Any], ...] = ()
    faithful: bool = False
    objective: str = "multi"
    trials: int | None = None
    campaign: str | None = None
    storage_url: str | None = None
    jobs: int = 1
    seed: int = 0
    quick: bool = False
    new: bool = False
    sampler: str = "tpe"
    max_seconds: float | None = None
    replications: int | None = None
    race_replications: int | None = None
    sim_timeout_s: float | None = None  # None: 30 wall seconds per simulated second, at least 30
    run: bool = True  # False (--no-run): create the campaign and its budgets for `rcutune worker` processes


@dataclass
class CampaignResult:
    """What a run did: the campaign, its Optuna study names and the trials told per workload."""

    campaign: str
    storage_url: str
    created: bool
    hardware: str = ""
    studies: dict[str, str] = field(default_factory=dict)  # workload -> Optuna study name
    told: dict[str, int] = field(default_factory=dict)  # workload -> trials told this run
    swept: int = 0  # trials a dead run left RUNNING, now failed and re-enqueued
    budgets: dict[str, int] = field(default_factory=dict)  # workload -> trial budget (--no-run)
    aborted: dict[str, str] = field(default_factory=dict)  # workload -> why its study stopped early
    wall_seconds: float = 0.0


def build_definition(request: StudyRequest) -> CampaignDefinition:
    """Load the profiles and build the campaign definition; touches no database.

    Raises:
        UserError, sim.ProfileError: bad profile, override, kernel, --fix, or setting.
    """
    if request.objective not in OBJECTIVE_KINDS:
        raise UserError(f"--objective {request.objective}: choose one of: {', '.join(OBJECTIVE_KINDS)}")
    if request.sampler not in SAMPLERS:
        raise UserError(f"--sampler {request.sampler}: choose one of: {', '.join(SAMPLERS)}")
    overrides = sim.split_overrides(list(request.overrides))
    hardware = sim.load_hardware(request.hardware, overrides["hardware"])
    names = list(dict.fromkeys(request.workloads)) or sim.list_profiles("workload")
    workloads = tuple(sim.load_workload(name, overrides["workload"]) for name in names)
    space = build_search_space(request.kernel, hardware.cpus, fixed=dict(request.fixed), faithful=request.faithful)
    settings = QUICK_SETTINGS if request.quick else DEFAULT_SETTINGS
    changes = {
        k: v
        for k, v in (
            ("max_seconds", request.max_seconds),
            ("replications", request.replications),
            ("race_replications", request.race_replications),
        )
        if v is not None
    }
    settings = replace(settings, **changes)
    if settings.replications < 1:
        raise UserError("--replications must be at least 1")
    seeds = make_seeds(request.seed, settings.replications + settings.race_replications)
    return CampaignDefinition(
        hardware=hardware,
        workloads=workloads,
        kernel=request.kernel,
        space=space,
        objective=request.objective,
        seeds=seeds,
        settings=settings,
    )


def default_campaign_name(request: StudyRequest, hardware: sim.HardwareProfile) -> str:
    """The hardware profile's name, with `-quick` for the quick preset."""
    return hardware.name + ("-quick" if request.quick else "")


def run_campaign(request: StudyRequest, progress: ProgressSink | None = None) -> CampaignResult:
    """Create or resume a campaign and add `trials` new trials to each of its studies.

    Nothing is written when the request is rejected: bad input and a changed definition raise
    before the first write.

    Raises:
        UserError, sim.ProfileError, storage.StorageError: rejected request (one-line message);
            `storage.CampaignBusy` when another run has the campaign.
        storage.Unwritable, storage.DatabaseUnreachable: the database could not be written, or its
            server went away, mid-run (what was stored before is kept).
    """
    start = time.monotonic()
    progress = progress or NullProgress()
    definition = build_definition(request)
    trials = request.trials if request.trials is not None else (QUICK_TRIALS if request.quick else DEFAULT_TRIALS)
    name = request.campaign or default_campaign_name(request, definition.hardware)
    if not _NAME.match(name):
        raise UserError(f"--study {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    url = storage.resolve_url(request.storage_url)
    db = storage.open_database(url)
    try:
        campaign_id, name, created = _claim(db, definition, name, request)
        result = CampaignResult(campaign=name, storage_url=url, created=created, hardware=definition.hardware.name)
        try:
            _run_studies(db, url, campaign_id, definition, request, trials, progress, result)
        except BaseException:
            progress.close()
            if request.run:
                try:
                    storage.release_campaign(db, campaign_id)
                except storage.StorageError:
                    pass  # it cannot be written: the next run finds this process gone and takes the campaign
            raise
        progress.close()
        if request.run:
            storage.release_campaign(db, campaign_id)
        result.wall_seconds = time.monotonic() - start
        return result
    except Exception as err:
        if storage.is_unwritable(err) and not storage.is_disk_full(err):
            raise storage.Unwritable(_unwritable_message(url, err)) from err
        if storage.connection_lost(err) and not isinstance(err, storage.DatabaseUnreachable):
            raise storage.DatabaseUnreachable(
                f"lost the database {storage.display_url(url)} mid-run; everything stored before is kept: once "
                "the server is back, run the same command again (on a server that restarts, rcutune worker "
                "processes wait for it)"
            ) from err
        raise
    finally:
        db.close()


def _unwritable_message(url: str, err: BaseException) -> str:
    path = storage.sqlite_path(url)
    where = f"the database {path}" if path is not None else f"the database {storage.display_url(url)}"
    read_only = False
    if path is not None:
        try:
            read_only = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
        except OSError:
            pass
    cause = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    words = " ".join(str(cause).split()) or type(cause).__name__
    why = (
        "its file system is read-only"
        if read_only
        else f"{words}: its file system may have turned read-only, or its disk failed"
    )
    return (
        f"cannot write to {where} ({why}); everything stored before is kept: once it can be written again, "
        "run the same command again"
    )


def _claim(db: storage.Database, d: CampaignDefinition, name: str, request: StudyRequest) -> tuple[int, str, bool]:
    """Find or create the campaign (refusing a changed definition or running workers) and take it.

    Of two runs that start one campaign at once, one takes it and the other is refused
    (`storage.CampaignBusy`): the claim is a compare-and-set, and a campaign (or study) the other
    created a moment earlier fails our insert, after which we find it and see its owner.
    """
    try:
        return _claim_once(db, d, name, request)
    except storage.StorageError as err:
        if not _duplicate_insert(err):
            raise
        return _claim_once(db, d, name, request)


def _duplicate_insert(err: BaseException) -> bool:
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, sqlalchemy.exc.IntegrityError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _claim_once(db: storage.Database, d: CampaignDefinition, name: str, request: StudyRequest) -> tuple[int, str, bool]:
    with db.session(immediate=True) as session:
        campaign = storage.find_campaign(session, name)
        if campaign is not None and request.new:
            name = storage.free_campaign_name(session, name)
            campaign = None
        created = campaign is None
        if campaign is not None:
            check_resumable(d, campaign)
            busy = live_worker_trials(db.engine, [s.optuna_study_name for s in campaign.studies])
            if busy and request.run:
                raise UserError(
                    f"campaign '{name}' has {busy} trials running in rcutune worker processes; "
                    f"wait for them, or add workers with: rcutune worker --study {name}"
                )
        else:
            campaign = d.new_campaign(name)
            session.add(campaign)
        if request.run:  # --no-run only defines budgets: workers must not take it for a running study
            storage.claim_campaign(session, campaign)
        stored = {s.workload_name for s in campaign.studies}
        for workload in d.workloads:
            if workload.name not in stored:
                campaign.studies.append(d.new_study(name, workload))
        session.flush()
        return campaign.id, name, created


def _run_studies(
    db: storage.Database,
    url: str,
    campaign_id: int,
    d: CampaignDefinition,
    request: StudyRequest,
    trials: int,
    progress: ProgressSink,
    result: CampaignResult,
) -> None:
    rdb = optuna.storages.RDBStorage(url, engine_kwargs=storage.engine_kwargs(url))
    try:
        studies = {}
        for workload in d.workloads:
            study = open_study(rdb, d, result.campaign, workload)
            if request.run:  # with --no-run, workers decide about RUNNING trials (by their heartbeats)
                result.swept += sweep_stale_trials(rdb, study, "interrupted: the process running it stopped")
            studies[workload.name] = study
            result.studies[workload.name] = study.study_name
        if not request.run:
            result.budgets = set_budgets(studies, trials, request.sampler)
            return
        progress.begin(result.campaign, [(w.name, trials, finished(studies[w.name])) for w in d.workloads])
        timeout = request.sim_timeout_s or max(30.0, 30.0 * d.settings.max_seconds)
        with SimulationPool(request.jobs, timeout) as pool:
            for workload in d.workloads:
                study = studies[workload.name]
                loop = StudyLoop(
                    rdb,
                    study,
                    d,
                    workload,
                    pool,
                    sampler=request.sampler,
                    on_trial=lambda outcome, w=workload.name, s=study: progress.trial(w, outcome, s),
                    heartbeat=lambda: storage.beat(db, campaign_id),
                )
                progress.start_study(workload.name)
                try:
                    result.told[workload.name] = loop.run(trials)
                except StudyAborted as err:
                    result.told[workload.name] = loop.told
                    result.aborted[workload.name] = str(err)
                    progress.aborted(workload.name, str(err))
                else:
                    progress.end_study(workload.name, study)
    finally:
        rdb.engine.dispose()


@dataclass
class _Trial:
    """One trial of the running batch: its protocol, and the simulations it waits for."""

    trial: optuna.Trial
    policy: sim.Policy
    protocol: Generator[list[SimJob], list[sim.Metrics], TrialRun]
    request: list[SimJob] = field(default_factory=list)
    results: dict[int, sim.Metrics] = field(default_factory=dict)
    run: TrialRun | None = None
    error: str | None = None
    simulations: int = 0

    @property
    def waiting(self) -> int:
        return len(self.request) - len(self.results)


class StudyLoop:
    """Runs new trials of one study, batch by batch, with the campaign's definition.

    Args:
        rdb: the storage the study lives in (this process is its only writer).
        study: the Optuna study.
        definition: the campaign definition (profiles, space, seeds, settings, objective).
        workload: this study's workload profile.
        pool: the simulation workers.
        sampler: "tpe" (with the pattern search of `plan_batch`) or "random".
        on_trial: called after each tell.
        heartbeat: called at least every HEARTBEAT_EVERY_S seconds while the loop runs.
    """

    def __init__(
        self,
        rdb: optuna.storages.RDBStorage,
        study: optuna.Study,
        definition: CampaignDefinition,
        workload: sim.WorkloadProfile,
        pool: SimulationPool,
        *,
        sampler: str = "tpe",
        on_trial: Callable[[TrialOutcome], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.rdb, self.study, self.d, self.workload, self.pool = rdb, study, definition, workload, pool
        self.sampler = sampler
        self.on_trial = on_trial or (lambda outcome: None)
        self.heartbeat = heartbeat or (lambda: None)
        self.memo: dict[tuple, sim.Metrics] = {}  # simulate() is pure: (policy, seed, seconds) -> metrics
        self.told = 0
        self.failures_in_a_row = 0
        self.last_error: str | None = None
        self.last_beat = time.monotonic()

    def run(self, trials: int) -> int:
        """Tell `trials` new trials (fewer if the study aborts); returns how many were told."""
        while self.told < trials:
            self._run_batch(trials - self.told)
        return self.told

    def _run_batch(self, room: int) -> None:
        """Run up to `room` trials of the current batch, planning it first when nothing waits.

        A batch is always planned whole; trials a run has no room for wait in the queue, and the next
        run takes them first, so a campaign run in parts stores what one long run would.
        """
        existing = self.study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.WAITING for t in existing):
            refine = self.sampler == "tpe" and "n_per_cpu" in self.d.space.names()
            for planned in plan_batch(
                existing,
                self.d,
                self.workload.name,
                size=self.d.settings.batch_size,
                sampler=self.sampler,
                refine=refine,
            ):
                self.study.enqueue_trial(planned.params, user_attrs=planned.attrs)
            existing = self.study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in existing)
        batch: list[_Trial] = []
        try:
            for _ in range(min(room, waiting)):
                trial = self.study.ask()
                policy = start_trial(trial, self.d)
                seen = seen_before(existing, int(trial.user_attrs.get("batch", -1)), self.d)
                protocol = trial_protocol(self.d, self.workload, trial.user_attrs.get("design"), seen)
                batch.append(_Trial(trial, policy, protocol))
                self._advance(batch[-1], None)
            while any(t.run is None and t.error is None for t in batch):
                for result in self.pool.collect(timeout=1.0):
                    self._receive(batch, result)
                if time.monotonic() - self.last_beat > HEARTBEAT_EVERY_S:
                    self.heartbeat()
                    self.last_beat = time.monotonic()
        except BaseException:
            self.pool.cancel_all()
            try:
                for t in batch:
                    fail_and_retry(self.rdb, self.study, t.trial.number, "interrupted: the run was stopped")
            except Exception:
                pass  # the database cannot be written now: the next run fails and retries them (they stay RUNNING)
            raise
        for t in batch:
            self._tell(t)
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise StudyAborted(f"{self.failures_in_a_row} trials in a row failed, the last with: {self.last_error}")

    def _advance(self, t: _Trial, metrics: list[sim.Metrics] | None) -> None:
        """Send the protocol its simulations' metrics (None to start it) and submit what it asks next."""
        try:
            t.request = t.protocol.send(metrics) if metrics is not None else next(t.protocol)
        except StopIteration as stop:
            t.run = stop.value
            return
        t.results = {}
        for index, (seed, seconds) in enumerate(t.request):
            known = self.memo.get((t.policy, seed, seconds))
            if known is not None:  # an identical simulation already ran in this loop
                t.results[index] = known
                continue
            task = SimTask(
                (t.trial.number, index), self.d.hardware, self.workload, t.policy, seconds, seed, self.d.kernel
            )
            self.pool.submit(task, priority=(t.trial.number, index))
            t.simulations += 1
        if t.waiting == 0:
            self._advance(t, [t.results[i] for i in range(len(t.request))])

    def _receive(self, batch: list[_Trial], result: SimResult) -> None:
        number, index = result.key  # type: ignore[misc]
        t = next((x for x in batch if x.trial.number == number), None)
        if t is None or t.run is not None or t.error is not None:
            return
        if result.error is not None:
            t.error = result.error
            return
        assert result.metrics is not None
        seed, seconds = t.request[index]
        self.memo[(t.policy, seed, seconds)] = result.metrics
        t.results[index] = result.metrics
        if t.waiting == 0:
            self._advance(t, [t.results[i] for i in range(len(t.request))])

    def _tell(self, t: _Trial) -> None:
        label = t.trial.user_attrs.get("design")
        if t.error is not None:
            fail_trial(t.trial, t.error, t.simulations)
            self.study.tell(t.trial, state=TrialState.FAIL)
            outcome = TrialOutcome(t.trial.number, TrialState.FAIL, t.policy, None, False, False, label, t.error)
        else:
            assert t.run is not None
            state, values, base, ok = finish_trial(t.trial, self.d, self.workload, t.run, t.simulations)
            self.study.tell(t.trial, values, state=state)
            outcome = TrialOutcome(t.trial.number, state, t.policy, base, ok, t.run.raced, label)
        self.told += 1
        self.on_trial(outcome)
        self.failures_in_a_row = self.failures_in_a_row + 1 if t.error is not None else 0
        self.last_error = t.error or self.last_error
