"""Checking a recommendation by simulation on fresh seeds the search never used.

Every policy a recommendation looks at runs the same fresh seeds (common random numbers), so two
policies are compared pair by pair; `FreshRuns` runs each (workload, policy) once per recommendation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import numpy as np

from rcutune import sim

from ..search import constraint_values, mean_ci
from ._data import COMPARED, CampaignData, WorkloadData, run_metrics
from ._types import Confirmation, KnobChange, Stat

FRESH_SEED_SALT = 0x5EED_F2E5


def fresh_seeds(campaign_seeds: Sequence[int], count: int) -> tuple[int, ...]:
    """Seeds derived from the campaign's seed list that the search never used."""
    used = set(int(s) for s in campaign_seeds)
    state = np.random.SeedSequence([*[int(s) for s in campaign_seeds], FRESH_SEED_SALT]).generate_state(
        count + len(used)
    )
    return tuple(int(s) for s in state if int(s) not in used)[:count]


class FreshRuns:
    """Simulations of (workload, policy) on the recommendation's fresh seeds, each run once."""

    def __init__(self, data: CampaignData, seeds: Sequence[int]) -> None:
        self.data = data
        self.seeds = tuple(seeds)
        self._runs: dict[tuple[str, sim.Policy], list[sim.Metrics]] = {}

    def __call__(self, w: WorkloadData, policy: sim.Policy) -> list[sim.Metrics]:
        key = (w.name, policy)
        if key not in self._runs:
            self._runs[key] = [
                sim.simulate(self.data.hardware, w.profile, policy, seconds=w.seconds, seed=s, kernel=self.data.kernel)
                for s in self.seeds
            ]
        return self._runs[key]

    def metric(self, w: WorkloadData, policy: sim.Policy, name: str) -> np.ndarray:
        """One recommendation metric of each fresh seed's run."""
        return np.array([run_metrics(m, self.data.hardware)[name] for m in self(w, policy)])

    def confirmation(self, w: WorkloadData, policy: sim.Policy, *, with_n_zero: bool = True) -> Confirmation:
        """`policy` on the fresh seeds, against the kernel default (and N=0) on the same seeds."""
        hw = self.data.hardware
        default = sim.Policy.kernel_default(sim.kernel_behaviour(self.data.kernel))
        runs, base = self(w, policy), self(w, default)
        zero = self(w, default.with_(n_per_cpu=0)) if with_n_zero else None
        return Confirmation(
            self.seeds,
            w.seconds,
            constraint_values(runs, hw),
            summarise(hw, runs),
            summarise(hw, base),
            paired(hw, runs, base),
            {} if zero is None else summarise(hw, zero),
            {} if zero is None else paired(hw, runs, zero),
        )


def summarise(hw: sim.HardwareProfile, runs: Sequence[sim.Metrics]) -> dict[str, Stat]:
    """Mean and 95 % interval of each compared metric over the runs."""
    rows = [run_metrics(m, hw) for m in runs]
    return {name: Stat(*mean_ci([r[name] for r in rows])) for name in COMPARED}


def paired(hw: sim.HardwareProfile, runs_a: Sequence[sim.Metrics], runs_b: Sequence[sim.Metrics]) -> dict[str, Stat]:
    """Paired difference a - b of each compared metric (the same seeds), mean and 95 % interval."""
    a = [run_metrics(m, hw) for m in runs_a]
    b = [run_metrics(m, hw) for m in runs_b]
    return {name: Stat(*mean_ci([x[name] - y[name] for x, y in zip(a, b)])) for name in COMPARED}


KNOBS = tuple(f.name for f in fields(sim.Policy) if f.name != "n_per_cpu")


def minimal_change(
    policy: sim.Policy,
    served: Sequence[WorkloadData],
    fresh: FreshRuns,
    threshold: float,
) -> tuple[sim.Policy, tuple[KnobChange, ...]]:
    """Put every knob other than N back to the kernel default unless keeping it pays.

    A changed knob is kept only when, on the fresh seeds averaged over the served workloads, the
    paired saving in scalar cost of keeping it is shown to exceed `threshold` (the whole 95 %
    interval above it: a mean above it on noisy seeds shows nothing), or when reverting it would break
    a constraint the changed policy meets there. Returns the policy and what each change buys.
    """
    default = sim.Policy.kernel_default(sim.kernel_behaviour(fresh.data.kernel))
    changes = []
    for knob in KNOBS:
        value, base = getattr(policy, knob), getattr(default, knob)
        if value == base:
            continue
        reverted = _revert(policy, knob, base)
        if reverted is None:
            continue
        saving = sum(fresh.metric(w, reverted, "scalar") - fresh.metric(w, policy, "scalar") for w in served) / len(
            served
        )
        buys = Stat(*mean_ci(saving.tolist()))
        needed = any(_feasible(fresh, w, policy) and not _feasible(fresh, w, reverted) for w in served)
        kept = buys.mean - (buys.ci95 or 0.0) > threshold or needed
        changes.append(KnobChange(knob, value, base, buys, kept))
        if not kept:
            policy = reverted
    return policy, tuple(changes)


def _revert(policy: sim.Policy, knob: str, value: object) -> sim.Policy | None:
    changes = {knob: value}
    if knob == "layout" and value != "hybrid":
        changes["shared_reserve_pages"] = 0
    if knob == "shared_reserve_pages" and policy.layout == "hybrid":
        return None  # a hybrid pool's reserve goes with its layout
    try:
        return policy.with_(**changes)
    except ValueError:
        return None


def _feasible(fresh: FreshRuns, w: WorkloadData, policy: sim.Policy) -> bool:
    return all(v <= 0 for v in constraint_values(fresh(w, policy), fresh.data.hardware).values())
