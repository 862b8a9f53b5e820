"""One study's ask-and-tell loop: low-fidelity pruning, base replications, racing, in-order tells.

The main process asks Optuna for trials, hands their simulations to the worker pool and tells the
results back; it is the only writer. Every decision about trial k (prune it, race it) uses only
trials numbered below k, and trials are told in number order, so the stored results do not depend
on how many workers ran them (for a sampler whose suggestions do not depend on timing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from rcutune import sim

from ._campaign import CampaignDefinition
from ._objective import (
    OBJECTIVES,
    constraint_values,
    feasible,
    objective_values,
    replication_table,
    summary_table,
)
from ._space import SearchSpace
from ._workers import SimResult, SimTask, SimulationPool

HEARTBEAT_EVERY_S = 10.0
MAX_FAILURES_IN_A_ROW = 2
"""A study stops after this many failed trials in a row (a workload the simulator cannot run)."""


class StudyAborted(Exception):
    """A study stopped early because its trials kept failing; the message says why, in one line."""


@dataclass
class TrialOutcome:
    """What the progress display and the caller learn about one told trial."""

    number: int
    state: TrialState
    policy: sim.Policy
    values: dict[str, float] | None
    feasible: bool
    raced: bool
    label: str | None
    error: str | None = None


@dataclass
class _Run:
    trial: optuna.Trial
    policy: sim.Policy
    label: str | None
    stage: str = "low"  # low -> base -> race -> ready
    low: sim.Metrics | None = None
    runs: dict[int, sim.Metrics] = field(default_factory=dict)  # seed index -> metrics
    waiting: int = 0
    error: str | None = None
    pruned_by: int | None = None
    raced: bool = False
    simulations: int = 0  # simulations run for this trial (identical ones run earlier are reused)

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass(frozen=True)
class _Seen:
    """A decided trial as later decisions see it."""

    number: int
    low: dict[str, float] | None = None
    low_feasible: bool = False
    base: dict[str, float] | None = None
    base_feasible: bool = False


class StudyLoop:
    """Runs `trials` new trials of one study with the campaign's definition.

    Args:
        study: the Optuna study (RDB storage; this process is its only writer).
        definition: the campaign definition (profiles, space, seeds, settings, objective).
        workload: this study's workload profile.
        pool: the simulation workers.
        on_trial: called after each tell.
        heartbeat: called at least every HEARTBEAT_EVERY_S seconds while the loop runs.
        window: trials in flight at once (default: twice the workers).
        refine: when a trial becomes the best (lowest base scalar value among feasible ones), every
            third new trial tries one of its untried neighbours (N-1, N, N+1 in every layout, then
            one step of each other parameter): a pattern search that polishes the best trial.
    """

    def __init__(self, study: optuna.Study, definition: CampaignDefinition, workload: sim.WorkloadProfile,
                 pool: SimulationPool, *, on_trial: Callable[[TrialOutcome], None] | None = None,
                 heartbeat: Callable[[], None] | None = None, window: int | None = None,
                 refine: bool = False) -> None:
        self.study, self.d, self.workload, self.pool = study, definition, workload, pool
        self.on_trial = on_trial or (lambda outcome: None)
        self.heartbeat = heartbeat or (lambda: None)
        self.window = window or max(2, 2 * pool.jobs)
        self.seconds = definition.settings.seconds_for(workload)
        self.low_seconds = definition.settings.low_seconds_for(workload)
        self.seen: list[_Seen] = [s for s in (_seen_from(t, definition) for t in study.get_trials(deepcopy=False))
                                  if s is not None]
        self.in_flight: dict[int, _Run] = {}
        self.memo: dict[tuple, sim.Metrics] = {}  # simulate() is pure: (policy, seed, seconds) -> metrics
        self.interrupted: list[_Run] = []
        self.failures_in_a_row = 0
        self.refine = refine and "n_per_cpu" in definition.space.names()
        self.refinements: list[tuple[dict[str, Any], int]] = []  # (parameters, the best trial they neighbour)
        self.asked = 0
        if self.refine and any(x.base is not None and x.base_feasible for x in self.seen):
            best = self._best_number()
            self._queue_neighbours(self.study.get_trials(deepcopy=False)[best].params, best)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, trials: int) -> None:
        asked = 0
        last_beat = time.monotonic()
        try:
            while asked < trials or self.in_flight:
                while asked < trials and len(self.in_flight) < self.window:
                    self._ask()
                    asked += 1
                self._advance()
                if not self.in_flight:
                    continue
                for result in self.pool.collect(timeout=1.0):
                    self._receive(result)
                if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:
                    self.heartbeat()
                    last_beat = time.monotonic()
        except BaseException:
            self.interrupted = list(self.in_flight.values())
            raise

    def _ask(self) -> None:
        if self.asked % 3 == 0:  # every third trial refines the best; the sampler explores in between
            self._next_refinement()
        self.asked += 1
        trial = self.study.ask()
        values = self.d.space.suggest(trial)
        policy = self.d.space.policy(values)
        behaviour = sim.kernel_behaviour(self.d.kernel)
        trial.set_user_attr("policy", _policy_dict(policy))
        trial.set_user_attr("kernel_cmdline", policy.kernel_cmdline(behaviour))
        trial.set_user_attr("what_if_reasons", list(policy.what_if_reasons(behaviour)))
        label = trial.user_attrs.get("design")
        run = _Run(trial, policy, label)
        self.in_flight[trial.number] = run
        self._submit(run, [(-1, self.d.seeds[0], self.low_seconds)])

    def _submit(self, run: _Run, jobs: list[tuple[int, int, float]]) -> None:
        stage_order = {"low": 0, "base": 1, "race": 2}[run.stage]
        for index, seed, seconds in jobs:
            known = self.memo.get((run.policy, seed, seconds))
            if known is not None:  # an identical simulation already ran in this loop
                self._store(run, index, known)
                continue
            task = SimTask((run.number, index), self.d.hardware, self.workload, run.policy, seconds, seed, self.d.kernel)
            self.pool.submit(task, priority=(run.number, stage_order, index))
            run.waiting += 1
            run.simulations += 1

    def _store(self, run: _Run, index: int, metrics: sim.Metrics) -> None:
        if index == -1:
            run.low = metrics
        else:
            run.runs[index] = metrics

    def _receive(self, result: SimResult) -> None:
        number, index = result.key  # type: ignore[misc]
        run = self.in_flight.get(number)
        if run is None:
            return
        run.waiting -= 1
        if result.error is not None:
            run.error = run.error or result.error
            return
        assert result.metrics is not None
        seconds = self.low_seconds if index == -1 else self.seconds
        self.memo[(run.policy, self.d.seeds[0] if index == -1 else self.d.seeds[index], seconds)] = result.metrics
        self._store(run, index, result.metrics)

    def _advance(self) -> None:
        """Take every decision whose inputs are complete, in trial order; tell finished trials in order."""
        progressed = True
        while progressed:
            progressed = False
            earlier_low_known = True
            for number in sorted(self.in_flight):
                run = self.in_flight[number]
                if run.stage == "low" and run.waiting == 0 and earlier_low_known and run.error is None:
                    self._decide_prune(run)
                    progressed = True
                earlier_low_known = earlier_low_known and (run.stage != "low" or run.error is not None)
            head = self.in_flight[min(self.in_flight)] if self.in_flight else None
            if head is None:
                return
            if head.error is not None and head.waiting == 0:
                self._tell(head, TrialState.FAIL)
                progressed = True
            elif head.stage == "base" and head.waiting == 0:
                self._decide_race(head)
                progressed = True
            elif head.stage == "ready" and head.waiting == 0:
                self._tell(head, TrialState.PRUNED if head.pruned_by is not None else TrialState.COMPLETE)
                progressed = True

    # -- decisions ------------------------------------------------------------------------------
    def _low_summary(self, run: _Run) -> tuple[dict[str, float], bool]:
        assert run.low is not None
        return objective_values(run.low, self.d.hardware), feasible(constraint_values([run.low], self.d.hardware))

    def _decide_prune(self, run: _Run) -> None:
        low, _ = self._low_summary(run)
        earlier = [x for x in self.seen if x.low is not None and x.low_feasible and x.number < run.number]
        earlier += [_Seen(r.number, *self._low_summary(r)) for r in self.in_flight.values()
                    if r.number < run.number and r.low is not None]
        earlier = [x for x in earlier if x.low_feasible]
        if run.label is None:
            run.pruned_by = pruned_by(low, earlier, self.d)
        if run.pruned_by is not None:
            run.stage = "ready"
            return
        run.stage = "base"
        self._submit(run, [(i, seed, self.seconds) for i, seed in enumerate(self.d.base_seeds)])

    def _decide_race(self, run: _Run) -> None:
        """Race a feasible trial that ranks among the best (and always the kernel default)."""
        runs = [run.runs[i] for i in range(self.d.settings.replications)]
        if should_race(runs, run.label, self.seen, self.d):
            run.raced = True
            run.stage = "race"
            r = self.d.settings.replications
            self._submit(run, [(r + i, seed, self.seconds) for i, seed in enumerate(self.d.seeds[r:])])
        run.stage = "ready"  # told once `waiting` (the race replications, if any) reaches zero

    # -- telling --------------------------------------------------------------------------------
    def _tell(self, run: _Run, state: TrialState) -> None:
        trial = run.trial
        outcome_values: dict[str, float] | None = None
        ok = False
        low_entry, low_ok = record_low_fidelity(trial, self.d, self.low_seconds, run.low)
        base_entry = None
        trial.set_user_attr("simulations", run.simulations)
        if state == TrialState.FAIL:
            trial.set_user_attr("fail_reason", run.error or "failed")
            self.study.tell(trial, state=TrialState.FAIL)
        elif state == TrialState.PRUNED:
            assert run.low is not None
            record_pruned(trial, self.d, run.low, run.pruned_by)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            order = sorted(run.runs)
            base_entry, ok = record_result(trial, self.d, self.seconds, [run.runs[i] for i in order],
                                           [self.d.seeds[i] for i in order], run.raced)
            outcome_values = base_entry
            self.study.tell(trial, told_values(base_entry, self.d))
        self.seen.append(_Seen(run.number, low_entry, low_ok, base_entry, ok))
        del self.in_flight[run.number]
        if self.refine and base_entry is not None and ok and self._best_number() == run.number:
            self._queue_neighbours(dict(run.trial.params), run.number)
        self.on_trial(TrialOutcome(run.number, state, run.policy, outcome_values, ok, run.raced, run.label, run.error))
        self.failures_in_a_row = self.failures_in_a_row + 1 if state == TrialState.FAIL else 0
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            self.pool.cancel_all()
            raise StudyAborted(f"{self.failures_in_a_row} trials in a row failed, the last with: {run.error}")


    def _best_number(self) -> int:
        ranked = [x for x in self.seen if x.base is not None and x.base_feasible]
        return min(ranked, key=lambda x: (x.base["scalar"], x.number)).number  # type: ignore[index]

    def _queue_neighbours(self, params: dict[str, Any], number: int) -> None:
        self.refinements = [(c, number) for c in neighbours(self.d.space, params)]

    def _next_refinement(self) -> None:
        """Put the next untried neighbour of the best trial at the head of the queue (if nothing else waits)."""
        if not self.refinements:
            return
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        tried = [t.params for t in trials]
        while self.refinements:
            params, number = self.refinements.pop(0)
            if params not in tried:
                self.study.enqueue_trial(params, user_attrs={"refines": number})
                return


# -- decisions and records shared with the distributed workers (`_fleet`) ------------------------
def pruned_by(low: dict[str, float], earlier: list[_Seen], d: CampaignDefinition) -> int | None:
    """The first earlier trial, feasible at low fidelity, that makes this one hopeless; None if none does."""
    s = d.settings
    for other in earlier:
        if other.low is None or not other.low_feasible:
            continue
        if d.objective == "scalar":
            hopeless = low["scalar"] > s.prune_ratio * other.low["scalar"] + s.prune_slack
        else:  # clearly dominated: no more memory, and a fallback cost `prune_ratio` times lower
            hopeless = (other.low["reserved_mib"] <= low["reserved_mib"]
                        and other.low["fallback_cost"] * s.prune_ratio + s.prune_slack <= low["fallback_cost"])
        if hopeless:
            return other.number
    return None


def should_race(base_runs: list[sim.Metrics], label: str | None, seen: list[_Seen], d: CampaignDefinition) -> bool:
    """Whether a trial runs the racing seeds: feasible and among the best so far, or the kernel default."""
    base = _means(base_runs, d.hardware)
    ok = feasible(constraint_values(base_runs, d.hardware))
    contenders = sorted(x.base["scalar"] for x in seen if x.base is not None and x.base_feasible)
    k = d.settings.race_top_k
    in_top = ok and (len(contenders) < k or base["scalar"] <= contenders[k - 1])
    return d.settings.race_replications > 0 and (in_top or label == "kernel-default")


def record_low_fidelity(trial: optuna.Trial, d: CampaignDefinition, seconds: float,
                        low: sim.Metrics | None) -> tuple[dict[str, float] | None, bool]:
    """Store the low-fidelity run in `user_attrs`; returns its objective values and feasibility."""
    if low is None:
        return None, False
    values = objective_values(low, d.hardware)
    ok = feasible(constraint_values([low], d.hardware))
    trial.set_user_attr("low_fidelity", {
        "seconds": seconds, "seed": d.seeds[0], **values, "feasible": ok,
        "metrics": {k: v[0] for k, v in replication_table([low], d.hardware).items()},
    })
    return values, ok


def record_pruned(trial: optuna.Trial, d: CampaignDefinition, low: sim.Metrics, by: int | None) -> None:
    """Store what a pruned trial is told with: its low-fidelity constraints and the trial that pruned it."""
    for name, value in constraint_values([low], d.hardware).items():
        trial.set_constraint(name, value)
    trial.set_user_attr("pruned_by", by)
    if d.objective == "scalar":
        trial.report(objective_values(low, d.hardware)["scalar"], step=0)


def record_result(trial: optuna.Trial, d: CampaignDefinition, seconds: float, runs: list[sim.Metrics],
                  seeds: list[int], raced: bool) -> tuple[dict[str, float], bool]:
    """Store a finished trial's replications, summary and constraints; returns base-seed means and feasibility.

    `runs` holds the base seeds first, then the racing seeds (if `raced`).
    """
    hw = d.hardware
    r = d.settings.replications
    constraints = constraint_values(runs[:r], hw)
    for name, value in constraints.items():
        trial.set_constraint(name, value)
    table = replication_table(runs, hw)
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("seeds", list(seeds))
    trial.set_user_attr("replications", table)
    trial.set_user_attr("summary", summary_table(table))
    trial.set_user_attr("raced", raced)
    if raced:
        trial.set_user_attr("raced_constraints", constraint_values(runs, hw))
    return _means(runs[:r], hw), feasible(constraints)


def told_values(base: dict[str, float], d: CampaignDefinition) -> float | list[float]:
    """What Optuna is told for a complete trial: the scalar value, or one value per objective."""
    return base["scalar"] if d.objective == "scalar" else [base[name] for name in OBJECTIVES]


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

    first: list[dict[str, Any]] = []
    n_values = [params["n_per_cpu"]] + steps("n_per_cpu")
    layouts = [params["layout"]] + steps("layout") if "layout" in params else [None]
    for n in n_values:
        for layout in layouts:
            change = {"n_per_cpu": n} if layout is None else {"n_per_cpu": n, "layout": layout}
            first.append({**params, **change})
    rest = [{**params, name: value} for name in params if name not in ("n_per_cpu", "layout")
            for value in steps(name)]
    candidates = [space.active(c) for c in first[1:] + rest]
    return [c for c in candidates if space.complete(c)]


def _means(runs: list[sim.Metrics], hw: sim.HardwareProfile) -> dict[str, float]:
    per_run = [objective_values(m, hw) for m in runs]
    return {name: sum(o[name] for o in per_run) / len(per_run) for name in per_run[0]}


def _policy_dict(policy: sim.Policy) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(policy)


def _seen_from(trial: FrozenTrial, d: CampaignDefinition) -> _Seen | None:
    """How a stored trial counts in later decisions (low-fidelity values, base-seed means)."""
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
    return _Seen(trial.number, low_values, bool(low and low.get("feasible")), base, base_ok)


def raced_best(trials: list[FrozenTrial]) -> FrozenTrial | None:
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
