"""How fast the aggregated model runs, against the per-call reference model measured in the same run.

1. The same 64-CPU steady scenario (server-64 / steady, kernel 6.3, N=5) through the aggregated
   model and through the per-call reference model (tests/reference_model.py): simulated calls per
   CPU second of each, and their ratio.
2. An rcuscale-shaped flood of 16 threads, 10000 loops x 8000 frees each (1.28e9 calls, the shape
   of Rezki's 2023 runs) on a 16-CPU server: simulated seconds per wall second.

Times are process CPU seconds, so other load on the machine does not distort the ratio.
The last line is `calls_per_wall_second=<float> speedup_vs_reference=<float> flood_realtime_factor=<float>`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rcutune import sim  # noqa: E402
from tests.support.reference_model import simulate_per_call  # noqa: E402


def timed(fn):
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def main() -> None:
    hw = sim.load_hardware("server-64")
    steady = sim.load_workload("steady")
    policy = sim.Policy()
    aggregated, agg_s = timed(lambda: sim.simulate(hw, steady, policy, seconds=10.0, seed=1))
    reference, ref_s = timed(lambda: simulate_per_call(hw, steady, policy, seconds=0.25, seed=1))
    agg_rate = aggregated.calls / agg_s
    ref_rate = reference.calls / ref_s
    print(
        f"steady 64-CPU, aggregated: {aggregated.calls:,} calls in {agg_s:.2f} s "
        f"({agg_rate:,.0f} calls/s, {aggregated.events:,} events)"
    )
    print(
        f"steady 64-CPU, per-call reference: {reference.calls:,} calls in {ref_s:.2f} s "
        f"({ref_rate:,.0f} calls/s, {reference.events:,} events)"
    )

    overrides = sim.split_overrides(["hardware.cpus=16", "workload.kfree_nthreads=16", "workload.kfree_loops=10000"])
    flood_hw = sim.load_hardware("server-64", overrides["hardware"])
    flood_wl = sim.load_workload("rcuscale", overrides["workload"])
    flood, flood_s = timed(lambda: sim.simulate(flood_hw, flood_wl, policy, seconds=600.0, seed=1))
    print(
        f"rcuscale flood, 16 threads: {flood.calls:,} calls, {flood.sim_seconds:.2f} simulated s "
        f"in {flood_s:.2f} s ({flood.events:,} events; kernel figures: "
        f"{flood.rcuscale_total_time_ns:,} ns, {flood.rcuscale_batches} batches, {flood.rcuscale_footprint_mb} MB)"
    )
    print(
        f"calls_per_wall_second={agg_rate:.1f} speedup_vs_reference={agg_rate / ref_rate:.1f} "
        f"flood_realtime_factor={flood.sim_seconds / flood_s:.2f}"
    )


if __name__ == "__main__":
    main()
