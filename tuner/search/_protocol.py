"""The one protocol every trial follows, whether `rcutune study` or an `rcutune worker` runs it.

A study advances in batches of `Settings.batch_size` trials. A batch is planned only once every
earlier trial is told, from those trials alone: the initial design first, then untried neighbours
of the best trial and sampler suggestions (`plan_batch`). Each trial of a batch then runs
`trial_protocol`: a low-fidelity run, pruned when an earlier batch's trial makes it hopeless, else
the base seeds, then the racing seeds when it ranks among the earlier batches' best. Nothing in a
batch depends on another trial of the same batch, so the stored trials are a function of the
campaign's definition and seed, not of how many processes ran them or in which order they finished.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from rcutune import sim

from ._campaign import CampaignDefinition
from ._objective import (
    CONSTRAINTS,
    OBJECTIVES,
    constraint_values,
    feasible,
    objective_values,
    replication_table,
    summary_table,
)
from ._space import SearchSpace

SAMPLERS = ("tpe", "random")
MAX_FAILURES_IN_A_ROW = 2
"""A study stops after this many failed trials in a row (a workload the simulator cannot run)."""
REFINE_EVERY = 3
"""Once the design is done, every third trial tries an untried neighbour of the best trial."""
LABELS = ("design", "refines", "batch", "slot")
"""The user attributes a planned trial is enqueued with (a retried trial keeps them).

`batch` and `slot` (its place in the batch) name what a trial is for: of one batch's slot, at most
one trial ends complete or pruned; the others failed (and were retried)."""

SimJob = tuple[int, float]
"""One simulation a protocol asks for: (seed, simulated seconds)."""


@dataclass(frozen=True)
class Seen:
    """A told trial as later decisions see it: its low-fidelity values and its base-seed means."""

    number: int
    low: dict[str, float] | None = None
    low_feasible: bool = False
    base: dict[str, float] | None = None
    base_feasible: bool = False


@dataclass(frozen=True)
class Planned:
    """A trial a batch plan enqueues: its parameter values and the labels it is stored with."""

    params: dict[str, Any]
    attrs: dict[str, Any]


@dataclass(frozen=True)
class TrialRun:
    """What the protocol did with one trial: its runs and the decisions taken about it."""

    low: sim.Metrics
    runs: tuple[sim.Metrics, ...] = ()  # base seeds first, then the racing seeds if `raced`
    raced: bool = False
    pruned_by: int | None = None

    @property
    def state(self) -> TrialState:
        return TrialState.PRUNED if self.pruned_by is not None else TrialState.COMPLETE


def make_sampler(kind: str, d: CampaignDefinition, workload: str, history: int) -> optuna.samplers.BaseSampler:
    """The sampler of a batch, seeded by the campaign's seeds, the workload and the trials so far.

    The same seed for the same history: a resumed or distributed study asks the same questions.
    """
    entropy = [d.seeds[0], zlib.crc32(workload.encode()), history]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: the batch's earlier suggestions count as bad guesses, so a batch spreads out.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=5
        )


def batch_of(trial: FrozenTrial) -> int:
    """The batch a trial belongs to (-1 for trials stored before batches existed)."""
    return int(trial.user_attrs.get("batch", -1))


def plan_batch(
    trials: Sequence[FrozenTrial], d: CampaignDefinition, workload: str, *, size: int, sampler: str, refine: bool
) -> list[Planned]:
    """The next batch of a study whose every trial is told: at most `size` trials.

    Design points not yet tried come first (the kernel default, N=0, then log-spaced N); after
    them, with `refine`, every `REFINE_EVERY`-th trial is an untried neighbour of the best trial so
    far (a pattern search that polishes it); the sampler suggests the rest.
    """
    space = d.space
    index = max((batch_of(t) for t in trials), default=-1) + 1
    tried = [params_of(t) for t in trials]
    planned: list[Planned] = []

    def untried(params: Mapping[str, Any]) -> bool:
        return not any(same(params, p) for p in tried + [q.params for q in planned])

    design = [(label, values) for label, values in space.initial_design() if untried(values)]
    seen = [s for s in (seen_from(t, d) for t in trials) if s is not None]
    best = best_number(seen)
    neighbours_left = (
        neighbours(space, dict(trials_by_number(trials)[best].params)) if refine and best is not None else []
    )
    counted = sum(t.state != TrialState.FAIL for t in trials)
    sampled = 0
    for slot in range(size):
        if design:
            label, values = design.pop(0)
            planned.append(Planned(values, {"design": label, "batch": index, "slot": slot}))
            continue
        if refine and (counted + slot) % REFINE_EVERY == 0:
            choice = next((p for p in neighbours_left if untried(p)), None)
            if choice is not None:
                planned.append(Planned(choice, {"refines": best, "batch": index, "slot": slot}))
                continue
        planned.append(Planned({}, {"batch": index, "slot": slot}))  # filled by the sampler below
        sampled += 1
    if sampled:
        suggestions = iter(_suggest(trials, d, workload, [p.params for p in planned if p.params], sampled, sampler))
        planned = [p if p.params else Planned(next(suggestions), p.attrs) for p in planned]
    return planned


def _suggest(
    trials: Sequence[FrozenTrial],
    d: CampaignDefinition,
    workload: str,
    pending: list[dict[str, Any]],
    count: int,
    sampler: str,
) -> list[dict[str, Any]]:
    """`count` sampler suggestions after the told trials, the batch's other trials counting as running.

    The sampler runs on an in-memory copy of the study, so planning a batch writes nothing and
    every process that plans it from the same trials plans the same batch.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        mirror = optuna.create_study(directions=directions(d), sampler=make_sampler(sampler, d, workload, len(trials)))
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            mirror.add_trial(
                optuna.trial.create_trial(
                    state=t.state,
                    params=t.params,
                    distributions=t.distributions,
                    values=t.values if t.state == TrialState.COMPLETE else None,
                    intermediate_values=t.intermediate_values,
                )
            )
    for params in pending:
        mirror.enqueue_trial(params)
    out = []
    for i in range(len(pending) + count):
        values = d.space.suggest(mirror.ask())
        if i >= len(pending):
            out.append(values)
    return out


def directions(d: CampaignDefinition) -> list[str]:
    return ["minimize"] if d.objective == "scalar" else ["minimize"] * len(OBJECTIVES)


def trial_protocol(
    d: CampaignDefinition, workload: sim.WorkloadProfile, label: str | None, seen: Sequence[Seen]
) -> Generator[list[SimJob], list[sim.Metrics], TrialRun]:
    """One trial, as a generator: it yields the simulations it needs and receives their metrics.

    Low fidelity (a fraction of the simulated time, first seed); pruned when an earlier trial,
    feasible there, makes it hopeless (design trials never are); else the base seeds; then the
    racing seeds when it ranks among the best so far (and always for the kernel default).
    `seen` holds the trials of earlier batches only.
    """
    seconds, low_seconds = d.settings.seconds_for(workload), d.settings.low_seconds_for(workload)
    (low,) = yield [(d.seeds[0], low_seconds)]
    by = pruned_by(objective_values(low, d.hardware), seen, d) if label is None else None
    if by is not None:
        return TrialRun(low, pruned_by=by)
    r = d.settings.replications
    runs = list((yield [(seed, seconds) for seed in d.seeds[:r]]))
    raced = should_race(runs, label, seen, d)
    if raced:
        runs += yield [(seed, seconds) for seed in d.seeds[r:]]
    return TrialRun(low, tuple(runs), raced)


def drive(
    protocol: Generator[list[SimJob], list[sim.Metrics], TrialRun],
    simulate: Callable[[list[SimJob]], list[sim.Metrics]],
) -> TrialRun:
    """Run a protocol to its end, one request at a time."""
    try:
        request = next(protocol)
        while True:
            request = protocol.send(simulate(request))
    except StopIteration as stop:
        return stop.value


def pruned_by(low: Mapping[str, float], earlier: Sequence[Seen], d: CampaignDefinition) -> int | None:
    """The first earlier trial, feasible at low fidelity, that makes this one hopeless; None if none does."""
    s = d.settings
    for other in earlier:
        if other.low is None or not other.low_feasible:
            continue
        if d.objective == "scalar":
            hopeless = low["scalar"] > s.prune_ratio * other.low["scalar"] + s.prune_slack
        else:  # clearly dominated: no more memory, and a fallback cost `prune_ratio` times lower
            hopeless = (
                other.low["reserved_mib"] <= low["reserved_mib"]
                and other.low["fallback_cost"] * s.prune_ratio + s.prune_slack <= low["fallback_cost"]
            )
        if hopeless:
            return other.number
    return None


def should_race(
    base_runs: Sequence[sim.Metrics], label: str | None, seen: Sequence[Seen], d: CampaignDefinition
) -> bool:
    """Whether a trial runs the racing seeds: feasible and among the best so far, or the kernel default."""
    base = means(base_runs, d.hardware)
    ok = feasible(constraint_values(base_runs, d.hardware))
    contenders = sorted(x.base["scalar"] for x in seen if x.base is not None and x.base_feasible)
    k = d.settings.race_top_k
    in_top = ok and (len(contenders) < k or base["scalar"] <= contenders[k - 1])
    return d.settings.race_replications > 0 and (in_top or label == "kernel-default")


def start_trial(trial: optuna.Trial, d: CampaignDefinition) -> sim.Policy:
    """Suggest the trial's parameters and store the policy they describe; returns it."""
    policy = d.space.policy(d.space.suggest(trial))
    behaviour = sim.kernel_behaviour(d.kernel)
    trial.set_user_attr("policy", asdict(policy))
    trial.set_user_attr("kernel_cmdline", policy.kernel_cmdline(behaviour))
    trial.set_user_attr("what_if_reasons", list(policy.what_if_reasons(behaviour)))
    return policy


def finish_trial(
    trial: optuna.Trial, d: CampaignDefinition, workload: sim.WorkloadProfile, run: TrialRun, simulations: int
) -> tuple[TrialState, float | list[float] | None, dict[str, float] | None, bool]:
    """Store what the protocol found; returns (state, values to tell, base-seed means, feasible).

    Constraints are stored by `store_constraints`, where Optuna and optuna-dashboard both read
    them; `user_attrs` keep every replication and its summary.
    """
    hw = d.hardware
    low_values = objective_values(run.low, hw)
    low_ok = feasible(constraint_values([run.low], hw))
    trial.set_user_attr(
        "low_fidelity",
        {
            "seconds": d.settings.low_seconds_for(workload),
            "seed": d.seeds[0],
            **low_values,
            "feasible": low_ok,
            "metrics": {k: v[0] for k, v in replication_table([run.low], hw).items()},
        },
    )
    trial.set_user_attr("simulations", simulations)
    if run.pruned_by is not None:
        store_constraints(trial, constraint_values([run.low], hw))
        trial.set_user_attr("pruned_by", run.pruned_by)
        if d.objective == "scalar":
            trial.report(low_values["scalar"], step=0)
        return TrialState.PRUNED, None, None, False
    r = d.settings.replications
    runs = list(run.runs)
    constraints = constraint_values(runs[:r], hw)
    store_constraints(trial, constraints)
    table = replication_table(runs, hw)
    trial.set_user_attr("seconds", d.settings.seconds_for(workload))
    trial.set_user_attr("seeds", list(d.seeds[: len(runs)]))
    trial.set_user_attr("replications", table)
    trial.set_user_attr("summary", summary_table(table))
    trial.set_user_attr("raced", run.raced)
    if run.raced:
        trial.set_user_attr("raced_constraints", constraint_values(runs, hw))
    base = means(runs[:r], hw)
    told = base["scalar"] if d.objective == "scalar" else [base[name] for name in OBJECTIVES]
    return TrialState.COMPLETE, told, base, feasible(constraints)


def store_constraints(trial: optuna.Trial, constraints: Mapping[str, float]) -> None:
    """Store a trial's constraints (feasible when every value is <= 0) where both readers look.

    Optuna 5 reads the named system attributes `constraints:<name>` that `set_constraint` writes;
    optuna-dashboard (0.21) reads only the older positional list `constraints` (its
    `_serializer.serialize_frozen_trial`), and without it shows `constraints: []` and counts every
    trial feasible. The list holds the same values in `CONSTRAINTS` order; Optuna reads both forms
    (the list as keys "0", "1", ...), so its feasibility is unchanged.
    """
    for name, value in constraints.items():
        trial.set_constraint(name, value)
    storage = trial.storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(trial.study.study_name), trial.number
    )
    storage.set_trial_system_attr(trial_id, "constraints", [float(constraints[name]) for name in CONSTRAINTS])


def fail_trial(trial: optuna.Trial, reason: str, simulations: int) -> None:
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("simulations", simulations)


def means(runs: Sequence[sim.Metrics], hw: sim.HardwareProfile) -> dict[str, float]:
    per_run = [objective_values(m, hw) for m in runs]
    return {name: sum(o[name] for o in per_run) / len(per_run) for name in per_run[0]}


def seen_from(trial: FrozenTrial, d: CampaignDefinition) -> Seen | None:
    """How a stored trial counts in later decisions (low-fidelity values, base-seed means)."""
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return None
    low = trial.user_attrs.get("low_fidelity")
    low_values = {k: low[k] for k in ("reserved_mib", "fallback_cost", "scalar")} if low else None
    base = None
    base_ok = False
    if trial.state == TrialState.COMPLETE:
        table = trial.user_attrs.get("replications", {})
        r = d.settings.replications
        if all(name in table for name in ("reserved_mib", "fallback_cost", "scalar")):
            base = {name: sum(table[name][:r]) / r for name in ("reserved_mib", "fallback_cost", "scalar")}
            base_ok = all(v <= 0 for v in trial.constraints.values())
    if low_values is None and base is None:
        return None
    return Seen(trial.number, low_values, bool(low and low.get("feasible")), base, base_ok)


def seen_before(trials: Sequence[FrozenTrial], batch: int, d: CampaignDefinition) -> list[Seen]:
    """The told trials of batches before `batch`: all that a decision about a trial of `batch` may use."""
    return [s for s in (seen_from(t, d) for t in trials if batch_of(t) < batch) if s is not None]


def best_number(seen: Sequence[Seen]) -> int | None:
    """The trial with the lowest base scalar value among the feasible ones (lowest number on ties)."""
    ranked = [x for x in seen if x.base is not None and x.base_feasible]
    return min(ranked, key=lambda x: (x.base["scalar"], x.number)).number if ranked else None  # type: ignore[index]


def neighbours(space: SearchSpace, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's neighbours: N-1, N, N+1 in every layout first, then one step of each other parameter."""
    by_name = {p.name: p for p in space.params}

    def steps(name: str) -> list[Any]:
        dist, x = by_name[name].distribution, params[name]
        if isinstance(dist, CategoricalDistribution):
            return [c for c in dist.choices if c != x]
        step = dist.step or 1  # type: ignore[attr-defined]
        values = [v for v in (x - step, x + step) if dist.low <= v <= dist.high]  # type: ignore[attr-defined]
        return [round(v, 10) for v in values] if isinstance(dist, FloatDistribution) else values

    if "n_per_cpu" not in params:
        return []
    first: list[dict[str, Any]] = []
    n_values = [params["n_per_cpu"]] + steps("n_per_cpu")
    layouts = [params["layout"]] + steps("layout") if "layout" in params else [None]
    for n in n_values:
        for layout in layouts:
            change = {"n_per_cpu": n} if layout is None else {"n_per_cpu": n, "layout": layout}
            first.append({**params, **change})
    rest = [{**params, name: value} for name in params if name not in ("n_per_cpu", "layout") for value in steps(name)]
    candidates = [space.active(c) for c in first[1:] + rest]
    return [c for c in candidates if space.complete(c)]


def raced_best(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The best trial that went through racing: feasible over all its seeds, lowest mean scalar value."""
    best, best_value = None, float("inf")
    for t in trials:
        if t.state != TrialState.COMPLETE or not t.user_attrs.get("raced"):
            continue
        constraints = t.user_attrs.get("raced_constraints") or t.constraints
        if any(v > 0 for v in constraints.values()):
            continue
        value = t.user_attrs.get("summary", {}).get("scalar", {}).get("mean")
        if value is not None and value < best_value:
            best, best_value = t, value
    return best


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters, also while it waits as an enqueued point and has not suggested them yet."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return set(a) == set(b) and all(a[k] == b[k] for k in a)


def trials_by_number(trials: Sequence[FrozenTrial]) -> dict[int, FrozenTrial]:
    return {t.number: t for t in trials}


def retry_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The labels a failed trial's retry is enqueued with: its own, and the trial it retries."""
    return {**{k: trial.user_attrs[k] for k in LABELS if k in trial.user_attrs}, "retry_of": trial.number}
