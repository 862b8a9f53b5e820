"""Many machines on one campaign: `rcutune worker` processes sharing its studies through a database server.

`rcutune study ... --no-run` stores each study's budget (complete plus pruned trials) in the Optuna
study's `user_attrs`. Every worker then runs one trial at a time inside `study.optimize`, so Optuna
records a heartbeat while the trial runs; a worker that stops beating (killed, cut off) has its trial
failed by the next worker that looks, and the trial's parameters queued again
(`RetryHeartbeatStaleTrialCallback`). Every trial a worker creates (asked, queued, retried) is
created under a row lock on the study's `rcutune_studies` row; asking takes it before counting and
releases it once the new trial is RUNNING. So trial numbers stay unique, and the complete and pruned
trials end at exactly the budget, whatever the number of workers.
"""

from __future__ import annotations

import copy
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from rcutune import sim
from rcutune import storage

from ._campaign import CampaignDefinition, Settings
from ._errors import UserError
from ._space import build_search_space
from ._study import (
    MAX_FAILURES_IN_A_ROW,
    _policy_dict,
    _seen_from,
    _Seen,
    neighbours,
    pruned_by,
    record_low_fidelity,
    record_pruned,
    record_result,
    should_race,
    told_values,
)
from ._workers import SimTask, SimulationPool

BUDGET_ATTR = "budget"
"""Optuna study user attribute: the complete and pruned trials the campaign's workers stop at."""
SAMPLER_ATTR = "sampler"
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
"""A RUNNING trial whose heartbeat is older than this is failed and queued again."""
MAX_RETRIES = 3
"""A trial whose worker dies this many times is left failed (the budget is met by other trials)."""
SPENT = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailed(Exception):
    """A simulation of the trial failed or timed out; the trial is failed, the worker goes on."""


def set_budgets(studies: dict[str, optuna.Study], trials: int, sampler: str) -> dict[str, int]:
    """Add `trials` to each study's budget (counted from its complete and pruned trials); returns the budgets."""
    budgets = {}
    for workload, study in studies.items():
        spent = len(study.get_trials(deepcopy=False, states=SPENT))
        budget = max(int(study.user_attrs.get(BUDGET_ATTR, 0)), spent) + trials
        study.set_user_attr(BUDGET_ATTR, budget)
        study.set_user_attr(SAMPLER_ATTR, sampler)
        budgets[workload] = budget
    return budgets


def live_worker_trials(engine: sa.Engine, optuna_study_names: list[str], grace_s: float = GRACE_PERIOD_S) -> int:
    """RUNNING trials of these studies whose worker recorded a heartbeat within `grace_s` seconds."""
    inspector = sa.inspect(engine)
    if not optuna_study_names or not inspector.has_table("trial_heartbeats"):
        return 0
    query = sa.text(
        "SELECT h.heartbeat FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND s.study_name IN :names"
    ).bindparams(sa.bindparam("names", expanding=True))
    with engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar()
        beats = conn.execute(query, {"names": list(optuna_study_names)}).scalars().all()
    if isinstance(now, str):  # SQLite returns text
        now = datetime.fromisoformat(now)
    now = now.replace(tzinfo=None)
    return sum((now - b.replace(tzinfo=None)).total_seconds() < grace_s for b in beats)


def stored_definition(campaign: storage.Campaign) -> CampaignDefinition:
    """The definition a stored campaign was created with, rebuilt from its stored text.

    Raises:
        UserError: the campaign was stored by another simulator version, or its profiles or search
            space no longer load the same (another rcutune release).
    """
    from ._recommend import _profile_from_text

    if campaign.simulator_version != sim.SIMULATOR_VERSION:
        raise UserError(f"campaign '{campaign.name}' was created with simulator {campaign.simulator_version}, this "
                        f"rcutune has {sim.SIMULATOR_VERSION}; run the worker with the same rcutune version")
    hardware = _profile_from_text("hardware", campaign.hardware_profile)
    workloads = tuple(_profile_from_text("workload", s.workload_profile) for s in campaign.studies)
    stored = campaign.search_space
    space = build_search_space(campaign.kernel, int(stored["cpus"]), fixed=dict(stored["fixed"]),
                               faithful=bool(stored["faithful"]))
    definition = CampaignDefinition(hardware=hardware, workloads=workloads, kernel=campaign.kernel, space=space,
                                    objective=campaign.objective, seeds=tuple(int(s) for s in campaign.seeds),
                                    settings=Settings(**campaign.settings))
    change = definition.difference(campaign)
    if change is not None:
        raise UserError(f"campaign '{campaign.name}' cannot be rebuilt by this rcutune (different {change}); "
                        "run the worker with the rcutune version that created it")
    return definition


@dataclass(frozen=True)
class WorkerRequest:
    """What `rcutune worker` was asked to do; see `run_worker`."""

    campaign: str
    storage_url: str | None = None
    jobs: int = 1
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S
    grace_period_s: int = GRACE_PERIOD_S
    sim_timeout_s: float | None = None  # None: 30 wall seconds per simulated second, at least 30


@dataclass
class WorkerResult:
    """What one worker did: trials it finished per workload, and studies it gave up on."""

    campaign: str
    storage_url: str
    finished: dict[str, int] = field(default_factory=dict)  # workload -> complete or pruned trials it ran
    failed: dict[str, int] = field(default_factory=dict)  # workload -> trials that failed in this worker
    aborted: dict[str, str] = field(default_factory=dict)  # workload -> why this worker stopped on it
    wall_seconds: float = 0.0


@dataclass
class _Study:
    workload: sim.WorkloadProfile
    record_id: int
    study: optuna.Study
    budget: int
    refine: bool
    failures_in_a_row: int = 0


class _RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial, keeping rcutune's labels and naming the trial it retries."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        labels = {k: trial.user_attrs[k] for k in ("design", "refines") if k in trial.user_attrs}
        trial.user_attrs = {**labels, "retry_of": trial.number}
        super().__call__(study, trial)


def run_worker(request: WorkerRequest, on_trial: Callable[[str, FrozenTrial], None] | None = None) -> WorkerResult:
    """Run trials of every study of a campaign until each study's budget is spent.

    Several workers, on one machine or many, may run this at once against one database server.

    Raises:
        UserError, storage.StorageError: SQLite storage, unknown campaign, a campaign without budgets
            (not created with --no-run), or one a single-writer `rcutune study` is running.
    """
    start = time.monotonic()
    url = storage.resolve_url(request.storage_url)
    if storage.sqlite_path(url) is not None or url.startswith("sqlite"):
        raise UserError(f"rcutune worker needs a database server that several processes write at once "
                        f"(--storage postgresql+psycopg://...), not {url}; on one machine, "
                        "rcutune study --jobs J runs a SQLite campaign in parallel")
    db = storage.open_database(url, create=False)
    rdb = None
    try:
        with db.session() as session:
            has_tables = storage.ensure_schema(db.engine, create=False) is not None
            campaign = storage.find_campaign(session, request.campaign) if has_tables else None
            if campaign is None:
                known = ", ".join(c.name for c in storage.list_campaigns(session)) if has_tables else ""
                raise UserError(f"no campaign named '{request.campaign}' in {url}{f' (campaigns: {known})' if known else ''}; "
                                f"create it with rcutune study --hardware H --study {request.campaign} --no-run")
            if campaign.owner and storage.owner_alive(campaign.owner, campaign.owner_heartbeat_at):
                raise storage.CampaignBusy(f"campaign '{campaign.name}' is being run by {campaign.owner} "
                                           "(rcutune study); wait for it to finish")
            definition = stored_definition(campaign)
            campaign_id = campaign.id
            records = [(s.id, s.workload_name, s.optuna_study_name) for s in campaign.studies]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            rdb = optuna.storages.RDBStorage(
                url, engine_kwargs=storage.engine_kwargs(url), skip_table_creation=True,
                heartbeat_interval=request.heartbeat_interval_s, grace_period=request.grace_period_s,
                heartbeat_stale_trial_callback=_RetryStale(max_retry=MAX_RETRIES))
        workloads = {w.name: w for w in definition.workloads}
        studies = []
        for record_id, workload, optuna_name in records:
            study = optuna.load_study(study_name=optuna_name, storage=rdb)
            if BUDGET_ATTR not in study.user_attrs:
                raise UserError(f"study '{optuna_name}' has no trial budget; create the campaign for workers with "
                                f"rcutune study --hardware {definition.hardware.name} --study {request.campaign} "
                                "--storage URL --trials T --no-run")
            sampler_name = study.user_attrs.get(SAMPLER_ATTR, "tpe")
            study.sampler = _sampler(sampler_name, definition, workload, len(study.get_trials(deepcopy=False)))
            studies.append(_Study(workloads[workload], record_id, study, int(study.user_attrs[BUDGET_ATTR]),
                                  refine=sampler_name == "tpe" and "n_per_cpu" in definition.space.names()))
        result = WorkerResult(campaign=request.campaign, storage_url=url)
        timeout = request.sim_timeout_s or max(30.0, 30.0 * definition.settings.max_seconds)
        with SimulationPool(request.jobs, timeout) as pool:
            _Fleet(db, rdb, campaign_id, definition, studies, pool, result, request, on_trial).run()
        result.wall_seconds = time.monotonic() - start
        return result
    finally:
        if rdb is not None:
            rdb.remove_session()
            rdb.engine.dispose()
        db.close()


def _sampler(name: str, d: CampaignDefinition, workload: str, existing: int) -> optuna.samplers.BaseSampler:
    """A sampler seeded by the campaign, the workload, this worker and the trials so far (never two alike)."""
    entropy = [d.seeds[0], zlib.crc32(workload.encode()), zlib.crc32(storage.this_owner().encode()), existing]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: trials other workers are running count as bad guesses, so workers spread out.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=5)


class _Fleet:
    """One worker's loop over the studies of a campaign."""

    def __init__(self, db: storage.Database, rdb: optuna.storages.RDBStorage, campaign_id: int,
                 d: CampaignDefinition, studies: list[_Study], pool: SimulationPool, result: WorkerResult,
                 request: WorkerRequest, on_trial: Callable[[str, FrozenTrial], None] | None) -> None:
        self.db, self.rdb, self.d, self.studies, self.pool, self.result = db, rdb, d, studies, pool, result
        self.campaign_id = campaign_id
        self.request = request
        self.on_trial = on_trial or (lambda workload, trial: None)
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
            counts = {id(s): self._counts(s) for s in self.studies}
            live = [s for s in self.studies if s.workload.name not in self.result.aborted]
            if all(counts[id(s)][0] >= s.budget for s in live):
                return
            open_ = [s for s in live if sum(counts[id(s)]) < s.budget]
            if not open_:  # every remaining trial is running elsewhere: watch for workers that stop beating
                time.sleep(min(1.0, self.request.heartbeat_interval_s))
                continue
            self._run_one(max(open_, key=lambda s: s.budget - sum(counts[id(s)])))

    def _check_no_single_writer(self) -> None:
        """Stop if a `rcutune study` process took the campaign meanwhile (its trials have no heartbeats)."""
        with self.db.session() as session:
            owner, beat_at = session.execute(sa.select(storage.Campaign.owner, storage.Campaign.owner_heartbeat_at)
                                             .where(storage.Campaign.id == self.campaign_id)).one()
        if owner and storage.owner_alive(owner, beat_at):
            raise storage.CampaignBusy(f"campaign '{self.result.campaign}' is being run by {owner} (rcutune study); "
                                       "this worker stops until it finishes")

    @staticmethod
    def _counts(s: _Study) -> tuple[int, int]:
        """(complete and pruned trials, RUNNING trials) of a study."""
        trials = s.study.get_trials(deepcopy=False, states=(*SPENT, TrialState.RUNNING))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return len(trials) - running, running

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

    def _sweep_unbeaten(self, s: _Study) -> None:
        """A worker killed between asking for a trial and its first heartbeat leaves a RUNNING trial that
        Optuna never calls stale; one that stays so for a grace period (on this worker's clock) is."""
        storage_ = s.study._storage
        running = s.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        ids = [t._trial_id for t in running]
        with self.rdb.engine.connect() as conn:
            beating = set(conn.execute(sa.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids")
                                       .bindparams(sa.bindparam("ids", expanding=True)), {"ids": ids}).scalars())
        now = time.monotonic()
        for t in running:
            if t._trial_id in beating:
                self.unbeaten.pop(t._trial_id, None)
                continue
            first = self.unbeaten.setdefault(t._trial_id, now)
            if now - first > self.request.grace_period_s:
                try:
                    if storage_.set_trial_state_values(t._trial_id, TrialState.FAIL):
                        callback = storage_.get_heartbeat_stale_trial_callback()
                        if callback is not None:
                            callback(s.study, copy.deepcopy(storage_.get_trial(t._trial_id)))
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass
                self.unbeaten.pop(t._trial_id, None)

    @contextmanager
    def _ask_lock(self, s: _Study) -> Iterator[Callable[[], None]]:
        """Hold the study's row lock; yields a function that releases it (called once the trial is RUNNING)."""
        with self.db.engine.connect() as conn:
            tx = conn.begin()
            try:
                conn.execute(sa.select(storage.StudyRecord.id).where(storage.StudyRecord.id == s.record_id)
                             .with_for_update())

                def release() -> None:
                    if tx.is_active:
                        tx.commit()

                yield release
            finally:
                if tx.is_active:
                    tx.rollback()

    def _run_one(self, s: _Study) -> None:
        objective = _Objective(self, s)
        with self._ask_lock(s) as release:
            spent, running = self._counts(s)  # again, now that no other worker can ask
            if spent + running >= s.budget:
                return
            self._queue_next(s)
            objective.release = release
            try:
                s.study.optimize(objective, n_trials=1, catch=(TrialFailed,))
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # our trial was declared stale (we stopped beating for too long) and queued again
            except BaseException:
                release()
                with self._ask_lock(s):  # queued under the lock, like every trial a worker creates
                    objective.retry_interrupted()
                raise
        if objective.number is None:
            return
        trial = s.study._storage.get_trial(s.study._storage.get_trial_id_from_study_id_trial_number(
            s.study._study_id, objective.number))
        w = s.workload.name
        if trial.state == TrialState.FAIL:
            self.result.failed[w] = self.result.failed.get(w, 0) + 1
            s.failures_in_a_row += 1
            if s.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                self.result.aborted[w] = (f"{s.failures_in_a_row} trials in a row failed, the last with: "
                                          f"{trial.user_attrs.get('fail_reason', 'failed')}")
        elif trial.state in SPENT:
            s.failures_in_a_row = 0
            self.result.finished[w] = self.result.finished.get(w, 0) + 1
        self.on_trial(w, trial)

    def _queue_next(self, s: _Study) -> None:
        """When nothing waits (retries go first), queue the next initial design point, else maybe a refinement.

        The design is queued one point at a time, not all at once, so that a retried trial never
        waits behind design points the budget has no room for.
        """
        trials = s.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        tried = [_params(t) for t in trials]
        for label, values in self.d.space.initial_design():
            if not any(_same(values, p) for p in tried):
                s.study.enqueue_trial(values, user_attrs={"design": label})
                return
        if s.refine and len(trials) % 3 == 0:
            self._queue_refinement(s, trials)

    def _queue_refinement(self, s: _Study, trials: list[FrozenTrial]) -> None:
        """Every third trial refines the best one (as `rcutune study` does)."""
        seen = [x for x in (_seen_from(t, self.d) for t in trials if t.state in SPENT) if x is not None]
        ranked = [x for x in seen if x.base is not None and x.base_feasible]
        if not ranked:
            return
        best = min(ranked, key=lambda x: (x.base["scalar"], x.number)).number  # type: ignore[index]
        tried = [_params(t) for t in trials]
        for params in neighbours(self.d.space, dict(trials[best].params)):
            if params not in tried:
                s.study.enqueue_trial(params, user_attrs={"refines": best})
                return

    def simulate(self, number: int, workload: sim.WorkloadProfile, policy: sim.Policy,
                 jobs: list[tuple[int, float]]) -> list[sim.Metrics]:
        """Run (seed, seconds) simulations of one policy in the pool; raises TrialFailed on the first failure."""
        out: dict[int, sim.Metrics] = {}
        for i, (seed, seconds) in enumerate(jobs):
            known = self.memo.get((policy, seed, seconds))
            if known is not None:
                out[i] = known
            else:
                self.pool.submit(SimTask((number, i), self.d.hardware, workload, policy, seconds, seed, self.d.kernel),
                                 priority=(number, i))
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


def _params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters, also while it runs an enqueued point and has not suggested them yet."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return set(a) == set(b) and all(a[k] == b[k] for k in a)


class _Objective:
    """One trial as `study.optimize` runs it: low fidelity, prune or base seeds, race, values."""

    def __init__(self, fleet: _Fleet, s: _Study) -> None:
        self.fleet, self.s = fleet, s
        self.release: Callable[[], None] = lambda: None
        self.number: int | None = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.number = trial.number
        self.release()  # the trial is RUNNING: other workers may count it and ask
        trial.set_user_attr("worker", storage.this_owner())
        d, s, fleet = self.fleet.d, self.s, self.fleet
        values = d.space.suggest(trial)
        policy = d.space.policy(values)
        trial.set_user_attr("policy", _policy_dict(policy))
        trial.set_user_attr("kernel_cmdline", policy.kernel_cmdline(sim.kernel_behaviour(d.kernel)))
        trial.set_user_attr("what_if_reasons", list(policy.what_if_reasons(sim.kernel_behaviour(d.kernel))))
        label = trial.user_attrs.get("design")
        seconds, low_seconds = d.settings.seconds_for(s.workload), d.settings.low_seconds_for(s.workload)
        simulations = [0]

        def run(jobs: list[tuple[int, float]]) -> list[sim.Metrics]:
            fresh = sum((policy, *j) not in fleet.memo for j in jobs)
            try:
                return fleet.simulate(trial.number, s.workload, policy, jobs)
            except TrialFailed as err:
                trial.set_user_attr("simulations", simulations[0] + fresh)
                trial.set_user_attr("fail_reason", str(err))
                raise
            finally:
                simulations[0] += fresh

        (low,) = run([(d.seeds[0], low_seconds)])
        low_values, _ = record_low_fidelity(trial, d, low_seconds, low)
        assert low_values is not None
        # Decisions use the trials stored with lower numbers, as `rcutune study` does (there, all of them).
        seen: list[_Seen] = [x for x in (_seen_from(t, d) for t in s.study.get_trials(deepcopy=False, states=SPENT)
                                         if t.number < trial.number) if x is not None]
        by = pruned_by(low_values, seen, d) if label is None else None
        if by is not None:
            record_pruned(trial, d, low, by)
            trial.set_user_attr("simulations", simulations[0])
            raise optuna.TrialPruned(f"hopeless at low fidelity against trial {by}")
        r = d.settings.replications
        runs = run([(seed, seconds) for seed in d.seeds[:r]])
        raced = should_race(runs, label, seen, d)
        if raced:
            runs += run([(seed, seconds) for seed in d.seeds[r:]])
        base, _ = record_result(trial, d, seconds, runs, list(d.seeds[:len(runs)]), raced)
        trial.set_user_attr("simulations", simulations[0])
        return told_values(base, d)

    def retry_interrupted(self) -> None:
        """After Ctrl-C or SIGTERM, the trial Optuna just failed runs again in another worker."""
        if self.number is None:
            return
        study = self.s.study
        rdb = study._storage
        trial = rdb.get_trial(rdb.get_trial_id_from_study_id_trial_number(study._study_id, self.number))
        params = _params(trial)  # what it had chosen (or was queued with), even if stopped mid-suggestion
        if trial.state == TrialState.FAIL and params:
            attrs: dict[str, Any] = {"retry_of": trial.number}
            attrs.update({k: trial.user_attrs[k] for k in ("design", "refines") if k in trial.user_attrs})
            study.enqueue_trial(params, user_attrs=attrs)
