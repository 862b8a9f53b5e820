"""Recommending for hardware nobody studied: the nearest studied profile of the family, transferred.

Reserved memory is recomputed exactly for the target, metrics summed over the CPUs scale with the
CPU count, and intervals widen (`EXTRAPOLATION_WIDEN`); `leave_one_profile_out` measures how well
that predicts a profile that was studied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from rcutune import sim

from ..surrogate import Z90, exact_metric
from ._data import METRIC_NAMES, CampaignData, WorkloadData, reserved_mib
from ._models import fit_surrogates

EXTRAPOLATION_WIDEN = 2.0

# Metrics summed over the CPUs (stall and lock time, pending bytes, fallbacks per second): transferred to
# another CPU count in proportion to it; the others (p99 latency, OOM events) as they are.
EXTENSIVE = ("fallback_cost", "sync_fallbacks_per_s", "pending_peak_mib")


def transfer(data: CampaignData, target: sim.HardwareProfile) -> None:
    """Make a fitted campaign predict for another profile of its family: the closed-form reserved
    memory is refitted for the target, CPU-summed metrics scale with the CPU count."""
    source = data.hardware
    data.hardware = target
    ratio = target.cpus / source.cpus
    for w in data.workloads:
        trials = w.trials
        w.surrogates = dict(w.surrogates)
        w.surrogates["reserved_mib"] = exact_metric(
            "reserved_mib",
            lambda p: reserved_mib(p, target),
            [t.policy for t in trials],
            [reserved_mib(t.policy, target) for t in trials],
            len(trials),
        )
        for name in EXTENSIVE:
            w.surrogates[name] = replace(w.surrogates[name], scale=ratio)


@dataclass(frozen=True)
class TransferError:
    """How well one studied profile's surrogates predict another profile's trials (DESIGN.md §5, transfer)."""

    source: str  # campaign the surrogates were fitted on
    target: str  # campaign whose trials they predict
    workload: str
    metric: str
    r2: float | None  # of the target's trial means (log scale), None for a constant target
    coverage: float  # share of the target's replications inside the source's 90% interval
    coverage_widened: float  # the same with the interval widened as an extrapolated recommendation widens it


def nearest_profile(target: sim.HardwareProfile, studied: Sequence[CampaignData]) -> CampaignData:
    """The studied campaign whose hardware is nearest the target (log CPU count, then log memory)."""

    def distance(c: CampaignData) -> tuple[float, float]:
        return (abs(math.log(c.hardware.cpus / target.cpus)), abs(math.log(c.hardware.memory_mib / target.memory_mib)))

    return min(studied, key=distance)


def transfer_error(
    source: CampaignData, target: CampaignData, widen: float = EXTRAPOLATION_WIDEN
) -> list[TransferError]:
    """Predict every trial of `target` with the surrogates of `source`, transferred to the target's
    hardware as an extrapolated recommendation is (`transfer`), and score them."""
    fitted = CampaignData(
        source.name,
        source.url,
        source.hardware,
        source.kernel,
        source.simulator_version,
        source.seeds,
        [WorkloadData(w.name, w.profile, w.seconds, w.trials, w.optuna_name) for w in source.workloads],
        source.search_space,
        source.settings,
        source.objective,
    )
    fit_surrogates(fitted)
    transfer(fitted, target.hardware)
    out = []
    for w in fitted.workloads:
        held = next((x for x in target.workloads if x.name == w.name), None)
        if held is None:
            continue
        for name in METRIC_NAMES:
            s = w.surrogates[name]
            rows = [(t.policy, r[name]) for t in held.trials for r in t.runs]
            z = np.log(np.maximum([v for _, v in rows], 0.0) + s.offset)
            mean, std = s.predict([p for p, _ in rows])
            inside = lambda k, dev=np.abs(z - mean), std=std: float(np.mean(dev <= Z90 * std * k + 1e-9))  # noqa: E731
            means = np.array(
                [np.mean(np.log(np.maximum([r[name] for r in t.runs], 0.0) + s.offset)) for t in held.trials]
            )
            predicted = s.predict([t.policy for t in held.trials])[0]
            ss = float(np.sum((means - means.mean()) ** 2))
            r2 = None if ss <= 1e-12 else 1.0 - float(np.sum((means - predicted) ** 2)) / ss
            out.append(TransferError(source.name, target.name, w.name, name, r2, inside(1.0), inside(widen)))
    return out


def leave_one_profile_out(campaigns: Sequence[CampaignData]) -> list[TransferError]:
    """Hold out each studied profile in turn and predict it from the nearest of the others."""
    out = []
    for i, held in enumerate(campaigns):
        others = [c for j, c in enumerate(campaigns) if j != i]
        if others:
            out += transfer_error(nearest_profile(held.hardware, others), held)
    return out
