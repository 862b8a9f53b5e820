"""Running the simulator on a measured point: same guest, same parameters, several seeds.

A point's guest becomes the hardware profile `qemu-<accelerator>-<cpus>` with the guest's memory,
and its memory in use when the test starts becomes the workload's `anon_fraction`: what the
guest's `Memory: <avail>K/<total>K available` line says the kernel kept at boot, plus what the
rest of the boot allocated afterwards (`boot_extra_mib`, calibrated). There is no file cache in
the guest (an initramfs of one static binary, no block device), so the profiles have none.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from rcutune import sim

from ._data import Point

KERNEL = "6.1"
TIME_CAP_S = 120.0  # the harness's boot timeout; a simulated run never needs more
PREEMPT_MODELS = {
    "none": ("none", False),
    "voluntary": ("voluntary", False),
    "full": ("full", False),
    "dynamic": ("voluntary", True),
    "rt": ("full", False),
}
"""The harness's preempt_model column -> the hardware profile's (preempt, preempt_dynamic)."""


def profile_name(accelerator: str, cpus: int) -> str:
    """The hardware profile that describes a guest, e.g. qemu-tcg-2."""
    return f"qemu-{accelerator}-{cpus}"


@dataclass(frozen=True)
class GuestModel:
    """How one kind of guest maps onto the simulator."""

    hardware: sim.HardwareProfile
    boot_extra_mib: float  # memory the boot used after its "Memory:" line, until the test starts


@dataclass(frozen=True)
class SeedResult:
    """One simulated run of a point."""

    point_id: str
    seed: int
    oom: bool
    time_ms: float | None
    batches: int | None
    footprint_mb: int | None


@dataclass(frozen=True)
class SimPoint:
    """The simulated counterpart of a measured `Point`: medians over the seeds that did not OOM."""

    point_id: str
    runs: int
    oom: int
    time_ms: float | None
    batches: float | None
    footprint_mb: float | None

    @property
    def oom_probability(self) -> float:
        return self.oom / self.runs if self.runs else 0.0


def anon_fraction(point: Point, boot_extra_mib: float) -> float:
    """Memory in use besides the test when it starts, as a fraction of the guest's memory."""
    mem_kib = point.params.guest_mem_mib * 1024
    used_kib = mem_kib - point.guest_mem_available_kib + boot_extra_mib * 1024
    return min(1.0, max(0.0, used_kib / mem_kib))


def point_inputs(point: Point, guest: GuestModel) -> tuple[sim.HardwareProfile, sim.WorkloadProfile, sim.Policy]:
    """The simulator's inputs for one measured point."""
    p = point.params
    # The build's preemption model and the offloaded CPUs are the point's, not the fit's.
    preempt, dynamic = PREEMPT_MODELS.get(p.preempt_model, ("none", False))
    hw = guest.hardware.model_copy(
        update={
            "memory_mib": p.guest_mem_mib,
            "cpus": p.guest_cpus,
            "preempt": preempt,
            "preempt_dynamic": dynamic,
            "nocb_cpus": p.nocb_cpus,
        }
    )
    wl = sim.load_workload(
        "rcuscale",
        {
            "kfree_nthreads": str(p.kfree_nthreads),
            "kfree_alloc_num": str(p.kfree_alloc_num),
            "kfree_loops": str(p.kfree_loops),
            "kfree_mult": str(p.kfree_mult),
            "kfree_rcu_test_single": "true" if p.kfree_rcu_test_single else "false",
            "kfree_rcu_test_double": "true" if p.kfree_rcu_test_double else "false",
            "anon_fraction": repr(anon_fraction(point, guest.boot_extra_mib)),
        },
    )
    policy = sim.Policy(n_per_cpu=p.rcu_min_cached_objs, refill_delay_ms=p.rcu_delay_page_cache_fill_msec)
    return hw, wl, policy


def run_seed(point: Point, guest: GuestModel, seed: int) -> SeedResult:
    """One simulated rcuscale run of a point."""
    hw, wl, policy = point_inputs(point, guest)
    m = sim.simulate(hw, wl, policy, seconds=TIME_CAP_S, seed=seed, kernel=KERNEL)
    if m.rcuscale_enomem:
        return SeedResult(point.point_id, seed, True, None, None, None)
    if m.rcuscale_total_time_ns is None:  # still running at the cap, as a boot that timed out
        return SeedResult(point.point_id, seed, False, TIME_CAP_S * 1e3, m.grace_periods, None)
    return SeedResult(
        point.point_id, seed, False, m.rcuscale_total_time_ns / 1e6, m.rcuscale_batches, m.rcuscale_footprint_mb
    )


def _run_task(task: tuple[Point, GuestModel, int]) -> SeedResult:
    return run_seed(*task)


def summarize_runs(point_id: str, results: Iterable[SeedResult]) -> SimPoint:
    """Medians over the runs that finished, and how many ended in an OOM."""
    results = list(results)
    ok = [r for r in results if not r.oom]

    def med(values: list[float]) -> float | None:
        return float(statistics.median(values)) if values else None

    return SimPoint(
        point_id=point_id,
        runs=len(results),
        oom=len(results) - len(ok),
        time_ms=med([r.time_ms for r in ok if r.time_ms is not None]),
        batches=med([r.batches for r in ok if r.batches is not None]),
        footprint_mb=med([r.footprint_mb for r in ok if r.footprint_mb is not None]),
    )


def seeds_for(point: Point, seeds: int, oom_seeds: int) -> list[int]:
    """Pressure points need more runs: their OOM probability is estimated from them."""
    return list(range(oom_seeds if point.pressure else seeds))


class Runner:
    """Simulates many (point, seed) runs, in `jobs` worker processes (1: in this process).

    A context manager, so one pool serves every evaluation of a calibration.
    """

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, jobs)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        if self.jobs > 1:
            self._pool = ProcessPoolExecutor(max_workers=self.jobs)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def simulate(
        self, points: list[Point], guests: dict[str, GuestModel], *, seeds: int, oom_seeds: int
    ) -> dict[str, SimPoint]:
        """Every point under its guest model, `seeds` runs each (`oom_seeds` for pressure points).

        Raises:
            KeyError: a point whose guest (`qemu-<accel>-<cpus>`) has no model.
        """
        tasks = []
        for point in points:
            guest = guests[profile_name(point.params.accelerator, point.params.guest_cpus)]
            tasks.extend((point, guest, s) for s in seeds_for(point, seeds, oom_seeds))
        # Longest runs first, so the workers finish together.
        tasks.sort(key=lambda t: -t[0].params.kfree_loops * t[0].params.guest_cpus)
        if self._pool is None:
            results = [_run_task(t) for t in tasks]
        else:
            chunk = max(1, math.ceil(len(tasks) / (self.jobs * 8)))
            results = list(self._pool.map(_run_task, tasks, chunksize=chunk))
        by_point: dict[str, list[SeedResult]] = {}
        for r in results:
            by_point.setdefault(r.point_id, []).append(r)
        return {p.point_id: summarize_runs(p.point_id, by_point.get(p.point_id, [])) for p in points}
