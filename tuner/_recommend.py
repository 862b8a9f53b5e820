"""From a campaign's trials to a recommendation with its confidence (DESIGN.md §5).

Per workload: the cheapest policy (lowest predicted scalar cost: fallback cost plus reserved memory
per GiB) whose probability of meeting every constraint and SLO is at least the confidence level,
confirmed by fresh replications on seeds the search never used; ties (within 2 %) go to the faithful
kernel policy. Overall: the cheapest policy meeting every workload at that level. The faithful
recommendation is always given; a what-if one only with its gain over the faithful one.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from rcutune import sim
from rcutune import storage

from ._errors import UserError
from ._objective import constraint_values, feasible, mean_ci, objective_values
from ._surrogate import MetricSurrogate, describe, exact_metric, fit_metric, no_cache_key

DEFAULT_CONFIDENCE = 0.95
TIE_TOLERANCE = 0.02
CONFIRM_SEEDS = 4
FRESH_SEED_SALT = 0x5EED_F2E5
N_GRID = tuple(range(0, 17)) + (20, 24, 32, 48, 64, 96, 128)
EXTRAPOLATION_WIDEN = 2.0

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
COMPARED = ("reserved_mib", "fallback_cost", "sync_stall_ms_per_s", "pending_peak_mib", "sync_fallbacks_per_s",
            "call_latency_p99_us")


def run_metrics(m: sim.Metrics, hw: sim.HardwareProfile) -> dict[str, float]:
    """The recommendation's metrics of one replication."""
    seconds = max(m.sim_seconds, 1e-9)
    o = objective_values(m, hw)
    return {"reserved_mib": o["reserved_mib"], "fallback_cost": o["fallback_cost"], "scalar": o["scalar"],
            "call_latency_p99_us": m.call_latency_p99_us, "sync_fallbacks_per_s": m.sync_fallbacks / seconds,
            "pending_peak_mib": m.bytes_pending_peak / 2**20, "oom_events": float(m.oom_events),
            "sync_stall_ms_per_s": 1000.0 * m.sync_stall_seconds / seconds}


def _table_runs(table: Mapping[str, Sequence[float | None]]) -> list[dict[str, float]]:
    """The recommendation's metrics of each replication in a stored replication table."""
    runs = []
    for i in range(len(table["sim_seconds"])):
        seconds = max(table["sim_seconds"][i] or 0.0, 1e-9)
        runs.append({
            "reserved_mib": table["reserved_mib"][i], "fallback_cost": table["fallback_cost"][i],
            "scalar": table["scalar"][i], "call_latency_p99_us": table["call_latency_p99_us"][i],
            "sync_fallbacks_per_s": table["sync_fallbacks"][i] / seconds,
            "pending_peak_mib": table["bytes_pending_peak"][i] / 2**20, "oom_events": table["oom_events"][i],
            "sync_stall_ms_per_s": 1000.0 * table["sync_stall_seconds"][i] / seconds,
        })
    return runs


def reserved_mib(policy: Mapping[str, Any], hw: sim.HardwareProfile) -> float:
    """Memory the page cache reserves: N pages per CPU (one pool of CPUs x N for `global`), plus the hybrid reserve."""
    pages = policy["n_per_cpu"] * hw.cpus + (policy.get("shared_reserve_pages", 0) if policy["layout"] == "hybrid" else 0)
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


def _profile_from_text(kind: str, text: str):
    """A profile from its stored `sim.profile_text` (one `key = repr(value)` per line)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            values[key.strip()] = ast.literal_eval(value.strip())
    model = sim.HardwareProfile if kind == "hardware" else sim.WorkloadProfile
    return model.model_validate(values)


def load_campaign(url: str, name: str) -> CampaignData:
    """Read a campaign and its complete trials; reads only.

    Raises:
        UserError: no database, no such campaign, or no complete trial in it.
    """
    if not storage.database_exists(url):
        raise UserError(f"{url} does not exist (run rcutune study first)")
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            c = storage.find_campaign(session, name)
            if c is None:
                known = ", ".join(x.name for x in storage.list_campaigns(session)) or "none"
                raise UserError(f"no campaign named '{name}' in {url} (campaigns: {known})")
            hw = _profile_from_text("hardware", c.hardware_profile)
            studies = [(s.workload_name, s.workload_profile, s.optuna_study_name) for s in c.studies]
            data = CampaignData(c.name, url, hw, c.kernel, c.simulator_version, tuple(c.seeds), [],
                                dict(c.search_space), dict(c.settings or {}), c.objective)
    finally:
        db.close()
    rdb = optuna.storages.RDBStorage(url, engine_kwargs=storage.engine_kwargs(url), skip_table_creation=True)
    try:
        names = set(optuna.get_all_study_names(rdb))
        for workload, text, optuna_name in studies:
            if optuna_name not in names:
                continue
            trials = optuna.load_study(study_name=optuna_name, storage=rdb).get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,))
            points = []
            seconds = 0.0
            for t in trials:
                table = t.user_attrs.get("replications")
                if not table or "policy" not in t.user_attrs:
                    continue
                seconds = float(t.user_attrs.get("seconds", seconds))
                points.append(TrialPoint(t.number, dict(t.user_attrs["policy"]), bool(t.user_attrs.get("what_if_reasons")),
                                         _table_runs(table), feasible(t.constraints),
                                         tuple(t.user_attrs.get("seeds", ()))))
            if points:
                data.workloads.append(WorkloadData(workload, _profile_from_text("workload", text),
                                                   seconds, points, optuna_name))
    finally:
        rdb.engine.dispose()
    if not data.workloads:
        raise UserError(f"campaign '{name}' has no complete trials yet; run rcutune study --hardware "
                        f"{data.hardware.name} --study {name} first")
    return data


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
        w.surrogates["reserved_mib"] = exact_metric("reserved_mib", lambda p: reserved_mib(p, target),
                                                    [t.policy for t in trials], [reserved_mib(t.policy, target) for t in trials],
                                                    len(trials))
        for name in EXTENSIVE:
            w.surrogates[name] = replace(w.surrogates[name], scale=ratio)


def campaign_for(url: str, target: sim.HardwareProfile) -> tuple[str, bool]:
    """The campaign to recommend from for a hardware profile, and whether that is an extrapolation.

    The newest campaign studied on exactly this profile; failing that, the one of the same family
    (same profile name) whose CPU count and memory are nearest (see `nearest_profile`).

    Raises:
        UserError: no database, or no campaign of this family.
    """
    if not storage.database_exists(url):
        raise UserError(f"{url} does not exist (run rcutune study --hardware {target.name} first)")
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            rows = [(c.updated_at, c.name, c.hardware_profile) for c in storage.list_campaigns(session)
                    if c.hardware_name == target.name]
    finally:
        db.close()
    if not rows:
        raise UserError(f"no campaign for hardware '{target.name}' in {url}; run rcutune study --hardware {target.name}")
    exact = [r for r in rows if r[2] == sim.profile_text(target)]
    if exact:
        return max(exact)[1], False
    newest = {}
    for updated, name, text in sorted(rows):
        newest[text] = (updated, name)
    family = [(name, _profile_from_text("hardware", text)) for text, (_, name) in newest.items()]
    best = min(family, key=lambda f: (abs(math.log(f[1].cpus / target.cpus)),
                                      abs(math.log(f[1].memory_mib / target.memory_mib))))
    return best[0], True


def fit_surrogates(data: CampaignData) -> None:
    """One surrogate per (workload, metric), fitted to every replication of every complete trial.

    Reserved memory is known in closed form. A constraint whose every observed replication is below
    half its SLO, and a fallback cost whose spread over the trials is under a tenth of the spread of
    the memory term, cannot change the recommendation: their accuracy is stored but not required.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # tiny matrices: threaded BLAS only oversubscribes the CPUs
        _fit_surrogates(data)


def _fit_surrogates(data: CampaignData) -> None:
    for w in data.workloads:
        w.surrogates = _fit_set(data.hardware, w.trials)


def _fit_set(hw: sim.HardwareProfile, trials: Sequence[TrialPoint]) -> dict[str, MetricSurrogate]:
    per_gib = hw.memory_mib / 1024
    slo = {name: getattr(hw, attr) for name, _, _, attr in METRICS if attr is not None}
    rows = [(t.number, t.policy, r, s) for t in trials for r, s in zip(t.runs, _row_seeds(t))]
    out = {"reserved_mib": exact_metric("reserved_mib", lambda p: reserved_mib(p, hw), [row[1] for row in rows],
                                        [row[2]["reserved_mib"] for row in rows], len(trials))}
    # Policies with no cache at all are a regime of their own, predicted by their replications.
    cached = [row for row in rows if no_cache_key(row[1]) is None] or rows
    uncached = [row for row in rows if no_cache_key(row[1]) is not None and cached is not rows]
    cached_trials = [t for t in trials if no_cache_key(t.policy) is None] or list(trials)
    policies = [row[1] for row in cached]
    groups = [row[0] for row in cached]
    seeds = [row[3] for row in cached]
    memory_spread = np.ptp([reserved_mib(t.policy, hw) / per_gib for t in trials])
    for name in METRIC_NAMES[1:]:
        values = [row[2][name] for row in cached]
        if name in slo:
            decisive = max(values) > 0.5 * slo[name]
        elif name == "fallback_cost":  # trial means on the common seeds, as the accuracy compares them
            decisive = np.ptp(_common_means(cached_trials, name)) > 0.1 * memory_spread
        else:  # OOM events: any OOM at all decides
            decisive = max(values) > 0
        s = fit_metric(name, policies, values, groups, decisive=decisive, seeds=seeds)
        if uncached and not s.per_seed:
            s = replace(s, observed=_observed(s, name, uncached))
        out[name] = s
    return out


def _common_means(trials: Sequence[TrialPoint], name: str) -> list[float]:
    """Each trial's mean of a metric over the seeds every trial ran (all its seeds if there are none)."""
    shared = set.intersection(*[set(_row_seeds(t)) for t in trials]) if trials else set()
    return [float(np.mean([r[name] for r, s in zip(t.runs, _row_seeds(t)) if s in shared] or [r[name] for r in t.runs]))
            for t in trials]


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

    Only a seed-determined constraint decides this (every policy saw the same value on every common
    seed, e.g. the OOM kill a workload's own memory storm causes): its probability of being met is
    the share of seeds on which it held, the same for every policy.
    """
    out: dict[str, str] = {}
    limits = {name: (float(getattr(data.hardware, slo)) if slo else 0.5) for name, _, _, slo in METRICS
              if slo is not None or name == "oom_events"}
    for w in data.workloads:
        for name, limit in limits.items():
            s = w.surrogates.get(name)
            if s is None or not s.per_seed:
                continue
            held = sum(v <= limit for v in s.per_seed)
            if held / len(s.per_seed) < confidence:
                what = "an OOM kill" if name == "oom_events" else f"{name} above its SLO ({limit:g})"
                out[w.name] = (f"{what} on {len(s.per_seed) - held} of {len(s.per_seed)} seeds under every policy "
                               f"studied (the workload's own, not the cache's)")
                break
    return out


def unhealthy(data: CampaignData, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, list[str]]:
    """{workload: ["metric: why", ...]} for every surrogate that fails its accuracy check.

    A workload that no policy can serve (`unattainable`) is left out: no model of it can change the
    answer, so its surrogates are marked not decisive.
    """
    blocked = unattainable(data, confidence)
    out: dict[str, list[str]] = {}
    for w in data.workloads:
        if w.name in blocked:
            w.surrogates = {m: s if not s.accuracy.decisive else replace(s, accuracy=replace(s.accuracy, decisive=False))
                            for m, s in w.surrogates.items()}
            continue
        problems = [f"{m}: {s.accuracy.problem()}" for m, s in w.surrogates.items() if not s.accuracy.healthy]
        if problems:
            out[w.name] = problems
    return out


def study_command(data: CampaignData, workloads: Sequence[str], trials: int) -> str:
    """The `rcutune study` line that adds `trials` trials to these workloads' studies of this campaign,
    with the flags its stored definition needs to be resumed (preset, fidelity, seeds, kernel, objective)."""
    from ._campaign import DEFAULT_SETTINGS, QUICK_SETTINGS, make_seeds

    parts = ["rcutune study", f"--hardware {data.hardware.name}", f"--study {data.name}"]
    parts += [f"--workload {w}" for w in workloads]
    parts.append(f"--trials {trials}")
    stored = data.settings
    quick = bool(stored) and all(stored.get(k) == v for k, v in QUICK_SETTINGS.as_dict().items()
                                 if k not in ("max_seconds", "replications", "race_replications"))
    preset = (QUICK_SETTINGS if quick else DEFAULT_SETTINGS).as_dict()
    if quick:
        parts.append("--quick")
    for key, flag in (("max_seconds", "--seconds"), ("replications", "--replications"),
                      ("race_replications", "--race-replications")):
        if key in stored and stored[key] != preset[key]:
            parts.append(f"{flag} {stored[key]:g}")
    seed = next((k for k in range(10_000) if list(make_seeds(k, len(data.seeds))) == list(data.seeds)), None)
    if seed:
        parts.append(f"--seed {seed}")
    if data.kernel != sim.DEFAULT_KERNEL:
        parts.append(f"--kernel {data.kernel}")
    if data.objective != "multi":
        parts.append(f"--objective {data.objective}")
    parts.append(f"--storage {data.url}")
    return " ".join(parts)


def fresh_seeds(campaign_seeds: Sequence[int], count: int) -> tuple[int, ...]:
    """Seeds derived from the campaign's seed list that the search never used."""
    used = set(int(s) for s in campaign_seeds)
    state = np.random.SeedSequence([*[int(s) for s in campaign_seeds], FRESH_SEED_SALT]).generate_state(count + len(used))
    return tuple(int(s) for s in state if int(s) not in used)[:count]


def p_meet(surrogates: Mapping[str, MetricSurrogate], hw: sim.HardwareProfile,
           policies: Sequence[Mapping[str, Any]], widen: float = 1.0) -> np.ndarray:
    """P(every SLO met and no OOM) per policy, the constraints taken as independent."""
    p = np.ones(len(policies))
    for name, _, _, slo in METRICS:
        if slo is not None:
            p *= surrogates[name].prob_at_most(policies, float(getattr(hw, slo)), widen)
    p *= surrogates["oom_events"].prob_at_most(policies, 0.5, widen)  # under half an OOM per run: none
    return p


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


def is_what_if(policy: Mapping[str, Any], kernel: str) -> tuple[str, ...]:
    return sim.Policy(**policy).what_if_reasons(sim.kernel_behaviour(kernel))


@dataclass
class Choice:
    """A recommended policy with its predicted figures."""

    policy: dict[str, Any]
    what_if_reasons: tuple[str, ...]
    p_meet: float
    cost: float
    predicted: dict[str, dict[str, float]]
    gain: float | None = None  # what-if only: faithful cost minus this one's, both under the what-if surrogates
    kernel: str = sim.DEFAULT_KERNEL

    @property
    def kernel_cmdline(self) -> str:
        return sim.Policy(**self.policy).kernel_cmdline(sim.kernel_behaviour(self.kernel))


def _predicted(surrogates: Mapping[str, MetricSurrogate], policy: Mapping[str, Any], widen: float) -> dict[str, dict[str, float]]:
    out = {}
    for name in METRIC_NAMES:
        mid, lo, hi = surrogates[name].interval([policy], widen)
        out[name] = {"mean": float(mid[0]), "lo90": float(max(lo[0], 0.0)), "hi90": float(hi[0])}
    return out


def rank(policies: Sequence[dict[str, Any]], probs: np.ndarray, costs: np.ndarray, kernel: str,
         confidence: float) -> list[int]:
    """Indices of the policies meeting `confidence`, cheapest first; within 2 % of a cost, faithful first, then lower N."""
    ok = [i for i in range(len(policies)) if probs[i] >= confidence]
    if not ok:
        return []
    ok.sort(key=lambda i: costs[i])
    ordered: list[int] = []
    while ok:
        floor = costs[ok[0]]
        tied = [i for i in ok if costs[i] <= floor + TIE_TOLERANCE * abs(floor) + 1e-12]
        tied.sort(key=lambda i: (bool(is_what_if(policies[i], kernel)), policies[i]["n_per_cpu"], costs[i]))
        ordered += tied
        ok = [i for i in ok if i not in tied]
    return ordered


def simulate_runs(hw, wl, policy: Mapping[str, Any], seeds: Sequence[int], seconds: float, kernel: str) -> list[sim.Metrics]:
    return [sim.simulate(hw, wl, sim.Policy(**policy), seconds=seconds, seed=s, kernel=kernel) for s in seeds]


def compare(hw, runs_a: Sequence[sim.Metrics], runs_b: Sequence[sim.Metrics]) -> dict[str, dict[str, float | None]]:
    """Paired difference a - b per metric (common random numbers: the same seeds), mean and 95% CI half-width."""
    a = [run_metrics(m, hw) for m in runs_a]
    b = [run_metrics(m, hw) for m in runs_b]
    out = {}
    for name in COMPARED:
        diff, half = mean_ci([x[name] - y[name] for x, y in zip(a, b)])
        out[name] = {"diff": diff, "ci95": half}
    return out


def summarise(hw, runs: Sequence[sim.Metrics]) -> dict[str, dict[str, float | None]]:
    rows = [run_metrics(m, hw) for m in runs]
    out = {}
    for name in COMPARED:
        mean, half = mean_ci([r[name] for r in rows])
        out[name] = {"mean": mean, "ci95": half}
    return out


@dataclass
class WorkloadRecommendation:
    workload: str
    faithful: Choice | None
    what_if: Choice | None  # only when it beats the faithful one; `gain` = faithful cost - what-if cost
    gain: float | None
    confirmed: bool | None
    confirmation: dict[str, Any]
    default_comparison: dict[str, Any]
    problems: list[str]
    unattainable: str | None = None  # why no policy can serve this workload (see `unattainable`)


@dataclass
class Recommendation:
    """The whole answer for one campaign."""

    campaign: str
    hardware: str
    kernel: str
    simulator_version: str
    confidence: float
    seeds: tuple[int, ...]
    fresh_seeds: tuple[int, ...]
    overall: Choice | None
    overall_what_if: Choice | None
    workloads: list[WorkloadRecommendation]
    surrogate: dict[str, dict[str, dict[str, Any]]]  # workload -> metric -> accuracy
    unhealthy: dict[str, list[str]]
    extrapolated: bool = False
    fix_command: str | None = None
    served: list[str] = field(default_factory=list)  # workloads the overall recommendation covers
    overall_confirmation: dict[str, Any] = field(default_factory=dict)  # workload -> fresh-seed check vs default


def _choose(data: CampaignData, w: WorkloadData, policies, confidence: float,
            widen: float) -> tuple[Choice | None, Choice | None, list[int]]:
    """The cheapest faithful policy meeting the confidence, and the cheapest of all if it is a what-if
    that beats the faithful one (its `gain`: the faithful cost minus its own)."""
    probs = p_meet(w.surrogates, data.hardware, policies, widen)
    costs = _cost(w.surrogates, data.hardware, policies)
    order = rank(policies, probs, costs, data.kernel, confidence)
    faithful = [i for i in order if not is_what_if(policies[i], data.kernel)]
    make = lambda i, gain=None: Choice(dict(policies[i]), is_what_if(policies[i], data.kernel), float(probs[i]),  # noqa: E731
                                       float(costs[i]), _predicted(w.surrogates, policies[i], widen), gain, data.kernel)
    best_f = make(faithful[0]) if faithful else None
    what_if = None
    if order and is_what_if(policies[order[0]], data.kernel) and (best_f is None or costs[order[0]] < best_f.cost):
        what_if = make(order[0], None if best_f is None else best_f.cost - float(costs[order[0]]))
    return best_f, what_if, faithful


def _cost(surrogates: Mapping[str, MetricSurrogate], hw, policies) -> np.ndarray:
    fallback = surrogates["fallback_cost"].interval(policies)[0]
    reserved = surrogates["reserved_mib"].interval(policies)[0]
    return fallback + reserved / (hw.memory_mib / 1024)


def recommend(data: CampaignData, *, confidence: float = DEFAULT_CONFIDENCE, confirm_seeds: int = CONFIRM_SEEDS,
              widen: float = 1.0, extrapolated: bool = False) -> Recommendation:
    """The recommendation for every workload of a fitted campaign (call `fit_surrogates` first)."""
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
    policies = candidate_policies(data)
    bad = unhealthy(data, confidence)
    blocked = unattainable(data, confidence)
    fresh = fresh_seeds(data.seeds, confirm_seeds)
    default = asdict(sim.Policy.kernel_default(sim.kernel_behaviour(data.kernel)))
    zero = dict(default, n_per_cpu=0)
    results: list[WorkloadRecommendation] = []
    default_runs: dict[str, list[sim.Metrics]] = {}
    chosen_runs: dict[str, tuple[dict[str, Any], list[sim.Metrics]]] = {}
    for w in data.workloads:
        problems = bad.get(w.name, [])
        if problems or w.name in blocked:
            results.append(WorkloadRecommendation(w.name, None, None, None, None, {}, {}, problems,
                                                  blocked.get(w.name)))
            continue
        best_f, what_if, faithful_order = _choose(data, w, policies, confidence, widen)
        confirmed, confirmation, comparison = None, {}, {}
        if best_f is not None and confirm_seeds > 0:
            base_default = simulate_runs(data.hardware, w.profile, default, fresh, w.seconds, data.kernel)
            default_runs[w.name] = base_default
            base_zero = simulate_runs(data.hardware, w.profile, zero, fresh, w.seconds, data.kernel)
            # The first faithful candidate whose fresh replications meet every constraint.
            for i in faithful_order[:3]:
                runs = simulate_runs(data.hardware, w.profile, policies[i], fresh, w.seconds, data.kernel)
                cons = constraint_values(runs, data.hardware)
                if feasible(cons):
                    if policies[i] != best_f.policy:
                        probs = p_meet(w.surrogates, data.hardware, [policies[i]], widen)
                        best_f = Choice(dict(policies[i]), (), float(probs[0]),
                                        float(_cost(w.surrogates, data.hardware, [policies[i]])[0]),
                                        _predicted(w.surrogates, policies[i], widen), kernel=data.kernel)
                    confirmed = True
                    break
                confirmed = False
            chosen_runs[w.name] = (best_f.policy, runs)
            confirmation = {"seeds": list(fresh), "seconds": w.seconds,
                            "constraints": cons, "recommended": summarise(data.hardware, runs)}
            comparison = {
                "kernel_default": {"policy": default, **{"summary": summarise(data.hardware, base_default)}},
                "n_zero": {"policy": zero, "summary": summarise(data.hardware, base_zero)},
                "recommended_minus_default": compare(data.hardware, runs, base_default),
                "recommended_minus_n_zero": compare(data.hardware, runs, base_zero),
            }
        gain = None if what_if is None else what_if.gain
        results.append(WorkloadRecommendation(w.name, best_f, what_if, gain, confirmed, confirmation, comparison, []))
    served = [w for w in data.workloads
              if w.name not in blocked and any(r.workload == w.name and r.faithful for r in results)]
    overall, overall_what_if = _overall(data, served, policies, confidence, widen, bad)
    overall_confirmation: dict[str, Any] = {}
    if overall is not None and confirm_seeds > 0:
        # The overall policy on each served workload's fresh seeds, against the kernel default there.
        for w in served:
            policy, runs = chosen_runs.get(w.name, (None, []))
            if policy != overall.policy:
                runs = simulate_runs(data.hardware, w.profile, overall.policy, fresh, w.seconds, data.kernel)
            cons = constraint_values(runs, data.hardware)
            overall_confirmation[w.name] = {"feasible": feasible(cons), "constraints": cons,
                                            "summary": summarise(data.hardware, runs),
                                            "kernel_default": summarise(data.hardware, default_runs[w.name]),
                                            "minus_default": compare(data.hardware, runs, default_runs[w.name])}
    fix = None
    if bad:
        # Doubling the trials of the failing studies: CV error falls as the design fills the space.
        trials = max(len(w.trials) for w in data.workloads if w.name in bad)
        fix = study_command(data, list(bad), trials)
    surrogate = {w.name: _accuracy_table(w.surrogates) for w in data.workloads}
    return Recommendation(data.name, data.hardware.name, data.kernel, data.simulator_version, confidence, data.seeds,
                          fresh, overall, overall_what_if, results, surrogate, bad, extrapolated, fix,
                          [w.name for w in served], overall_confirmation)


def _accuracy_table(models: Mapping[str, MetricSurrogate]) -> dict[str, dict[str, Any]]:
    return {m: {"estimator": s.accuracy.estimator, "n_trials": s.accuracy.n_trials, "cv_r2": s.accuracy.cv_r2,
                "rank_correlation": s.accuracy.rank_correlation, "coverage": s.accuracy.coverage,
                "decisive": bool(s.accuracy.decisive), "noise_limited": s.accuracy.noise_limited,
                "healthy": s.accuracy.healthy, "model": describe(s)} for m, s in models.items()}


def _overall(data: CampaignData, served: Sequence[WorkloadData], policies, confidence: float, widen: float,
             bad) -> tuple[Choice | None, Choice | None]:
    """The cheapest faithful policy (summed cost) that meets every served workload at the confidence
    level, and the cheapest policy of all if it is a what-if that beats it.

    Served: workloads some faithful policy can meet at that level. The others (no policy can, or no
    faithful one can) are named in the report; they cannot veto a policy that helps the rest.
    """
    if bad or not served:
        return None, None
    probs = np.stack([p_meet(w.surrogates, data.hardware, policies, widen) for w in served]).min(axis=0)
    costs = np.sum([_cost(w.surrogates, data.hardware, policies) for w in served], axis=0)
    order = rank(policies, probs, costs, data.kernel, confidence)
    faithful = [i for i in order if not is_what_if(policies[i], data.kernel)]
    if not faithful:
        return None, None

    def make(i: int, gain: float | None = None) -> Choice:
        return Choice(dict(policies[i]), is_what_if(policies[i], data.kernel), float(probs[i]), float(costs[i]),
                      {w.name: _predicted(w.surrogates, policies[i], widen) for w in served}, gain, data.kernel)
    best = make(faithful[0])
    j = order[0]
    if is_what_if(policies[j], data.kernel) and costs[j] < best.cost:
        return best, make(j, best.cost - float(costs[j]))
    return best, None


def store(url: str, rec: Recommendation, data: CampaignData | None = None) -> None:
    """Record the surrogates (accuracy, hyper-parameters and, given `data`, the pickled fitted estimator)
    and the recommendations in the campaign's database (after success only)."""
    import pickle

    fitted = {w.name: w.surrogates for w in data.workloads} if data is not None else {}
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            campaign = storage.find_campaign(session, rec.campaign)
            if campaign is None:
                return
            studies = {s.workload_name: s for s in campaign.studies}
            for workload, metrics in rec.surrogate.items():
                study = studies.get(workload)
                if study is None:
                    continue
                for metric, a in metrics.items():
                    estimator = getattr(fitted.get(workload, {}).get(metric), "estimator", None)
                    session.add(storage.SurrogateRecord(
                        study=study, metric=metric, estimator=a["estimator"], estimator_params=a["model"],
                        n_trials=a["n_trials"], cv_r2=a["cv_r2"], rank_correlation=a["rank_correlation"],
                        interval_coverage=a["coverage"], passed=bool(a["healthy"]),
                        model=None if estimator is None else pickle.dumps(estimator)))
            surrogate_figures = {w: {m: {"cv_r2": a["cv_r2"], "coverage": a["coverage"]} for m, a in ms.items()}
                                 for w, ms in rec.surrogate.items()}
            rows = [(None, rec.overall, {})] + [(w.workload, w.faithful, {"confirmed": w.confirmed, "gain": w.gain})
                                                 for w in rec.workloads]
            for workload, choice, extra in rows:
                if choice is None:
                    continue
                session.add(storage.RecommendationRecord(
                    campaign=campaign, workload_name=workload, policy=choice.policy,
                    kernel_cmdline=choice.kernel_cmdline, confidence=rec.confidence, p_meet_slos=choice.p_meet,
                    source="surrogate", what_if=bool(choice.what_if_reasons), extrapolated=rec.extrapolated,
                    details={"surrogate": surrogate_figures if workload is None else surrogate_figures.get(workload),
                             "fresh_seeds": list(rec.fresh_seeds), **extra}))
    finally:
        db.close()


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


def transfer_error(source: CampaignData, target: CampaignData, widen: float = EXTRAPOLATION_WIDEN) -> list[TransferError]:
    """Predict every trial of `target` with the surrogates of `source`, transferred to the target's
    hardware as an extrapolated recommendation is (`transfer`), and score them."""
    from ._surrogate import Z90

    fitted = CampaignData(source.name, source.url, source.hardware, source.kernel, source.simulator_version,
                          source.seeds, [WorkloadData(w.name, w.profile, w.seconds, w.trials, w.optuna_name)
                                         for w in source.workloads], source.search_space, source.settings,
                          source.objective)
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
            inside = lambda k: float(np.mean(np.abs(z - mean) <= Z90 * std * k + 1e-9))  # noqa: E731
            means = np.array([np.mean(np.log(np.maximum([r[name] for r in t.runs], 0.0) + s.offset)) for t in held.trials])
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
