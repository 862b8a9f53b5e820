"""How fast the aggregated model runs, against the per-call reference model measured in the same run.

1. The same 64-CPU steady scenario (server-64 / steady, kernel 6.3, N=5) through the aggregated
   model and through the per-call reference model (tests/reference_model.py): simulated calls per
   CPU second of each, and their ratio.
2. An rcuscale-shaped flood of 16 threads, 10000 loops x 8000 frees each (1.28e9 calls, the shape
   of Rezki's 2023 runs) on a 16-CPU server: simulated seconds per wall second.

Times are process CPU seconds, so other load on the machine does not distort the ratio.
`--runs R` repeats both and prints each run; the last line holds the medians over the runs:
`calls_per_wall_second=<float> speedup_vs_reference=<float> flood_realtime_factor=<float>`.
`--record` writes the output into bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import Printer, record  # noqa: E402
from rcutune import sim  # noqa: E402
from tests.support.reference_model import simulate_per_call  # noqa: E402


def timed(fn):
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def one_run(say: Printer) -> tuple[float, float, float]:
    hw = sim.load_hardware("server-64")
    steady = sim.load_workload("steady")
    policy = sim.Policy()
    aggregated, agg_s = timed(lambda: sim.simulate(hw, steady, policy, seconds=10.0, seed=1))
    reference, ref_s = timed(lambda: simulate_per_call(hw, steady, policy, seconds=0.25, seed=1))
    agg_rate = aggregated.calls / agg_s
    ref_rate = reference.calls / ref_s
    say(
        f"steady 64-CPU, aggregated: {aggregated.calls:,} calls in {agg_s:.2f} s "
        f"({agg_rate:,.0f} calls/s, {aggregated.events:,} events)"
    )
    say(
        f"steady 64-CPU, per-call reference: {reference.calls:,} calls in {ref_s:.2f} s "
        f"({ref_rate:,.0f} calls/s, {reference.events:,} events)"
    )

    overrides = sim.split_overrides(["hardware.cpus=16", "workload.kfree_nthreads=16", "workload.kfree_loops=10000"])
    flood_hw = sim.load_hardware("server-64", overrides["hardware"])
    flood_wl = sim.load_workload("rcuscale", overrides["workload"])
    flood, flood_s = timed(lambda: sim.simulate(flood_hw, flood_wl, policy, seconds=600.0, seed=1))
    say(
        f"rcuscale flood, 16 threads: {flood.calls:,} calls, {flood.sim_seconds:.2f} simulated s "
        f"in {flood_s:.2f} s ({flood.events:,} events; kernel figures: "
        f"{flood.rcuscale_total_time_ns:,} ns, {flood.rcuscale_batches} batches, {flood.rcuscale_footprint_mb} MB)"
    )
    return agg_rate, agg_rate / ref_rate, flood.sim_seconds / flood_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat this many times; the last line holds medians")
    parser.add_argument("--record", action="store_true", help="also write the figures into bench/README.md")
    args = parser.parse_args()
    say = Printer()
    runs = []
    for i in range(args.runs):
        if args.runs > 1:
            say(f"run {i + 1} of {args.runs}")
        runs.append(one_run(say))
    rate, speedup, realtime = (statistics.median(r[k] for r in runs) for k in range(3))
    say(f"calls_per_wall_second={rate:.1f} speedup_vs_reference={speedup:.1f} flood_realtime_factor={realtime:.2f}")
    if args.record:
        record("sim_speed", say.lines)


if __name__ == "__main__":
    main()
