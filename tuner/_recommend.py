"""From a campaign's trials to a recommendation with its confidence (DESIGN.md §5).

Per workload: the cheapest policy (lowest predicted scalar cost: fallback cost plus reserved memory
per GiB) whose probability of meeting every constraint and SLO is at least the confidence level,
confirmed by fresh replications on seeds the search never used; ties (within 2 %) go to the faithful
kernel policy. Overall: the cheapest policy meeting every workload at that level. The faithful
recommendation is always given; a what-if one only with its gain over the faithful one.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

import sim
import storage

from ._errors import UserError
from ._objective import constraint_values, feasible, mean_ci, objective_values
from ._surrogate import MetricSurrogate, exact_metric, fit_metric

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
                                dict(c.search_space))
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


def newest_campaign(url: str, hardware: str) -> str:
    """The most recently updated campaign of a hardware profile.

    Raises:
        UserError: no database, or no campaign for that hardware.
    """
    if not storage.database_exists(url):
        raise UserError(f"{url} does not exist (run rcutune study --hardware {hardware} first)")
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            rows = [(c.updated_at, c.name) for c in storage.list_campaigns(session) if c.hardware_name == hardware]
    finally:
        db.close()
    if not rows:
        raise UserError(f"no campaign for hardware '{hardware}' in {url}; run rcutune study --hardware {hardware}")
    return max(rows)[1]


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
    hw = data.hardware
    per_gib = hw.memory_mib / 1024
    slo = {name: getattr(hw, attr) for name, _, _, attr in METRICS if attr is not None}
    for w in data.workloads:
        rows = [(t.number, t.policy, r) for t in w.trials for r in t.runs]
        policies = [p for _, p, _ in rows]
        groups = [n for n, _, _ in rows]
        w.surrogates = {"reserved_mib": exact_metric("reserved_mib", lambda p: reserved_mib(p, hw), policies,
                                                     [r["reserved_mib"] for _, _, r in rows], len(w.trials))}
        memory_spread = np.ptp([reserved_mib(t.policy, hw) / per_gib for t in w.trials])
        for name in METRIC_NAMES[1:]:
            values = [r[name] for _, _, r in rows]
            if name in slo:
                decisive = max(values) > 0.5 * slo[name]
            elif name == "fallback_cost":
                decisive = np.ptp([t.metrics[name] for t in w.trials]) > 0.1 * memory_spread
            else:  # OOM events: any OOM at all decides
                decisive = max(values) > 0
            w.surrogates[name] = fit_metric(name, policies, values, groups, decisive=decisive)


def unhealthy(data: CampaignData) -> dict[str, list[str]]:
    """{workload: ["metric: why", ...]} for every surrogate that fails its accuracy check."""
    out: dict[str, list[str]] = {}
    for w in data.workloads:
        problems = [f"{m}: {s.accuracy.problem()}" for m, s in w.surrogates.items() if not s.accuracy.healthy]
        if problems:
            out[w.name] = problems
    return out


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

    @property
    def kernel_cmdline(self) -> str:
        return sim.Policy(**self.policy).kernel_cmdline()


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


def _choose(data: CampaignData, w: WorkloadData, policies, confidence: float, widen: float) -> tuple[Choice | None, Choice | None, list[int]]:
    probs = p_meet(w.surrogates, data.hardware, policies, widen)
    costs = _cost(w, data.hardware, policies)
    order = rank(policies, probs, costs, data.kernel, confidence)
    faithful = [i for i in order if not is_what_if(policies[i], data.kernel)]
    make = lambda i: Choice(dict(policies[i]), is_what_if(policies[i], data.kernel), float(probs[i]), float(costs[i]),
                            _predicted(w.surrogates, policies[i], widen))
    best_f = make(faithful[0]) if faithful else None
    best = make(order[0]) if order else None
    what_if = best if best is not None and best.what_if_reasons and (best_f is None or best.cost < best_f.cost) else None
    return best_f, what_if, faithful


def _cost(w: WorkloadData, hw, policies) -> np.ndarray:
    fallback = w.surrogates["fallback_cost"].interval(policies)[0]
    reserved = w.surrogates["reserved_mib"].interval(policies)[0]
    return fallback + reserved / (hw.memory_mib / 1024)


def recommend(data: CampaignData, *, confidence: float = DEFAULT_CONFIDENCE, confirm_seeds: int = CONFIRM_SEEDS,
              widen: float = 1.0, extrapolated: bool = False) -> Recommendation:
    """The recommendation for every workload of a fitted campaign (call `fit_surrogates` first)."""
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
    policies = candidate_policies(data)
    bad = unhealthy(data)
    fresh = fresh_seeds(data.seeds, confirm_seeds)
    default = asdict(sim.Policy.kernel_default(sim.kernel_behaviour(data.kernel)))
    zero = dict(default, n_per_cpu=0)
    results: list[WorkloadRecommendation] = []
    for w in data.workloads:
        problems = bad.get(w.name, [])
        if problems:
            results.append(WorkloadRecommendation(w.name, None, None, None, None, {}, {}, problems))
            continue
        best_f, what_if, faithful_order = _choose(data, w, policies, confidence, widen)
        confirmed, confirmation, comparison = None, {}, {}
        if best_f is not None and confirm_seeds > 0:
            base_default = simulate_runs(data.hardware, w.profile, default, fresh, w.seconds, data.kernel)
            base_zero = simulate_runs(data.hardware, w.profile, zero, fresh, w.seconds, data.kernel)
            # The first faithful candidate whose fresh replications meet every constraint.
            for i in faithful_order[:3]:
                runs = simulate_runs(data.hardware, w.profile, policies[i], fresh, w.seconds, data.kernel)
                cons = constraint_values(runs, data.hardware)
                if feasible(cons):
                    if policies[i] != best_f.policy:
                        probs = p_meet(w.surrogates, data.hardware, [policies[i]], widen)
                        best_f = Choice(dict(policies[i]), (), float(probs[0]), float(_cost(w, data.hardware, [policies[i]])[0]),
                                        _predicted(w.surrogates, policies[i], widen))
                    confirmed = True
                    break
                confirmed = False
            confirmation = {"seeds": list(fresh), "seconds": w.seconds,
                            "constraints": cons, "recommended": summarise(data.hardware, runs)}
            comparison = {
                "kernel_default": {"policy": default, **{"summary": summarise(data.hardware, base_default)}},
                "n_zero": {"policy": zero, "summary": summarise(data.hardware, base_zero)},
                "recommended_minus_default": compare(data.hardware, runs, base_default),
                "recommended_minus_n_zero": compare(data.hardware, runs, base_zero),
            }
        gain = None if what_if is None or best_f is None else best_f.cost - what_if.cost
        results.append(WorkloadRecommendation(w.name, best_f, what_if, gain, confirmed, confirmation, comparison, []))
    overall, overall_what_if = _overall(data, policies, confidence, widen, bad)
    fix = None
    if bad:
        trials = max(len(w.trials) for w in data.workloads) * 2
        names = " ".join(f"--workload {n}" for n in bad)
        fix = f"rcutune study --hardware {data.hardware.name} --study {data.name} {names} --trials {trials}"
    surrogate = {w.name: {m: {"estimator": s.accuracy.estimator, "n_trials": s.accuracy.n_trials,
                              "cv_r2": s.accuracy.cv_r2, "rank_correlation": s.accuracy.rank_correlation,
                              "coverage": s.accuracy.coverage, "decisive": bool(s.accuracy.decisive),
                              "noise_limited": s.accuracy.noise_limited,
                              "healthy": s.accuracy.healthy}
                          for m, s in w.surrogates.items()} for w in data.workloads}
    return Recommendation(data.name, data.hardware.name, data.kernel, data.simulator_version, confidence, data.seeds,
                          fresh, overall, overall_what_if, results, surrogate, bad, extrapolated, fix)


def _overall(data: CampaignData, policies, confidence: float, widen: float, bad) -> tuple[Choice | None, Choice | None]:
    """The cheapest policy (summed cost) that meets every workload at the confidence level."""
    if bad:
        return None, None
    probs = np.stack([p_meet(w.surrogates, data.hardware, policies, widen) for w in data.workloads])
    costs = np.sum([_cost(w, data.hardware, policies) for w in data.workloads], axis=0)
    worst = probs.min(axis=0)
    order = rank(policies, worst, costs, data.kernel, confidence)
    faithful = [i for i in order if not is_what_if(policies[i], data.kernel)]

    def make(i: int) -> Choice:
        predicted = {w.name: _predicted(w.surrogates, policies[i], widen) for w in data.workloads}
        return Choice(dict(policies[i]), is_what_if(policies[i], data.kernel), float(worst[i]), float(costs[i]), predicted)
    f = make(faithful[0]) if faithful else None
    w = make(order[0]) if order and is_what_if(policies[order[0]], data.kernel) else None
    if w is not None and f is not None and w.cost >= f.cost:
        w = None
    return f, w


def store(url: str, rec: Recommendation) -> None:
    """Record the surrogates' accuracy and the recommendations in the campaign's database (after success only)."""
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
                    session.add(storage.SurrogateRecord(
                        study=study, metric=metric, estimator=a["estimator"], estimator_params={},
                        n_trials=a["n_trials"], cv_r2=a["cv_r2"], rank_correlation=a["rank_correlation"],
                        interval_coverage=a["coverage"], passed=bool(a["healthy"])))
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
