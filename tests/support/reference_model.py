"""The per-call reference model: every kvfree_rcu() call is its own SimPy event.

It runs the same kernel mechanisms as `sim` (monitor, batches, refill, shrinker, allocator), but
each CPU's calls arrive one at a time at exponential gaps drawn from the same rate schedule, and
each is booked at its own instant. The aggregated model books calls in bulk, lazily, and resolves
cache misses with renewal draws; the tests compare the two on small cases.
"""

from __future__ import annotations

import numpy as np

from rcutune import sim
from rcutune.sim._arrivals import RateSchedule
from rcutune.sim._engine import Model
from rcutune.sim._streams import stream


def _caller(model: Model, krc, schedule: RateSchedule, rng: np.random.Generator):
    """One CPU's callers: a Poisson process, thinned per millisecond slot to the scheduled rate."""
    env = model.env
    w = model.workload
    mix = np.array(
        [
            (1 - w.headless_fraction) * (1 - w.vmalloc_fraction),
            (1 - w.headless_fraction) * w.vmalloc_fraction,
            w.headless_fraction * (1 - w.vmalloc_fraction),
            w.headless_fraction * w.vmalloc_fraction,
        ]
    )
    peak = max(1e-9, w.calls_per_s_per_cpu * float(schedule.weights[:, krc.cpu].max()) * float(schedule.burst.max()))
    kinds = np.eye(4, dtype=np.int64)
    while True:
        yield env.timeout(rng.exponential(1.0 / peak))
        now = env.now
        if now >= model.end:
            return
        slot = int(now / 1e-3)
        rate = float(schedule.rate(krc.cpu, slot, 1)[0])
        if rng.random() * peak > rate:
            continue
        kind = int(rng.choice(4, p=mix))
        krc.book(now, tuple(int(x) for x in kinds[kind]), now)


def simulate_per_call(
    hardware: sim.HardwareProfile,
    workload: sim.WorkloadProfile,
    policy: sim.Policy,
    *,
    seconds: float,
    seed: int,
    kernel: str = sim.DEFAULT_KERNEL,
) -> sim.Metrics:
    """The reference run; same inputs and outputs as `sim.simulate` (open-loop workloads only)."""
    assert workload.shape == "open"
    model = Model(hardware, workload, policy, sim.kernel_behaviour(kernel), seconds, seed)
    schedule = RateSchedule(workload, hardware.cpus, seconds, seed)
    for krc in model.krcs:
        krc.stream = None  # nothing is booked lazily: the callers below book every call
        model.env.process(_caller(model, krc, schedule, stream(seed + 10_000, "arrivals", krc.cpu)))
    return model.run()
