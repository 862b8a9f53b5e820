"""A campaign's Optuna studies in the database: opening them, budgets, and trials whose process is gone.

Everything here goes through Optuna's public study and storage API (`BaseStorage` methods on the
`RDBStorage` the caller opened), never through a study's private attributes.
"""

from __future__ import annotations

import warnings
from datetime import datetime

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from rcutune import sim

from ._campaign import CampaignDefinition, study_name
from ._objective import CONSTRAINTS, OBJECTIVES
from ._protocol import directions, params_of, retry_attrs

BUDGET_ATTR = "budget"
"""Optuna study user attribute: the complete and pruned trials the campaign's workers stop at."""
SAMPLER_ATTR = "sampler"
SPENT = (TrialState.COMPLETE, TrialState.PRUNED)
PLANNED = optuna.samplers.RandomSampler(seed=0)
"""The sampler a stored study is opened with: every trial is queued with its parameters by `plan_batch`,
so the study's own sampler only has to cost nothing when Optuna consults it at `ask()`."""
GRACE_PERIOD_S = 30
"""A RUNNING trial whose worker's heartbeat is older than this is failed and queued again."""


def open_study(
    rdb: optuna.storages.RDBStorage, d: CampaignDefinition, campaign: str, workload: sim.WorkloadProfile
) -> optuna.Study:
    """The Optuna study of one workload of a campaign, created with its metric names and labels if new."""
    name = study_name(campaign, workload.name)
    exists = name in optuna.get_all_study_names(rdb)
    study = optuna.create_study(
        storage=rdb, study_name=name, directions=directions(d), load_if_exists=True, sampler=PLANNED
    )
    if not exists:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["scalar"] if d.objective == "scalar" else list(OBJECTIVES))
        for key, value in (
            ("campaign", campaign),
            ("hardware", d.hardware.name),
            ("workload", workload.name),
            ("kernel", d.kernel),
            ("objective", d.objective),
            ("simulator_version", d.simulator_version),
            ("constraints", list(CONSTRAINTS)),
        ):  # the order of each trial's constraint list
            study.set_user_attr(key, value)
    return study


def finished(study: optuna.Study) -> int:
    """Trials that finished (complete, pruned or failed)."""
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def stored_trial(rdb: optuna.storages.RDBStorage, study: optuna.Study, number: int) -> FrozenTrial:
    """A trial of the study as stored now (Optuna's study caches nothing a storage read would miss)."""
    return rdb.get_trial(trial_id(rdb, study, number))


def trial_id(rdb: optuna.storages.RDBStorage, study: optuna.Study, number: int) -> int:
    return rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study.study_name), number)


def fail_and_retry(rdb: optuna.storages.RDBStorage, study: optuna.Study, number: int, reason: str) -> bool:
    """Mark a RUNNING trial failed; queue its parameters again when it had chosen them. Returns whether it did."""
    trial = stored_trial(rdb, study, number)
    if trial.state != TrialState.RUNNING:
        return False
    rdb.set_trial_user_attr(trial_id(rdb, study, number), "fail_reason", reason)
    study.tell(number, state=TrialState.FAIL)
    queue_retry(study, trial)
    return True


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue a failed trial's parameters again (when it had chosen them), unless a retry of it exists:
    a worker that found it stale queued one, and a second copy queued once the budget is spent would
    wait for ever. The caller holds the study's lock. Returns whether it queued one."""
    params = params_of(trial)
    if not params or any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(params, user_attrs=retry_attrs(trial))
    return True


def sweep_stale_trials(rdb: optuna.storages.RDBStorage, study: optuna.Study, reason: str) -> int:
    """Fail and retry every RUNNING trial (the caller owns the campaign, so no live process runs them)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return sum(fail_and_retry(rdb, study, t.number, reason) for t in running)


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
