"""Search quality on pairs chosen by a rule: rcutune's study and recommendation against an exhaustive
sweep, and against random search with the same budget.

Pairs. Every (hardware, workload) pair of the shipped profiles (the calibrated qemu guests left out)
is screened: the per-CPU layout at N = 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128 on the
base seeds. A pair qualifies when N matters there: some screened policy is feasible and the cheapest
feasible one has 0 < N < 128. From the qualifying pairs a sample of `--pairs` (default 8) is drawn
with a fixed seed (`--seed`), or all of them if there are fewer.

Ground truth per pair: an exhaustive sweep of N (0..128) x layout (per-cpu, global, hybrid with a
shared reserve of one page per CPU), every configuration on the campaign's whole seed list (base +
racing seeds) with the other parameters at the kernel's values, scored by the scalar objective
(`--objective scalar`), infeasible configurations ranked after feasible ones. rcutune's study and
random search (each configuration on the base seeds) get at most 10 % of the sweep's simulations;
a low-fidelity run counts as a whole simulation. Regret = (true value of the pick - optimum) /
optimum, in percent; the study's pick is its raced best trial, the recommendation's is what
`rcutune recommend` answers from the same study (its practical threshold counts differences under
0.5 ms/s as ties, so its regret may be above the study's by design).

Prints one line per pair and ends with:
pairs=<int> optimum_found=<int> median_regret_pct=<float> random_median_regret_pct=<float>
budget_fraction=<float> recommendation_median_regret_pct=<float>
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Printer, record  # noqa: E402

from rcutune import sim  # noqa: E402
from rcutune.tuner.recommend import fit_surrogates, load_campaign, practical_thresholds, recommend  # noqa: E402
from rcutune.tuner.search import (  # noqa: E402
    StudyRequest,
    build_definition,
    constraint_values,
    objective_values,
    raced_best,
    run_campaign,
)

SCREEN_N = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
N_VALUES = range(0, 129)
LAYOUTS = ("per-cpu", "global", "hybrid")
SECONDS, BASE, RACE = 1.0, 2, 2
PRACTICAL_FALLBACK_MS_PER_S = practical_thresholds(sim.load_hardware("vm-2"))["fallback_cost"]  # one for every profile
BUDGET = 0.10
CONFIRM_SEEDS = 2


def _request(hardware: str, workload: str, url: str, trials: int) -> StudyRequest:
    cpus = sim.load_hardware(hardware, {}).cpus
    fixed = (
        ("refill_delay_ms", 5000),
        ("refill_low_watermark_fraction", 0.0),
        ("emergency_reserve_fraction", 0.0),
        ("prealloc_at_boot", False),
        ("shared_reserve_pages", cpus),
    )
    return StudyRequest(
        hardware=hardware,
        workloads=(workload,),
        fixed=fixed,
        objective="scalar",
        trials=trials,
        storage_url=url,
        jobs=min(2, os.cpu_count() or 1),
        max_seconds=SECONDS,
        replications=BASE,
        race_replications=RACE,
    )


def _simulate(args):
    hardware, workload, policy, seed = args
    return sim.simulate(hardware, workload, policy, seconds=SECONDS, seed=seed)


def _key(scalar: float, constraints: dict[str, float]) -> tuple[float, float]:
    return (sum(v for v in constraints.values() if v > 0), scalar)


def screen(pool) -> list[tuple[str, str]]:
    """The pairs where N matters (see the module docstring)."""
    hardware = [h for h in sim.list_profiles("hardware") if not h.startswith("qemu-")]
    qualifying = []
    for hw_name in hardware:
        for wl_name in sim.list_profiles("workload"):
            d = build_definition(_request(hw_name, wl_name, "sqlite://", 1))
            hw, wl = d.hardware, d.workloads[0]
            policies = [d.space.policy({"n_per_cpu": n, "layout": "per-cpu"}) for n in SCREEN_N]
            seeds = d.seeds[:BASE]
            runs = list(pool.map(_simulate, [(hw, wl, p, s) for p in policies for s in seeds], chunksize=4))
            feasible = []
            for i, n in enumerate(SCREEN_N):
                mine = runs[i * BASE : (i + 1) * BASE]
                if all(v <= 0 for v in constraint_values(mine, hw).values()):
                    feasible.append((float(np.mean([objective_values(m, hw)["scalar"] for m in mine])), n))
            if feasible and 0 < min(feasible)[1] < 128:
                qualifying.append((hw_name, wl_name))
    return qualifying


def sweep(definition, pool) -> dict[tuple[int, str], dict]:
    """Every configuration on every seed: {(N, layout): {"key", "scalar", "base_key"}}."""
    hw, wl = definition.hardware, definition.workloads[0]
    configs = [(n, layout) for layout in LAYOUTS for n in N_VALUES]
    policies = {c: definition.space.policy({"n_per_cpu": c[0], "layout": c[1]}) for c in configs}
    jobs = [(hw, wl, policies[c], seed) for c in configs for seed in definition.seeds]
    runs = list(pool.map(_simulate, jobs, chunksize=8))
    k = len(definition.seeds)
    out = {}
    for i, c in enumerate(configs):
        mine = runs[i * k : (i + 1) * k]
        scalar = float(np.mean([objective_values(m, hw)["scalar"] for m in mine]))
        base = mine[:BASE]
        base_scalar = float(np.mean([objective_values(m, hw)["scalar"] for m in base]))
        out[c] = {
            "key": _key(scalar, constraint_values(mine, hw)),
            "scalar": scalar,
            "base_key": _key(base_scalar, constraint_values(base, hw)),
        }
    return out


def _simulations(trials) -> int:
    """Simulations the study ran (a low-fidelity run counts whole; an identical run reused counts nothing)."""
    return sum(t.user_attrs.get("simulations", 0) for t in trials)


def rcutune_picks(hardware: str, workload: str, budget: int, workdir: Path) -> tuple[tuple, tuple | None, int]:
    """Run the study in chunks until another trial could overrun the budget; return its pick, the
    recommendation's pick (None when it gives none) and the simulations the study used."""
    url = f"sqlite:///{workdir / f'{hardware}-{workload}.db'}"
    per_trial_max = 1 + BASE + RACE
    used = 0
    while budget - used >= per_trial_max:
        run_campaign(_request(hardware, workload, url, trials=max(1, (budget - used) // per_trial_max)))
        study = optuna.load_study(study_name=f"{hardware}/{workload}", storage=url)
        used = _simulations(study.get_trials())
    trials = study.get_trials()
    best = raced_best(trials)
    if best is None:  # nothing raced and feasible: the best complete trial, infeasible ones last
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = min(done, key=lambda t: _key(t.value, t.constraints))
    policy = best.user_attrs["policy"]
    data = load_campaign(url, hardware)
    fit_surrogates(data)
    rec = recommend(data, confirm_seeds=CONFIRM_SEEDS)
    chosen = rec.overall_what_if or rec.overall  # a what-if is only given when it beats the stock answer
    pick = None if chosen is None else (chosen.policy.n_per_cpu, chosen.policy.layout)
    return (policy["n_per_cpu"], policy["layout"]), pick, used


def random_pick(truth: dict, budget: int, seed: int) -> tuple[int, str]:
    rng = np.random.default_rng(seed)
    configs = list(truth)
    chosen = [configs[i] for i in rng.choice(len(configs), size=min(len(configs), budget // BASE), replace=False)]
    return min(chosen, key=lambda c: truth[c]["base_key"])


def regret_pct(truth: dict, pick: tuple[int, str] | None, best: tuple[int, str]) -> float:
    if pick is None:
        return float("inf")
    v, opt = truth[pick], truth[best]
    if v["key"][0] > 0 and opt["key"][0] == 0:
        return float("inf")
    return 100.0 * (v["scalar"] - opt["scalar"]) / max(abs(opt["scalar"]), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="pairs sampled from the qualifying ones")
    parser.add_argument("--seed", type=int, default=20261207, help="seed of the sample of pairs")
    parser.add_argument("--random-repeats", type=int, default=5, help="random searches per pair (median regret)")
    parser.add_argument(
        "--truth-cache", type=Path, help="keep the screen and sweeps in this pickle file and reuse them"
    )
    parser.add_argument("--record", action="store_true", help="also write the figures into bench/README.md")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Printer()
    cache: dict = {}
    if args.truth_cache is not None and args.truth_cache.exists():
        cache = pickle.loads(args.truth_cache.read_bytes())

    def keep() -> None:
        if args.truth_cache is not None:
            args.truth_cache.write_bytes(pickle.dumps(cache))

    regrets, rec_regrets, random_regrets, found, fractions, rec_excess = [], [], [], 0, [], []
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        if ("screen", sim.SIMULATOR_VERSION) not in cache:
            cache[("screen", sim.SIMULATOR_VERSION)] = screen(pool)
            keep()
        qualifying = cache[("screen", sim.SIMULATOR_VERSION)]
        rng = np.random.default_rng(args.seed)
        pairs = (
            qualifying
            if len(qualifying) <= args.pairs
            else [qualifying[i] for i in sorted(rng.choice(len(qualifying), size=args.pairs, replace=False))]
        )
        out(
            f"screen: {len(qualifying)} of the shipped pairs qualify; sampled {len(pairs)} with seed {args.seed}: "
            + ", ".join(f"{h}/{w}" for h, w in pairs)
        )
        for hardware, workload in pairs:
            start = time.monotonic()
            definition = build_definition(_request(hardware, workload, "sqlite://", 1))
            key = (hardware, workload, sim.SIMULATOR_VERSION)
            if key not in cache:
                cache[key] = sweep(definition, pool)
                keep()
            truth = cache[key]
            best = min(truth, key=lambda c: truth[c]["key"])
            sweep_sims = len(truth) * len(definition.seeds)
            budget = int(BUDGET * sweep_sims)
            pick, rec_pick, used = rcutune_picks(hardware, workload, budget, Path(tmp))
            regret, rec_regret = regret_pct(truth, pick, best), regret_pct(truth, rec_pick, best)
            rnd = statistics.median(
                regret_pct(truth, random_pick(truth, budget, s), best) for s in range(args.random_repeats)
            )
            regrets.append(regret)
            rec_regrets.append(rec_regret)
            random_regrets.append(rnd)
            found += pick == best or regret <= 0.0
            fractions.append(used / sweep_sims)
            rec_text = "none" if rec_pick is None else f"N={rec_pick[0]} {rec_pick[1]}"
            excess = truth[rec_pick]["scalar"] - truth[best]["scalar"] if rec_pick in truth else float("inf")
            rec_excess.append(excess)
            out(
                f"{hardware}/{workload}: optimum N={best[0]} {best[1]} scalar={truth[best]['scalar']:.5g}; "
                f"study N={pick[0]} {pick[1]} regret={regret:.3f}% with {used}/{sweep_sims} simulations; "
                f"recommendation {rec_text} regret={rec_regret:.3f}% (+{excess:.3g}); random regret={rnd:.3f}% "
                f"({time.monotonic() - start:.0f} s)"
            )
    out(
        f"recommendation's excess over the optimum, median: {statistics.median(rec_excess):.3g} in the scalar "
        f"objective's units (ms/s of stall, or MiB reserved per GiB); the rule counts differences under "
        f"{PRACTICAL_FALLBACK_MS_PER_S:g} ms/s as ties and then keeps the kernel default"
    )
    out(
        f"pairs={len(pairs)} optimum_found={found} median_regret_pct={statistics.median(regrets):.3f} "
        f"random_median_regret_pct={statistics.median(random_regrets):.3f} budget_fraction={max(fractions):.3f} "
        f"recommendation_median_regret_pct={statistics.median(rec_regrets):.3f}"
    )
    if args.record:
        record("search_quality", out.lines)


if __name__ == "__main__":
    main()
