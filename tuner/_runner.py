"""`run_campaign`: create or resume a campaign and add trials to each of its studies."""

from __future__ import annotations

import re
import time
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from rcutune import sim
from rcutune import storage

from ._campaign import (
    DEFAULT_SETTINGS,
    DEFAULT_TRIALS,
    OBJECTIVE_KINDS,
    QUICK_SETTINGS,
    QUICK_TRIALS,
    CampaignDefinition,
    check_resumable,
    make_seeds,
    study_name,
)
from ._errors import UserError
from ._fleet import live_worker_trials, set_budgets
from ._objective import OBJECTIVES
from ._progress import NullProgress, ProgressSink
from ._space import SearchSpace, build_search_space
from ._study import StudyAborted, StudyLoop, TrialOutcome
from ._workers import SimulationPool

SAMPLERS = ("tpe", "random")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
    changes = {k: v for k, v in (("max_seconds", request.max_seconds), ("replications", request.replications),
                                 ("race_replications", request.race_replications)) if v is not None}
    settings = replace(settings, **changes)
    if settings.replications < 1:
        raise UserError("--replications must be at least 1")
    seeds = make_seeds(request.seed, settings.replications + settings.race_replications)
    return CampaignDefinition(hardware=hardware, workloads=workloads, kernel=request.kernel, space=space,
                              objective=request.objective, seeds=seeds, settings=settings)


def default_campaign_name(request: StudyRequest, hardware: sim.HardwareProfile) -> str:
    """The hardware profile's name, with `-quick` for the quick preset."""
    return hardware.name + ("-quick" if request.quick else "")


def run_campaign(request: StudyRequest, progress: ProgressSink | None = None) -> CampaignResult:
    """Create or resume a campaign and add `trials` new trials to each of its studies.

    Nothing is written when the request is rejected: bad input and a changed definition raise
    before the first write.

    Raises:
        UserError, sim.ProfileError, storage.StorageError: rejected request (one-line message).
    """
    start = time.monotonic()
    progress = progress or NullProgress()
    definition = build_definition(request)
    trials = request.trials if request.trials is not None else (QUICK_TRIALS if request.quick else DEFAULT_TRIALS)
    base_name = request.campaign or default_campaign_name(request, definition.hardware)
    if not _NAME.match(base_name):
        raise UserError(f"--study {base_name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    url = storage.resolve_url(request.storage_url)
    db = storage.open_database(url)
    rdb = None
    try:
        with db.session() as session:
            campaign = storage.find_campaign(session, base_name)
            if campaign is not None and request.new:
                base_name = storage.free_campaign_name(session, base_name)
                campaign = None
            created = campaign is None
            if campaign is not None:
                check_resumable(definition, campaign)
                busy = live_worker_trials(db.engine, [s.optuna_study_name for s in campaign.studies])
                if busy and request.run:
                    raise UserError(f"campaign '{base_name}' has {busy} trials running in rcutune worker processes; "
                                    f"wait for them, or add workers with: rcutune worker --study {base_name}")
            else:
                campaign = definition.new_campaign(base_name)
                session.add(campaign)
            if request.run:  # --no-run only defines budgets: workers must not take it for a running study
                storage.claim_campaign(session, campaign)
            stored = {s.workload_name for s in campaign.studies}
            for workload in definition.workloads:
                if workload.name not in stored:
                    campaign.studies.append(definition.new_study(base_name, workload))
            session.flush()
            campaign_id = campaign.id
        result = CampaignResult(campaign=base_name, storage_url=url, created=created)
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=storage.engine_kwargs(url))
        studies = {}
        for workload in definition.workloads:
            study = _open_study(rdb, definition, base_name, workload)
            if request.run:  # with --no-run, workers decide about RUNNING trials (by their heartbeats)
                result.swept += sweep_stale_trials(study, "interrupted: the process running it stopped")
                enqueue_design(study, definition.space, limit=trials)  # workers queue it one point at a time
            studies[workload.name] = study
            result.studies[workload.name] = study.study_name
        if not request.run:
            result.budgets = set_budgets(studies, trials, request.sampler)
            result.wall_seconds = time.monotonic() - start
            return result
        progress.begin(base_name, [(w.name, trials, _count(studies[w.name])) for w in definition.workloads])
        timeout = request.sim_timeout_s or max(30.0, 30.0 * definition.settings.max_seconds)
        with SimulationPool(request.jobs, timeout) as pool:
            for workload in definition.workloads:
                study = studies[workload.name]
                before = _count(study)
                sampler = _sampler(request, workload.name, len(study.get_trials(deepcopy=False)))
                study.sampler = sampler
                loop = StudyLoop(study, definition, workload, pool,
                                 on_trial=lambda outcome, w=workload.name, s=study: progress.trial(w, outcome, s),
                                 heartbeat=lambda: storage.beat(db, campaign_id), refine=request.sampler == "tpe")
                progress.start_study(workload.name)
                try:
                    loop.run(trials)
                except StudyAborted as err:
                    for run in loop.interrupted:
                        fail_and_retry(study, run.number, f"interrupted: the study stopped ({err})")
                    result.aborted[workload.name] = str(err)
                    progress.aborted(workload.name, str(err))
                except BaseException:
                    for run in loop.interrupted:
                        fail_and_retry(study, run.number, "interrupted: the run was stopped")
                    raise
                else:
                    progress.end_study(workload.name, study)
                result.told[workload.name] = _count(study) - before
        result.wall_seconds = time.monotonic() - start
        return result
    finally:
        progress.close()
        try:
            if "campaign_id" in locals():
                storage.release_campaign(db, campaign_id)
        finally:
            if rdb is not None:
                rdb.engine.dispose()
            db.close()


def _count(study: optuna.Study) -> int:
    """Trials that finished (complete, pruned or failed)."""
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def _open_study(rdb: optuna.storages.RDBStorage, d: CampaignDefinition, campaign: str,
                workload: sim.WorkloadProfile) -> optuna.Study:
    name = study_name(campaign, workload.name)
    directions = ["minimize"] if d.objective == "scalar" else ["minimize"] * len(OBJECTIVES)
    try:
        optuna.load_study(study_name=name, storage=rdb)
        exists = True
    except KeyError:
        exists = False
    study = optuna.create_study(storage=rdb, study_name=name, directions=directions, load_if_exists=True)
    if not exists:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["scalar"] if d.objective == "scalar" else list(OBJECTIVES))
        for key, value in (("campaign", campaign), ("hardware", d.hardware.name), ("workload", workload.name),
                           ("kernel", d.kernel), ("objective", d.objective),
                           ("simulator_version", d.simulator_version)):
            study.set_user_attr(key, value)
    return study


def _sampler(request: StudyRequest, workload: str, existing: int) -> optuna.samplers.BaseSampler:
    """A sampler seeded by (campaign seed, workload, trials so far): reproducible, and new on resume."""
    seed = int(np.random.SeedSequence([request.seed, zlib.crc32(workload.encode()), existing]).generate_state(1)[0])
    if request.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=5)


def enqueue_design(study: optuna.Study, space: SearchSpace, *, limit: int | None = None) -> int:
    """Enqueue the initial design points (kernel default and N=0 first) the study lacks; returns how many.

    With `limit`, no more trials wait in the queue than that (a run asks for `limit` trials).
    """
    existing = study.get_trials(deepcopy=False)
    present = [t.params for t in existing]
    waiting = sum(t.state == TrialState.WAITING for t in existing)
    added = 0
    for label, values in space.initial_design():
        if limit is not None and waiting + added >= limit:
            break
        if any(_same(values, p) for p in present):
            continue
        study.enqueue_trial(values, user_attrs={"design": label})
        present.append(values)
        added += 1
    return added


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return set(a) == set(b) and all(a[k] == b[k] for k in a)


def fail_and_retry(study: optuna.Study, number: int, reason: str) -> bool:
    """Mark a RUNNING trial failed; re-enqueue its parameters when it had all of them. Returns whether it did."""
    rdb = study._storage
    study_id = rdb.get_study_id_from_name(study.study_name)
    trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, number)
    trial = rdb.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        return False
    rdb.set_trial_user_attr(trial_id, "fail_reason", reason)
    rdb.set_trial_state_values(trial_id, TrialState.FAIL)
    if "policy" in trial.user_attrs:  # the parameters were complete
        attrs: dict[str, Any] = {"retry_of": number}
        if trial.user_attrs.get("design"):
            attrs["design"] = trial.user_attrs["design"]
        study.enqueue_trial(trial.params, user_attrs=attrs)
    return True


def sweep_stale_trials(study: optuna.Study, reason: str) -> int:
    """Fail and retry every RUNNING trial (the caller owns the campaign, so no live process runs them)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return sum(fail_and_retry(study, t.number, reason) for t in running)


def describe_outcome(outcome: TrialOutcome) -> str:
    p = outcome.policy
    text = f"N={p.n_per_cpu} {p.layout}"
    if outcome.values:
        text += f" {outcome.values['reserved_mib']:.3g} MiB {outcome.values['fallback_cost']:.3g} ms/s"
    return text
