"""One surrogate per (workload, metric) of a campaign, and which workloads they can serve at all.

Reserved memory is known in closed form; every other metric gets the better of a Gaussian process
and a trial-bootstrapped forest (`surrogate.fit_metric`), fitted to every replication of every
complete trial. Whether a metric can decide anything is settled later, against the candidates
(`_rule.settle_decisive`): only a deciding metric's accuracy is required.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from rcutune import sim

from ..surrogate import MetricSurrogate, exact_metric, fit_metric, no_cache_key
from ._data import METRIC_NAMES, METRICS, CampaignData, TrialPoint, reserved_mib


def fit_surrogates(data: CampaignData) -> None:
    """One surrogate per (workload, metric), fitted to every replication of every complete trial."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # tiny matrices: threaded BLAS only oversubscribes the CPUs
        for w in data.workloads:
            w.surrogates = _fit_set(data.hardware, w.trials)


def _fit_set(hw: sim.HardwareProfile, trials: Sequence[TrialPoint]) -> dict[str, MetricSurrogate]:
    rows = [(t.number, t.policy, r, s) for t in trials for r, s in zip(t.runs, _row_seeds(t))]
    out = {
        "reserved_mib": exact_metric(
            "reserved_mib",
            lambda p: reserved_mib(p, hw),
            [row[1] for row in rows],
            [row[2]["reserved_mib"] for row in rows],
            len(trials),
        )
    }
    # Policies with no cache at all are a regime of their own, predicted by their replications.
    cached = [row for row in rows if no_cache_key(row[1]) is None] or rows
    uncached = [row for row in rows if no_cache_key(row[1]) is not None and cached is not rows]
    policies = [row[1] for row in cached]
    groups = [row[0] for row in cached]
    seeds = [row[3] for row in cached]
    for name in METRIC_NAMES[1:]:
        s = fit_metric(name, policies, [row[2][name] for row in cached], groups, seeds=seeds)
        if uncached and not s.per_seed:
            s = replace(s, observed=_observed(s, name, uncached))
        out[name] = s
    return out


def _row_seeds(t: TrialPoint) -> tuple[int, ...]:
    """The seed of each replication of a trial (positions when the trial did not record them)."""
    return t.seeds if len(t.seeds) == len(t.runs) else tuple(range(len(t.runs)))


def _observed(s: MetricSurrogate, name: str, rows) -> dict[tuple[str, float], tuple[float, float]]:
    """Mean and predictive standard deviation (log scale) of each no-cache regime's replications; a
    seed run by several trials of one regime counts once (common random numbers: same arrivals)."""
    by_key: dict[tuple[str, float], dict[int, list[float]]] = {}
    for _, policy, run, seed in rows:
        by_key.setdefault(no_cache_key(policy), {}).setdefault(seed, []).append(float(run[name]))
    out = {}
    for key, per_seed in by_key.items():
        z = np.log(np.maximum([np.mean(v) for v in per_seed.values()], 0.0) + s.offset)
        spread = float(np.std(z, ddof=1)) * math.sqrt(1 + 1 / len(z)) if len(z) >= 2 else 0.0
        out[key] = (float(z.mean()), max(spread, 1e-9))
    return out


def unattainable(data: CampaignData, confidence: float) -> dict[str, str]:
    """{workload: why} for workloads no policy can serve at the confidence level, whatever the model.

    Two facts decide this: a seed-determined constraint (every policy saw the same value on every
    common seed, e.g. the OOM kill a workload's own memory storm causes), whose probability of being
    met is the share of seeds on which it held, the same for every policy; and a constraint broken on
    every run of every policy studied (the baseline N = 0..128 and all the search tried), where no
    model could find a policy that meets it.
    """
    out: dict[str, str] = {}
    limits = {
        name: (float(getattr(data.hardware, slo)) if slo else 0.5)
        for name, _, _, slo in METRICS
        if slo is not None or name == "oom_events"
    }
    for w in data.workloads:
        for name, limit in limits.items():
            what = "an OOM kill" if name == "oom_events" else f"{name} above its SLO ({limit:g})"
            runs = [r[name] for t in w.trials for r in t.runs]
            if runs and min(runs) > limit:
                out[w.name] = f"{what} on every run of every policy studied ({len(w.trials)} policies)"
                break
            s = w.surrogates.get(name)
            if s is None or not s.per_seed:
                continue
            held = sum(v <= limit for v in s.per_seed)
            if held / len(s.per_seed) < confidence:
                out[w.name] = (
                    f"{what} on {len(s.per_seed) - held} of {len(s.per_seed)} seeds under every policy "
                    f"studied (the workload's own, not the cache's)"
                )
                break
    return out


def unhealthy(data: CampaignData, confidence: float) -> dict[str, list[str]]:
    """{workload: ["metric: why", ...]} for every surrogate that fails its accuracy check.

    A workload that no policy can serve (`unattainable`) is left out: no model of it can change the
    answer, so its surrogates are marked not decisive.
    """
    blocked = unattainable(data, confidence)
    out: dict[str, list[str]] = {}
    for w in data.workloads:
        if w.name in blocked:
            w.surrogates = {
                m: s if not s.accuracy.decisive else replace(s, accuracy=replace(s.accuracy, decisive=False))
                for m, s in w.surrogates.items()
            }
            continue
        problems = [f"{m}: {s.accuracy.problem()}" for m, s in w.surrogates.items() if not s.accuracy.healthy]
        if problems:
            out[w.name] = problems
    return out
