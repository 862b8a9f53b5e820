"""The recommendation rule: from fitted surrogates to the policy to boot with (DESIGN.md §5).

Per workload, the cheapest policy (predicted scalar cost: fallback cost plus reserved memory per
GiB) whose probability of meeting every SLO is at least the confidence level. Costs closer than the
practical threshold are ties, and a tie goes to the stock kernel's policy, then to the fewest knobs
changed from the kernel default, then to the N nearest the kernel's, then to the smaller N: a
recommendation changes nothing that does not pay. Overall: the same rule over every workload some
stock-kernel policy can serve, costs averaged over them. Then knobs other than N go back to their
defaults unless fresh seeds show they pay (`_confirm.minimal_change`), the choice is confirmed on
fresh seeds, and its N is explained.

Practical thresholds (`practical_thresholds`) come from the hardware profile's SLOs and the
objective's weights, the same rule for every profile: a metric whose whole predicted range over
the candidates stays below its threshold can neither decide nor block a recommendation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from rcutune import sim

from .._errors import UserError
from ..search import PENDING_PEAK_COST_MS
from ..surrogate import MetricSurrogate, no_cache_key
from ._confirm import FreshRuns, fresh_seeds, minimal_change
from ._data import METRIC_NAMES, METRICS, CampaignData, WorkloadData, study_command
from ._models import unattainable, unhealthy
from ._types import (
    CONFIRM_SEEDS,
    DEFAULT_CONFIDENCE,
    Choice,
    Interval,
    NExplanation,
    Recommendation,
    SurrogateFigures,
    WorkloadRecommendation,
)

TIE_TOLERANCE = 0.02
"""Costs within 2 % of each other are ties too (where that is more than the practical threshold)."""
PRACTICAL_FRACTION = 0.5
"""What is too small to matter: half an SLO, and half what a pending-memory peak at its SLO costs."""
N_GRID = tuple(range(0, 17)) + (20, 24, 32, 48, 64, 96, 128)
CONSTRAINT_METRICS = tuple(name for name, _, _, slo in METRICS if slo is not None) + ("oom_events",)


def practical_thresholds(hw: sim.HardwareProfile) -> dict[str, float]:
    """Per metric, the size below which it cannot matter to a recommendation.

    fallback_cost: `PRACTICAL_FRACTION` of what the objective charges for a pending-memory peak at
    its SLO (1 ms/s), i.e. 0.5 ms of lost CPU time per second; the same for every profile. SLO
    metrics: `PRACTICAL_FRACTION` of their SLO. OOM events: half an event per run.
    """
    out = {"fallback_cost": PRACTICAL_FRACTION * PENDING_PEAK_COST_MS}
    for name, _, _, slo in METRICS:
        if slo is not None:
            out[name] = PRACTICAL_FRACTION * float(getattr(hw, slo))
    out["oom_events"] = 0.5
    return out


def candidate_policies(data: CampaignData) -> list[dict[str, Any]]:
    """Every policy a study ran, plus the faithful per-CPU grid over N with the kernel's other defaults."""
    default = asdict(sim.Policy.kernel_default(sim.kernel_behaviour(data.kernel)))
    seen, out = set(), []
    for p in [dict(default, n_per_cpu=n) for n in N_GRID] + [t.policy for w in data.workloads for t in w.trials]:
        key = tuple(sorted(p.items()))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def settle_decisive(
    data: CampaignData, candidates: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float]
) -> None:
    """Mark each surrogate decisive or not: whether its whole predicted range over the candidates (and
    every observed value) reaches its practical threshold. Only a decisive metric's accuracy is required,
    and only where the estimator's own part decides: the same test over the candidates it predicts
    (those that cache pages; N = 0 is measured, not predicted) sets `estimator_decides`.

    fallback_cost decides when the spread of its means (highest 90 % bound of a predicted mean minus
    the lowest, and every trial's observed mean) reaches the threshold: the cost compares means, so a
    policy whose single runs vary widely does not make it decide. A constraint decides when its
    highest 90 % bound of a single run (or any run) does, so that it could come near its SLO.
    """
    cached = [p for p in candidates if no_cache_key(p) is None]
    for w in data.workloads:
        settled = {}
        for name, s in w.surrogates.items():
            if name not in thresholds:
                settled[name] = s
                continue
            threshold = thresholds[name]
            of_means = name == "fallback_cost"
            observed = _observed_values(w.trials, name, of_means)
            decisive = _reaches(name, _bounds(s, candidates, observed, of_means), observed, threshold)
            runs = _observed_values([t for t in w.trials if no_cache_key(t.policy) is None], name, of_means)
            bottom, top = _bounds(s, cached, runs, of_means) if cached else (0.0, 0.0)
            estimated = bool(cached) and _reaches(name, (bottom, top), runs, threshold)
            narrow = name != "fallback_cost" and bool(cached) and top - bottom < threshold
            flags = {"decisive": decisive, "estimator_decides": estimated, "narrow": narrow}
            if any(getattr(s.accuracy, k) != v for k, v in flags.items()):
                s = replace(s, accuracy=replace(s.accuracy, **flags))
            settled[name] = s
        w.surrogates = settled


def _observed_values(trials, name: str, of_means: bool) -> list[float]:
    """Every run's value of metric `name`, or each trial's mean."""
    if of_means:
        return [float(np.mean([r[name] for r in t.runs])) for t in trials if t.runs]
    return [r[name] for t in trials for r in t.runs]


def _bounds(
    s: MetricSurrogate, policies: Sequence[Mapping[str, Any]], observed: list[float], of_means: bool = False
) -> tuple[float, float]:
    """The lowest 90 % bound (or observation) and the highest, over these policies: of a single run, or
    of the predicted mean (`of_means`)."""
    _, lo, hi = s.mean_interval(policies) if of_means else s.interval(policies)
    return min(float(np.min(lo)), min(observed, default=0.0)), max(float(np.max(hi)), max(observed, default=0.0))


def _reaches(name: str, bounds: tuple[float, float], observed: list[float], threshold: float) -> bool:
    """Whether metric `name`, within `bounds` (see `_bounds`), reaches its practical `threshold`."""
    bottom, top = bounds
    if name == "fallback_cost":
        return top - bottom >= threshold
    if name == "oom_events":
        return top > threshold or max(observed, default=0.0) > 0
    return top >= threshold


def p_meet(
    surrogates: Mapping[str, MetricSurrogate],
    hw: sim.HardwareProfile,
    policies: Sequence[Mapping[str, Any]],
    widen: float = 1.0,
) -> np.ndarray:
    """P(every SLO met and no OOM) per policy, the constraints taken as independent; a constraint that
    cannot come near its SLO (not decisive) counts as met."""
    p = np.ones(len(policies))
    for name, _, _, slo in METRICS:
        if slo is not None and surrogates[name].accuracy.decisive:
            p *= surrogates[name].prob_at_most(policies, float(getattr(hw, slo)), widen)
    if surrogates["oom_events"].accuracy.decisive:
        p *= surrogates["oom_events"].prob_at_most(policies, 0.5, widen)  # under half an OOM per run: none
    return p


def cost(
    surrogates: Mapping[str, MetricSurrogate], hw: sim.HardwareProfile, policies: Sequence[Mapping[str, Any]]
) -> np.ndarray:
    """Predicted scalar cost: reserved memory per GiB, plus the fallback cost where it can decide."""
    reserved = surrogates["reserved_mib"].interval(policies)[0]
    out = reserved / (hw.memory_mib / 1024)
    if surrogates["fallback_cost"].accuracy.decisive:
        out = out + surrogates["fallback_cost"].interval(policies)[0]
    return out


def is_what_if(policy: Mapping[str, Any], kernel: str) -> tuple[str, ...]:
    return sim.Policy(**policy).what_if_reasons(sim.kernel_behaviour(kernel))


def changed_knobs(policy: Mapping[str, Any], kernel: str) -> int:
    """How many knobs other than N differ from the kernel default."""
    default = asdict(sim.Policy.kernel_default(sim.kernel_behaviour(kernel)))
    return sum(policy[k] != default[k] for k in default if k != "n_per_cpu")


def rank(
    policies: Sequence[Mapping[str, Any]],
    probs: np.ndarray,
    costs: np.ndarray,
    kernel: str,
    confidence: float,
    threshold: float = 0.0,
) -> list[int]:
    """Indices of the policies meeting `confidence`, best first.

    Cheapest first; costs within `threshold` (or 2 %) of the cheapest remaining are ties, ordered
    stock-kernel policy first, then fewest knobs changed from the kernel default, then N nearest the
    kernel default's, then lower N.
    """
    default_n = sim.Policy.kernel_default(sim.kernel_behaviour(kernel)).n_per_cpu
    ok = sorted((i for i in range(len(policies)) if probs[i] >= confidence), key=lambda i: costs[i])
    ordered: list[int] = []
    while ok:
        floor = costs[ok[0]]
        tied = [i for i in ok if costs[i] <= floor + max(threshold, TIE_TOLERANCE * abs(floor)) + 1e-12]
        tied.sort(
            key=lambda i: (
                bool(is_what_if(policies[i], kernel)),
                changed_knobs(policies[i], kernel),
                abs(policies[i]["n_per_cpu"] - default_n),
                policies[i]["n_per_cpu"],
                costs[i],
            )
        )
        ordered += tied
        ok = [i for i in ok if i not in tied]
    return ordered


def _predicted(
    surrogates: Mapping[str, MetricSurrogate], policy: Mapping[str, Any], widen: float
) -> dict[str, Interval]:
    out = {}
    for name in METRIC_NAMES:
        mid, lo, hi = surrogates[name].interval([policy], widen)
        out[name] = Interval(float(mid[0]), float(max(lo[0], 0.0)), float(hi[0]))
    return out


class _Judge:
    """Probabilities and costs of the candidates for a set of workloads (one, or all served ones)."""

    def __init__(
        self,
        data: CampaignData,
        workloads: Sequence[WorkloadData],
        policies: Sequence[dict[str, Any]],
        confidence: float,
        widen: float,
        threshold: float,
    ) -> None:
        self.data, self.workloads, self.policies = data, list(workloads), list(policies)
        self.confidence, self.widen, self.threshold = confidence, widen, threshold
        hw = data.hardware
        self.probs = np.stack([p_meet(w.surrogates, hw, policies, widen) for w in workloads]).min(axis=0)
        # The mean over the workloads: each is one way the machine runs, and the memory is reserved once.
        self.costs = np.mean([cost(w.surrogates, hw, policies) for w in workloads], axis=0)
        self.order = rank(policies, self.probs, self.costs, data.kernel, confidence, threshold)
        self.faithful = [i for i in self.order if not is_what_if(policies[i], data.kernel)]

    def choice(self, policy: Mapping[str, Any], gain: float | None = None) -> Choice:
        hw = self.data.hardware
        p = min(float(p_meet(w.surrogates, hw, [policy], self.widen)[0]) for w in self.workloads)
        c = float(np.mean([cost(w.surrogates, hw, [policy])[0] for w in self.workloads]))
        return Choice(
            sim.Policy(**policy),
            self.data.kernel,
            p,
            c,
            {w.name: _predicted(w.surrogates, policy, self.widen) for w in self.workloads},
            is_what_if(policy, self.data.kernel),
            gain,
        )

    def best(self) -> tuple[Choice | None, Choice | None]:
        """The best stock-kernel policy, and the best of all when it is a what-if cheaper by more than the threshold."""
        if not self.faithful:
            return None, None
        faithful = self.choice(self.policies[self.faithful[0]])
        top = self.order[0]
        if is_what_if(self.policies[top], self.data.kernel) and self.costs[top] < faithful.cost - self.threshold:
            return faithful, self.choice(self.policies[top], faithful.cost - float(self.costs[top]))
        return faithful, None


def recommend(
    data: CampaignData,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    confirm_seeds: int = CONFIRM_SEEDS,
    widen: float = 1.0,
    extrapolated: bool = False,
) -> Recommendation:
    """The recommendation for every workload of a fitted campaign (call `fit_surrogates` first)."""
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
    hw = data.hardware
    policies = candidate_policies(data)
    thresholds = practical_thresholds(hw)
    settle_decisive(data, policies, thresholds)
    bad = unhealthy(data, confidence)
    blocked = unattainable(data, confidence)
    fresh = FreshRuns(data, fresh_seeds(data.seeds, confirm_seeds))
    threshold = thresholds["fallback_cost"]
    results = []
    for w in data.workloads:
        if bad.get(w.name) or w.name in blocked:
            results.append(
                WorkloadRecommendation(
                    w.name, None, problems=tuple(bad.get(w.name, ())), unattainable=blocked.get(w.name)
                )
            )
            continue
        judge = _Judge(data, [w], policies, confidence, widen, threshold)
        faithful, what_if = judge.best()
        confirmed, confirmation = None, None
        if faithful is not None and confirm_seeds > 0:
            # The first of the three best stock-kernel candidates whose fresh replications meet every constraint.
            confirmed = False
            for i in judge.faithful[:3]:
                check = fresh.confirmation(w, sim.Policy(**policies[i]))
                if confirmation is None or check.feasible:
                    confirmation = check
                if check.feasible:
                    confirmed = True
                    if policies[i] != asdict(faithful.policy):
                        faithful = judge.choice(policies[i])
                    break
        results.append(WorkloadRecommendation(w.name, faithful, what_if, confirmed, confirmation))
    served = [w for w in data.workloads if any(r.workload == w.name and r.faithful for r in results)]
    overall = overall_what_if = explanation = None
    knob_changes: tuple = ()
    overall_confirmation = {}
    if served and not bad:
        judge = _Judge(data, served, policies, confidence, widen, threshold)
        overall, overall_what_if = judge.best()
        if overall is not None and confirm_seeds > 0:
            kept, knob_changes = minimal_change(overall.policy, served, fresh, threshold)
            if kept != overall.policy:
                overall = judge.choice(asdict(kept))
            overall_confirmation = {w.name: fresh.confirmation(w, overall.policy, with_n_zero=False) for w in served}
        if overall is not None:
            explanation = explain_n(judge, overall)
    fix = None
    if bad:
        # Doubling the trials of the failing studies: CV error falls as the design fills the space.
        trials = max(len(w.trials) for w in data.workloads if w.name in bad)
        fix = study_command(data, list(bad), trials)
    return Recommendation(
        campaign=data.name,
        hardware=hw.name,
        kernel=data.kernel,
        simulator_version=data.simulator_version,
        confidence=confidence,
        seeds=tuple(data.seeds),
        fresh_seeds=fresh.seeds,
        overall=overall,
        overall_what_if=overall_what_if,
        workloads=tuple(results),
        surrogate={w.name: surrogate_figures(w.surrogates) for w in data.workloads},
        thresholds=thresholds,
        unhealthy=bad,
        overall_confirmation=overall_confirmation,
        knob_changes=knob_changes,
        n_explanation=explanation,
        extrapolated=extrapolated,
        fix_command=fix,
        served=tuple(w.name for w in served),
        profiles={
            "hardware": sim.profile_text(hw),
            "workloads": {w.name: sim.profile_text(w.profile) for w in data.workloads},
        },
    )


def explain_n(judge: _Judge, choice: Choice) -> NExplanation:
    """Why the overall N is not one step nearer the kernel default: the workload that holds it there (predicted)."""
    n = choice.policy.n_per_cpu
    default_n = sim.Policy.kernel_default(sim.kernel_behaviour(judge.data.kernel)).n_per_cpu
    t = judge.threshold
    if n == default_n:
        return NExplanation(
            n,
            None,
            f"the kernel default: no other N changes the predicted cost by more than the "
            f"practical {t:g} ms/s while meeting every SLO",
        )
    step = n - 1 if n > default_n else n + 1
    nearer = choice.policy.with_(n_per_cpu=step, refill_low_watermark=min(choice.policy.refill_low_watermark, step))
    hw = judge.data.hardware
    probs = {w.name: float(p_meet(w.surrogates, hw, [asdict(nearer)], judge.widen)[0]) for w in judge.workloads}
    worst = min(probs, key=probs.get)  # type: ignore[arg-type]
    if probs[worst] < judge.confidence:
        return NExplanation(
            n,
            worst,
            f"with N={step}, {worst} meets every SLO with probability {probs[worst]:.3f} < {judge.confidence:g}",
        )
    cheapest_index = min(judge.order, key=lambda i: judge.costs[i])
    cheapest = judge.policies[cheapest_index]
    rise = {
        w.name: float(cost(w.surrogates, hw, [asdict(nearer)])[0] - cost(w.surrogates, hw, [cheapest])[0])
        for w in judge.workloads
    }
    total = sum(rise.values()) / len(rise)
    top = max(rise, key=rise.get)  # type: ignore[arg-type]
    floor = float(judge.costs[cheapest_index])
    if total > max(t, TIE_TOLERANCE * abs(floor)):
        return NExplanation(
            n,
            top,
            f"with N={step} the predicted cost is {floor + total:.3g} ms/s, more than the "
            f"practical {t:g} ms/s above the cheapest ({floor:.3g} ms/s at "
            f"N={cheapest['n_per_cpu']}); most of it in {top} (+{rise[top]:.3g} ms/s there)",
        )
    return NExplanation(
        n,
        None,
        f"N={step} costs within the practical {t:g} ms/s of the cheapest, but no studied "
        f"policy with it ties with the other knobs as chosen",
    )


def surrogate_figures(models: Mapping[str, MetricSurrogate]) -> dict[str, SurrogateFigures]:
    from ..surrogate import describe

    return {
        m: SurrogateFigures(
            s.accuracy.estimator,
            s.accuracy.n_trials,
            s.accuracy.cv_r2,
            s.accuracy.rank_correlation,
            s.accuracy.coverage,
            bool(s.accuracy.decisive),
            s.accuracy.noise_limited,
            s.accuracy.healthy,
            describe(s),
            s.accuracy.estimator_decides,
            s.accuracy.narrow,
            s.accuracy.explainable_r2,
        )
        for m, s in models.items()
    }
