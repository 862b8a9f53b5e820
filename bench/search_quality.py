"""Search quality: rcutune's study against an exhaustive sweep and against random search.

For each (hardware, workload) pair the ground truth is an exhaustive sweep of N (0..128) x layout
(per-cpu, global, hybrid with a shared reserve of one page per CPU), every configuration simulated
on the campaign's whole seed list (base + racing seeds) with the other parameters at the kernel's
values, scored by the scalar objective (`--objective scalar`) with infeasible configurations
ranked after feasible ones. rcutune's study and random search (each configuration on the base
seeds) get at most 10% of the sweep's simulations; a low-fidelity run counts as a whole simulation.
Regret = (true value of the pick - optimum) / optimum, in percent.

Prints one line per pair and ends with:
pairs=<int> optimum_found=<int> median_regret_pct=<float> random_median_regret_pct=<float> budget_fraction=<float>
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

from rcutune import sim  # noqa: E402
from rcutune.tuner.search import StudyRequest, build_definition, constraint_values, objective_values, raced_best, run_campaign  # noqa: E402

# Pairs where N matters: feasible policies exist and the best N is inside the range, not at 0.
PAIRS = (("laptop-8", "nocb-flood"), ("rt-16-nocb", "nocb-flood"), ("vm-2", "rcuscale"))
N_VALUES = range(0, 129)
LAYOUTS = ("per-cpu", "global", "hybrid")
SECONDS, BASE, RACE = 1.0, 2, 2
BUDGET = 0.10


def _request(hardware: str, workload: str, url: str, trials: int) -> StudyRequest:
    cpus = sim.load_hardware(hardware, {}).cpus
    fixed = (("refill_delay_ms", 5000), ("refill_low_watermark_fraction", 0.0), ("emergency_reserve_fraction", 0.0),
             ("prealloc_at_boot", False), ("shared_reserve_pages", cpus))
    return StudyRequest(hardware=hardware, workloads=(workload,), fixed=fixed, objective="scalar", trials=trials,
                        storage_url=url, jobs=min(2, os.cpu_count() or 1), max_seconds=SECONDS, replications=BASE,
                        race_replications=RACE)


def _simulate(args):
    hardware, workload, policy, seed = args
    return sim.simulate(hardware, workload, policy, seconds=SECONDS, seed=seed)


def _key(scalar: float, constraints: dict[str, float]) -> tuple[float, float]:
    return (sum(v for v in constraints.values() if v > 0), scalar)


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
        mine = runs[i * k:(i + 1) * k]
        scalar = float(np.mean([objective_values(m, hw)["scalar"] for m in mine]))
        base = mine[:BASE]
        base_scalar = float(np.mean([objective_values(m, hw)["scalar"] for m in base]))
        out[c] = {"key": _key(scalar, constraint_values(mine, hw)), "scalar": scalar,
                  "base_key": _key(base_scalar, constraint_values(base, hw))}
    return out


def _simulations(trials) -> int:
    """Simulations the study ran (a low-fidelity run counts whole; an identical run reused counts nothing)."""
    return sum(t.user_attrs.get("simulations", 0) for t in trials)


def rcutune_pick(hardware: str, workload: str, budget: int, workdir: Path) -> tuple[tuple[int, str], int]:
    """Run the study in chunks until another trial could overrun the budget; return its pick and simulations used."""
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
    return (policy["n_per_cpu"], policy["layout"]), used


def random_pick(truth: dict, budget: int, seed: int) -> tuple[int, str]:
    rng = np.random.default_rng(seed)
    configs = list(truth)
    chosen = [configs[i] for i in rng.choice(len(configs), size=min(len(configs), budget // BASE), replace=False)]
    return min(chosen, key=lambda c: truth[c]["base_key"])


def regret_pct(truth: dict, pick: tuple[int, str], best: tuple[int, str]) -> float:
    v, opt = truth[pick], truth[best]
    if v["key"][0] > 0 and opt["key"][0] == 0:
        return float("inf")
    return 100.0 * (v["scalar"] - opt["scalar"]) / max(abs(opt["scalar"]), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random-repeats", type=int, default=5, help="random searches per pair (median regret)")
    parser.add_argument("--truth-cache", type=Path, help="keep the sweeps in this pickle file and reuse them")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    regrets, random_regrets, found, fractions = [], [], 0, []
    cache = None
    if args.truth_cache is not None:
        cache = pickle.loads(args.truth_cache.read_bytes()) if args.truth_cache.exists() else {}
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        for hardware, workload in PAIRS:
            start = time.monotonic()
            definition = build_definition(_request(hardware, workload, "sqlite://", 1))
            truth = cache.get((hardware, workload)) if cache is not None else None
            if truth is None:
                truth = sweep(definition, pool)
                if cache is not None:
                    cache[(hardware, workload)] = truth
                    args.truth_cache.write_bytes(pickle.dumps(cache))
            best = min(truth, key=lambda c: truth[c]["key"])
            sweep_sims = len(truth) * len(definition.seeds)
            budget = int(BUDGET * sweep_sims)
            pick, used = rcutune_pick(hardware, workload, budget, Path(tmp))
            regret = regret_pct(truth, pick, best)
            rnd = statistics.median(regret_pct(truth, random_pick(truth, budget, s), best)
                                    for s in range(args.random_repeats))
            regrets.append(regret)
            random_regrets.append(rnd)
            found += pick == best or regret <= 0.0
            fractions.append(used / sweep_sims)
            print(f"{hardware}/{workload}: optimum N={best[0]} {best[1]} scalar={truth[best]['scalar']:.5g}; "
                  f"rcutune N={pick[0]} {pick[1]} regret={regret:.3f}% with {used}/{sweep_sims} simulations; "
                  f"random regret={rnd:.3f}% ({time.monotonic() - start:.0f} s)", flush=True)
    print(f"pairs={len(PAIRS)} optimum_found={found} median_regret_pct={statistics.median(regrets):.3f} "
          f"random_median_regret_pct={statistics.median(random_regrets):.3f} budget_fraction={max(fractions):.3f}")


if __name__ == "__main__":
    main()
