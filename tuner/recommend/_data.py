"""A campaign as the recommendation reads it: its profiles, settings and complete trials (read only).

Also the metrics the recommendation works with (`METRICS`), computed the same way from a fresh
simulation (`run_metrics`) and from a stored replication table.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from rcutune import sim, storage

from .._errors import UserError
from ..search import DEFAULT_SETTINGS, QUICK_SETTINGS, feasible, make_seeds, objective_values, stored_profile
from ..surrogate import MetricSurrogate
from ._store import trials_digest

# Metrics the objectives and constraints use: (name, label, unit, SLO attribute of the hardware profile or None).
METRICS = (
    ("reserved_mib", "reserved memory", "MiB", None),
    ("fallback_cost", "fallback cost", "ms/s", None),
    ("call_latency_p99_us", "p99 call latency", "us", "slo_p99_call_latency_us"),
    ("sync_fallbacks_per_s", "synchronize_rcu() fallbacks", "/s", "slo_sync_fallbacks_per_s"),
    ("pending_peak_mib", "pending-memory peak", "MiB", "slo_pending_peak_mib"),
    ("oom_events", "OOM events", "", None),
)
METRIC_NAMES = tuple(m[0] for m in METRICS)
UNITS = {
    "reserved_mib": "MiB",
    "fallback_cost": "ms/s",
    "sync_stall_ms_per_s": "ms/s",
    "pending_peak_mib": "MiB",
    "sync_fallbacks_per_s": "/s",
    "call_latency_p99_us": "us",
    "oom_events": "",
    "scalar": "ms/s",
}
COMPARED = (
    "reserved_mib",
    "fallback_cost",
    "sync_stall_ms_per_s",
    "pending_peak_mib",
    "sync_fallbacks_per_s",
    "call_latency_p99_us",
)


def run_metrics(m: sim.Metrics, hw: sim.HardwareProfile) -> dict[str, float]:
    """The recommendation's metrics of one replication."""
    seconds = max(m.sim_seconds, 1e-9)
    o = objective_values(m, hw)
    return {
        "reserved_mib": o["reserved_mib"],
        "fallback_cost": o["fallback_cost"],
        "scalar": o["scalar"],
        "call_latency_p99_us": m.call_latency_p99_us,
        "sync_fallbacks_per_s": m.sync_fallbacks / seconds,
        "pending_peak_mib": m.bytes_pending_peak / 2**20,
        "oom_events": float(m.oom_events),
        "sync_stall_ms_per_s": 1000.0 * m.sync_stall_seconds / seconds,
    }


def table_runs(table: Mapping[str, Sequence[float | None]]) -> list[dict[str, float]]:
    """The recommendation's metrics of each replication in a stored replication table."""
    runs = []
    for i in range(len(table["sim_seconds"])):
        seconds = max(table["sim_seconds"][i] or 0.0, 1e-9)
        runs.append(
            {
                "reserved_mib": table["reserved_mib"][i],
                "fallback_cost": table["fallback_cost"][i],
                "scalar": table["scalar"][i],
                "call_latency_p99_us": table["call_latency_p99_us"][i],
                "sync_fallbacks_per_s": table["sync_fallbacks"][i] / seconds,
                "pending_peak_mib": table["bytes_pending_peak"][i] / 2**20,
                "oom_events": table["oom_events"][i],
                "sync_stall_ms_per_s": 1000.0 * table["sync_stall_seconds"][i] / seconds,
            }
        )
    return runs


def reserved_mib(policy: Mapping[str, Any], hw: sim.HardwareProfile) -> float:
    """Memory the page cache reserves: N pages per CPU (one pool of CPUs x N for `global`), plus the hybrid reserve."""
    pages = policy["n_per_cpu"] * hw.cpus + (
        policy.get("shared_reserve_pages", 0) if policy["layout"] == "hybrid" else 0
    )
    return pages * hw.page_size / 2**20


@dataclass(frozen=True)
class TrialPoint:
    number: int
    policy: dict[str, Any]
    what_if: bool
    runs: list[dict[str, float]]  # per replication
    feasible: bool
    seeds: tuple[int, ...]

    @property
    def metrics(self) -> dict[str, float]:
        """Means over the replications."""
        return {k: float(np.mean([r[k] for r in self.runs])) for k in self.runs[0]}


@dataclass
class WorkloadData:
    name: str
    profile: sim.WorkloadProfile
    seconds: float
    trials: list[TrialPoint]
    optuna_name: str
    surrogates: dict[str, MetricSurrogate] = field(default_factory=dict)
    optuna_trials: list[FrozenTrial] = field(default_factory=list)  # its complete trials, as Optuna stores them
    directions: list[StudyDirection] = field(default_factory=list)


@dataclass
class CampaignData:
    """A campaign as the recommendation reads it."""

    name: str
    url: str
    hardware: sim.HardwareProfile
    kernel: str
    simulator_version: str
    seeds: tuple[int, ...]
    workloads: list[WorkloadData]
    search_space: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    objective: str = "multi"
    trials_sha256: str | None = None  # `trials_digest` of the campaign's studies when they were read


def load_campaign(url: str, name: str) -> CampaignData:
    """Read a campaign and its complete trials, all from one snapshot of the database; reads only.

    A study or workers may write meanwhile: what is read is the database as it was at one moment
    (`storage.snapshot`), so every study's trials, the digest of the told trials (`trials_sha256`)
    and the trials kept for Optuna's analyses (`WorkloadData.optuna_trials`) agree.

    Raises:
        UserError: no database, no such campaign, or no complete trial in it.
    """
    if not storage.database_exists(url):
        raise UserError(f"{url} does not exist (run rcutune study first)")
    storage.open_database(url, create=False).close()  # the checks (corrupt, foreign, versions), reading only
    with storage.snapshot(url) as snap:
        engine = snap.engine()
        try:
            with Session(engine) as session, session.begin():
                c = storage.find_campaign(session, name)
                if c is None:
                    known = ", ".join(x.name for x in storage.list_campaigns(session)) or "none"
                    raise UserError(f"no campaign named '{name}' in {url} (campaigns: {known})")
                hw = stored_profile(c, "hardware", c.hardware_profile)
                studies = [
                    (s.workload_name, stored_profile(c, "workload", s.workload_profile), s.optuna_study_name)
                    for s in c.studies
                ]
                data = CampaignData(
                    c.name,
                    url,
                    hw,
                    c.kernel,
                    c.simulator_version,
                    tuple(c.seeds),
                    [],
                    dict(c.search_space),
                    dict(c.settings or {}),
                    c.objective,
                )
            data.trials_sha256 = trials_digest(engine, [optuna_name for _, _, optuna_name in studies])
        finally:
            engine.dispose()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            rdb = optuna.storages.RDBStorage(snap.url, engine_kwargs=snap.engine_kwargs, skip_table_creation=True)
        snap.prepare(rdb.engine)
        try:
            names = set(optuna.get_all_study_names(rdb))
            for workload, text, optuna_name in studies:
                if optuna_name not in names:
                    continue
                study = optuna.load_study(study_name=optuna_name, storage=rdb)
                complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                points = []
                seconds = 0.0
                for t in complete:
                    table = t.user_attrs.get("replications")
                    if not table or "policy" not in t.user_attrs:
                        continue
                    seconds = float(t.user_attrs.get("seconds", seconds))
                    points.append(
                        TrialPoint(
                            t.number,
                            dict(t.user_attrs["policy"]),
                            bool(t.user_attrs.get("what_if_reasons")),
                            table_runs(table),
                            feasible(t.constraints),
                            tuple(t.user_attrs.get("seeds", ())),
                        )
                    )
                if points:
                    data.workloads.append(
                        WorkloadData(
                            workload,
                            text,
                            seconds,
                            points,
                            optuna_name,
                            optuna_trials=list(complete),
                            directions=list(study.directions),
                        )
                    )
        finally:
            rdb.remove_session()
            rdb.engine.dispose()
    if not data.workloads:
        raise UserError(
            f"campaign '{name}' has no complete trials yet; run rcutune study --hardware "
            f"{data.hardware.name} --study {name} first"
        )
    return data


def study_command(data: CampaignData, workloads: Sequence[str], trials: int) -> str:
    """The `rcutune study` line that adds `trials` trials to these workloads' studies of this campaign,
    with the flags its stored definition needs to be resumed (preset, fidelity, seeds, kernel, objective)."""
    parts = ["rcutune study", f"--hardware {data.hardware.name}", f"--study {data.name}"]
    parts += [f"--workload {w}" for w in workloads]
    parts.append(f"--trials {trials}")
    stored = data.settings
    quick = bool(stored) and all(
        stored.get(k) == v
        for k, v in QUICK_SETTINGS.as_dict().items()
        if k not in ("max_seconds", "replications", "race_replications")
    )
    preset = (QUICK_SETTINGS if quick else DEFAULT_SETTINGS).as_dict()
    if quick:
        parts.append("--quick")
    for key, flag in (
        ("max_seconds", "--seconds"),
        ("replications", "--replications"),
        ("race_replications", "--race-replications"),
    ):
        if key in stored and stored[key] != preset[key]:
            parts.append(f"{flag} {stored[key]:g}")
    seed = next((k for k in range(10_000) if list(make_seeds(k, len(data.seeds))) == list(data.seeds)), None)
    if seed:
        parts.append(f"--seed {seed}")
    if data.kernel != sim.DEFAULT_KERNEL:
        parts.append(f"--kernel {data.kernel}")
    if data.objective != "multi":
        parts.append(f"--objective {data.objective}")
    return " ".join(parts) + storage.storage_option(data.url)
