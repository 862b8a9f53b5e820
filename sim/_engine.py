"""`simulate()`: one run of the model, a pure function of (hardware, workload, policy, kernel, seconds, seed)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial

import numpy as np
import simpy

from ._arrivals import ArrivalStream, RateSchedule
from ._cpu import CpuSet
from ._gp import GraceEngine
from ._kernels import DEFAULT_KERNEL, KernelBehaviour, kernel_behaviour
from ._krc import Collaborators, KfreeRcuCpu
from ._memory import Kswapd, PageAllocator, Shrinker
from ._metrics import LatencyHistogram, Metrics
from ._policy import Policy
from ._pool import PageCache
from ._profiles import HardwareProfile, WorkloadProfile
from ._rcuscale import RcuscaleTest
from ._reclaim import ReclaimPipeline
from ._slab import FreeCosts
from ._stats import Ledger, Stats
from ._streams import stream

STRANDED_IDLE_S = 1.0  # a CPU with no call for this long holds its cached pages unused
TRACE_POINTS = 400
RCUSCALE_TRACE_STEP_S = 250e-6  # a quarter of a 4 ms jiffy: the default rcuscale run lasts ~12 ms


class _CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes (the `events` metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.processed = 0

    def step(self) -> None:
        self.processed += 1
        super().step()


@dataclass
class Trace:
    """Time series of one run, for reports: pending memory, free memory and fallbacks over time."""

    t: list[float] = field(default_factory=list)
    bytes_pending: list[float] = field(default_factory=list)
    free_pages: list[float] = field(default_factory=list)
    sync_fallbacks: list[int] = field(default_factory=list)
    head_fallbacks: list[int] = field(default_factory=list)
    cached_pages: list[int] = field(default_factory=list)


class Model:
    """One run: builds the mechanisms, hands each its collaborators, runs them, collects the metrics."""

    def __init__(
        self,
        hw: HardwareProfile,
        workload: WorkloadProfile,
        policy: Policy,
        kernel: KernelBehaviour,
        seconds: float,
        seed: int,
        trace: bool = False,
    ) -> None:
        self.hw, self.workload, self.policy, self.kernel = hw, workload, policy, kernel
        self.env = env = _CountingEnvironment()
        self.end = seconds
        self.seed = seed
        self.records = kernel.records_per_block(hw.page_size)
        self.is_rcuscale = workload.shape == "rcuscale"
        self.slab_bytes = float(workload.rcuscale_slab_bytes if self.is_rcuscale else workload.object_bytes)
        self.stats = Stats()
        self.latency = LatencyHistogram()
        self.cpus = CpuSet(
            env,
            hw.cpus,
            hw.preempt,
            hw.hz,
            hw.wq_latency_us * 1e-6,
            on_switch=lambda cpu, now: self.gp.context_switch(cpu, now),
            switch_s=hw.context_switch_us * 1e-6,
            eevdf=kernel.eevdf,
        )
        self.gp = GraceEngine(env, hw, kernel, self.cpus, stream(seed, "grace_periods"), stream(seed, "expedited"))
        for rq in self.cpus.queues:
            rq.on_idle = self.gp.cpu_idle
        self.ledger = Ledger(self.gp.start_of)
        self.alloc = PageAllocator(hw, workload, policy.emergency_reserve_fraction, seconds, stream(seed, "memory"))
        self.alloc.pending = self.ledger
        self.pool = PageCache(policy, hw.cpus, hw.global_lock_hold_ns * 1e-9)
        self.pipeline = ReclaimPipeline(env, hw, kernel, self.gp, self.cpus)
        locality = 1.0 if self.is_rcuscale else workload.slab_locality  # rcuscale frees in allocation order
        costs = FreeCosts(hw, int(self.slab_bytes), locality)
        collaborators = Collaborators(
            env=env,
            kernel=kernel,
            hw=hw,
            policy=policy,
            gp=self.gp,
            alloc=self.alloc,
            pool=self.pool,
            cpus=self.cpus,
            pipeline=self.pipeline,
            costs=costs,
            stats=self.stats,
            ledger=self.ledger,
            latency=self.latency,
            records=self.records,
            slab_bytes=self.slab_bytes,
            vmalloc_bytes=float(workload.vmalloc_object_bytes),
            end=seconds,
            sheaf_share=workload.sheaf_share,
            sheaf_capacity=workload.sheaf_capacity,
        )
        schedule = None
        if not self.is_rcuscale and workload.calls_per_s_per_cpu > 0:
            schedule = RateSchedule(workload, hw.cpus, seconds, seed)
        self.krcs = [
            KfreeRcuCpu(
                collaborators,
                cpu,
                ArrivalStream(schedule, cpu, seed) if schedule else None,
                partial(stream, seed, "booking", cpu),
                partial(stream, seed, "refill", cpu),
            )
            for cpu in range(hw.cpus)
        ]
        if policy.prealloc_at_boot and policy.n_per_cpu and kernel.batching:
            for cpu in range(hw.cpus):
                pages = self.pool.room(cpu)
                self.pool.fill(cpu, pages)
                self.stats.pages_allocated += pages
                self.alloc.block_pages += pages
        self.shrinker: Shrinker | None = None
        if kernel.shrinker and kernel.batching:
            self.shrinker = Shrinker(self._shrink_count, self._shrink_scan)
            self.alloc.shrinkers.append(self.shrinker)
        self._stranded_integral = 0.0
        self.trace = Trace() if trace else None
        self._trace_every = max(Kswapd.TICK, seconds / TRACE_POINTS)
        self._next_trace = 0.0
        self.kswapd = Kswapd(env, self.alloc, stream(seed, "memory", 1), self._chain_pages, self._after_kswapd)
        self.rcuscale = (
            RcuscaleTest(env, hw, workload, kernel, self.krcs, self.cpus, self.gp, self.alloc, self.slab_bytes, seed)
            if self.is_rcuscale
            else None
        )

    @property
    def cpu_last_call(self) -> np.ndarray:
        """Per CPU, the time of its latest booked call (-inf before the first)."""
        return np.array([krc.last_call for krc in self.krcs])

    # The "slab-kvfree-rcu" shrinker -----------------------------------------------------------

    def _shrink_count(self) -> int:
        """kfree_rcu_shrink_count(): the sum over CPUs (each CPU's part sets its backoff, 5.14+)."""
        return sum(krc.shrink_count() for krc in self.krcs)

    def _shrink_scan(self, nr_to_scan: int) -> int:
        """kfree_rcu_shrink_scan(): CPU after CPU from the first, until nr_to_scan is used up."""
        now = self.env.now
        freed = 0
        for krc in self.krcs:
            count = krc.shrink_scan(now)
            nr_to_scan -= count
            freed += count
            if nr_to_scan <= 0:
                break
        self.stats.shrinker_scans += 1
        if freed == 0 and self.kernel.shrinker_drains_cache:
            return -1  # SHRINK_STOP
        return freed

    # kswapd's tick: the rest of the system, accounting and sampling ---------------------------

    def _chain_pages(self) -> float:
        w = self.workload
        page = self.hw.page_size
        chain = w.chain_bytes_per_pending_byte * self.ledger.bytes_pending / page
        return chain + w.chain_mib_per_blocked_caller * self.ledger.blocked_callers * (1 << 20) / page

    def _after_kswapd(self, now: float, dt: float, reclaiming: bool) -> None:
        alloc = self.alloc
        krcs = self.krcs
        if self.pool.has_shared():  # the lock's contenders: CPUs that called in the last 10 ms
            self.pool.end_window(dt, sum(1 for krc in krcs if krc.last_call > now - 0.01))
        if self.pool.local_cap:
            idle_before = now - STRANDED_IDLE_S
            stranded = 0
            for pages, krc in zip(self.pool.local_list(), krcs):
                if krc.last_call < idle_before:
                    stranded += pages
            self._stranded_integral += float(stranded) * dt
        alloc.booking_interval = 0.02 if alloc.free < alloc.wmark_low else 0.1
        if self.rcuscale is not None and alloc.oom_events:
            self.rcuscale.oom()
        if self.trace is not None and self.rcuscale is None and now >= self._next_trace:
            self._sample(now)

    def _sample(self, now: float) -> None:
        tr = self.trace
        assert tr is not None
        tr.t.append(now)
        tr.bytes_pending.append(self.ledger.bytes_pending)
        tr.free_pages.append(self.alloc.free)
        tr.sync_fallbacks.append(self.stats.sync_fallbacks)
        tr.head_fallbacks.append(self.stats.head_fallbacks)
        tr.cached_pages.append(self.pool.held())
        self._next_trace = now + self._trace_every

    # Running ----------------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> Metrics:
        wall = time.perf_counter()
        env = self.env
        if self.rcuscale is not None and self.trace is not None:
            self._run_rcuscale_traced()
        elif self.rcuscale is not None:
            # Ends when the last kfree'er finishes (or at the time cap).
            env.run(until=env.any_of([self.rcuscale.all_done, env.timeout(self.end)]))
        else:
            steps = 50 if progress else 1
            for i in range(1, steps + 1):
                env.run(until=self.end * i / steps)
                if progress:
                    progress(i / steps)
        now = env.now
        for krc in self.krcs:
            krc.advance(now)
        self.ledger.integrate(now)
        return self._metrics(now, time.perf_counter() - wall)

    def _run_rcuscale_traced(self) -> None:
        """An rcuscale run lasts milliseconds to seconds, unknown beforehand: sample every
        RCUSCALE_TRACE_STEP_S, and when the trace grows past 2 x TRACE_POINTS keep every other
        point and double the step. Stepping adds timeouts only; the run's events are unchanged."""
        env, tr, rcuscale = self.env, self.trace, self.rcuscale
        assert tr is not None and rcuscale is not None
        step = RCUSCALE_TRACE_STEP_S
        self._sample(env.now)
        while not rcuscale.all_done.processed and env.now < self.end:
            env.run(until=env.any_of([rcuscale.all_done, env.timeout(min(step, self.end - env.now))]))
            self._sample(env.now)
            if len(tr.t) > 2 * TRACE_POINTS:
                for series in fields(tr):
                    del getattr(tr, series.name)[1::2]
                step *= 2

    def _metrics(self, now: float, wall: float) -> Metrics:
        st = self.stats
        hw = self.hw
        ledger = self.ledger
        pending_end = sum(krc.pending_objects() for krc in self.krcs) + ledger.blocked_callers
        held = sum(krc.held_pages() for krc in self.krcs) + self.pool.held()
        duration = max(now, 1e-12)
        reasons = self.policy.what_if_reasons(self.kernel)
        rcuscale = (self.rcuscale.result if self.rcuscale is not None else None) or {}
        return Metrics(
            calls=st.calls,
            calls_two_arg=st.calls_two_arg,
            calls_headless=st.calls_headless,
            objects_freed=ledger.objects_freed,
            objects_pending_end=pending_end,
            bytes_pending_mean=float(ledger.mean(duration)),
            bytes_pending_peak=ledger.bytes_peak,
            grace_periods=self.gp.completed,
            batches=st.batches,
            records_per_block_mean=st.records_detached / st.blocks_detached if st.blocks_detached else 0.0,
            blocks_from_cache=st.blocks_from_cache,
            page_alloc_attempts=st.page_alloc_attempts,
            page_alloc_failures=st.page_alloc_failures,
            head_fallbacks=st.head_fallbacks,
            sync_fallbacks=st.sync_fallbacks,
            sync_stall_seconds=st.sync_stall_seconds,
            call_latency_p50_us=self.latency.quantile_us(0.5),
            call_latency_p99_us=self.latency.quantile_us(0.99),
            call_latency_max_us=self.latency.max_ns / 1000.0,
            lock_wait_seconds=self.pool.lock_wait_seconds,
            cache_pages_reserved=self.pool.reserved_pages,
            cache_bytes_reserved=self.pool.reserved_pages * hw.page_size,
            cache_pages_stranded_mean=self._stranded_integral / duration,
            free_pages_min=int(self.alloc.free_min),
            oom_events=self.alloc.oom_events,
            shrinker_scans=st.shrinker_scans,
            sim_seconds=now,
            events=self.env.processed,
            wall_seconds=wall,
            records_per_block=self.records,
            mean_residency_seconds=float(ledger.residency_sum / ledger.objects_freed) if ledger.objects_freed else 0.0,
            cache_pages_peak_per_cpu=self.pool.peak_local,
            pages_allocated=st.pages_allocated,
            pages_freed=st.pages_freed,
            pages_held_end=held,
            batches_in_flight_peak=st.batches_in_flight_peak,
            monitor_timer_lengthened=st.monitor_timer_lengthened,
            safety_violations=ledger.safety_violations,
            refill_allocations=st.refill_allocations,
            drained_ready_blocks=st.drained_ready_blocks,
            what_if=bool(reasons),
            what_if_reasons=reasons,
            rcuscale_total_time_ns=rcuscale.get("rcuscale_total_time_ns"),  # type: ignore[arg-type]
            rcuscale_batches=rcuscale.get("rcuscale_batches"),  # type: ignore[arg-type]
            rcuscale_footprint_mb=rcuscale.get("rcuscale_footprint_mb"),  # type: ignore[arg-type]
            rcuscale_enomem=rcuscale.get("rcuscale_enomem"),  # type: ignore[arg-type]
            head_extra_cpu_seconds=st.head_extra_cpu_seconds,
            kernel_work_cpu_seconds=sum(rq.work_seconds for rq in self.cpus.queues),
        )


def _check(
    hw: HardwareProfile, workload: WorkloadProfile, policy: Policy, seconds: float | None, seed: int, kernel: str
) -> tuple[KernelBehaviour, float]:
    behaviour = kernel_behaviour(kernel)
    run_for = workload.duration_s if seconds is None else seconds
    if not (isinstance(run_for, (int, float)) and math.isfinite(run_for) and run_for > 0):
        raise ValueError(f"seconds={seconds!r}: must be a positive finite number")
    if seed < 0:
        raise ValueError(f"seed={seed}: must be >= 0")
    return behaviour, float(run_for)


def simulate(
    hardware: HardwareProfile,
    workload: WorkloadProfile,
    policy: Policy,
    *,
    seconds: float | None = None,
    seed: int = 0,
    kernel: str = DEFAULT_KERNEL,
    progress: Callable[[float], None] | None = None,
) -> Metrics:
    """Run the model once.

    Args:
        hardware: the machine.
        workload: who calls kvfree_rcu() and what else presses on memory.
        policy: N, layout and thresholds.
        seconds: simulated time (default: the workload's `duration_s`; for rcuscale, a cap).
        seed: selects every random stream; the same inputs give the same metrics bit for bit
            (all but `wall_seconds`).
        kernel: the release whose behaviour to model (see `KERNELS`).
        progress: called with the fraction of simulated time done, about 50 times (for progress bars).

    Returns:
        The run's `Metrics`.
    """
    behaviour, run_for = _check(hardware, workload, policy, seconds, seed, kernel)
    return Model(hardware, workload, policy, behaviour, run_for, seed).run(progress)


def simulate_with_trace(
    hardware: HardwareProfile,
    workload: WorkloadProfile,
    policy: Policy,
    *,
    seconds: float | None = None,
    seed: int = 0,
    kernel: str = DEFAULT_KERNEL,
) -> tuple[Metrics, Trace]:
    """`simulate()` plus the run's time series (about 400 points), for plots."""
    behaviour, run_for = _check(hardware, workload, policy, seconds, seed, kernel)
    model = Model(hardware, workload, policy, behaviour, run_for, seed, trace=True)
    metrics = model.run()
    assert model.trace is not None
    return metrics, model.trace
