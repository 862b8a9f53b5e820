"""`rcutune studies`: what a database holds, campaign by campaign."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import TrialState

from rcutune import storage

from ._protocol import raced_best


@dataclass(frozen=True)
class StudySummary:
    """One study's trial counts and best (raced, feasible) trial."""

    optuna_name: str
    workload: str
    complete: int
    pruned: int
    failed: int
    other: int  # running or waiting
    best_number: int | None
    best_values: dict[str, float] | None  # all-seed means of reserved_mib, fallback_cost, scalar
    last_activity: datetime | None
    best_policy: dict[str, object] | None = None  # the best trial's sim.Policy fields


@dataclass(frozen=True)
class CampaignSummary:
    name: str
    hardware: str
    kernel: str
    objective: str
    created_at: datetime
    updated_at: datetime
    studies: tuple[StudySummary, ...]


def list_studies(url: str) -> list[CampaignSummary]:
    """Every campaign in the database at `url` with its studies; creates nothing.

    Raises:
        storage.StorageError: no such database, or one that cannot be opened.
    """
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            campaigns = storage.list_campaigns(session)
            rows = [
                (
                    c.name,
                    c.hardware_name,
                    c.kernel,
                    c.objective,
                    c.created_at,
                    c.updated_at,
                    [(s.optuna_study_name, s.workload_name) for s in c.studies],
                )
                for c in campaigns
            ]
    finally:
        db.close()
    if not rows:
        return []
    rdb = optuna.storages.RDBStorage(url, engine_kwargs=storage.engine_kwargs(url), skip_table_creation=True)
    try:
        names = set(optuna.get_all_study_names(rdb))
        out = []
        for name, hardware, kernel, objective, created, updated, studies in rows:
            summaries = []
            for optuna_name, workload in studies:
                trials = (
                    optuna.load_study(study_name=optuna_name, storage=rdb).get_trials(deepcopy=False)
                    if optuna_name in names
                    else []
                )
                summaries.append(_summarise(optuna_name, workload, trials))
            out.append(CampaignSummary(name, hardware, kernel, objective, created, updated, tuple(summaries)))
        return out
    finally:
        rdb.engine.dispose()


def _summarise(optuna_name: str, workload: str, trials: list[optuna.trial.FrozenTrial]) -> StudySummary:
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    best = raced_best(trials)
    values = None
    if best is not None:
        summary = best.user_attrs.get("summary", {})
        values = {k: summary[k]["mean"] for k in ("reserved_mib", "fallback_cost", "scalar") if k in summary}
    stamps = [t.datetime_complete or t.datetime_start for t in trials if (t.datetime_complete or t.datetime_start)]
    return StudySummary(
        optuna_name,
        workload,
        count[TrialState.COMPLETE],
        count[TrialState.PRUNED],
        count[TrialState.FAIL],
        count[TrialState.RUNNING] + count[TrialState.WAITING],
        best.number if best else None,
        values,
        max(stamps) if stamps else None,
        dict(best.user_attrs.get("policy", {})) if best else None,
    )
