"""`simulate()`: one run of the model, a pure function of (hardware, workload, policy, kernel, seconds, seed)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import simpy

from ._arrivals import ArrivalStream, RateSchedule
from ._gp import GraceEngine
from ._kernels import DEFAULT_KERNEL, KernelBehaviour, kernel_behaviour
from ._krc import KfreeRcuCpu, Objs
from ._memory import PageAllocator
from ._metrics import LatencyHistogram, Metrics
from ._policy import Policy
from ._pool import PageCache
from ._profiles import HardwareProfile, WorkloadProfile
from ._streams import stream

KSWAPD_TICK = 0.01  # seconds between reclaim/accounting rounds (jittered)
STRANDED_IDLE_S = 1.0  # a CPU with no call for this long holds its cached pages unused
TRACE_POINTS = 400


class _CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes (the `events` metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.processed = 0

    def step(self) -> None:
        self.processed += 1
        super().step()


class Stats:
    """Counters the mechanisms bump; turned into `Metrics` at the end."""

    def __init__(self) -> None:
        self.calls = self.calls_two_arg = self.calls_headless = 0
        self.objects_freed = 0
        self.batches = self.blocks_detached = self.records_detached = 0
        self.blocks_from_cache = self.page_alloc_attempts = self.page_alloc_failures = 0
        self.head_fallbacks = self.sync_fallbacks = 0
        self.sync_stall_seconds = 0.0
        self.pages_allocated = self.pages_freed = self.refill_allocations = 0
        self.drained_ready_blocks = 0
        self.safety_violations = 0
        self.batches_in_flight_peak = 0
        self.monitor_timer_lengthened = 0
        self.shrinker_scans = 0
        self.residency_sum = 0.0


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
    """Everything one run holds: the environment, the kernel mechanisms and the counters."""

    def __init__(self, hw: HardwareProfile, workload: WorkloadProfile, policy: Policy, kernel: KernelBehaviour,
                 seconds: float, seed: int, trace: bool = False) -> None:
        self.hw, self.workload, self.policy, self.kernel = hw, workload, policy, kernel
        self.env = _CountingEnvironment()
        self.end = seconds
        self.seed = seed
        self.records = kernel.records_per_block(hw.page_size)
        self.rcuscale = workload.shape == "rcuscale"
        self.slab_bytes = float(workload.rcuscale_slab_bytes if self.rcuscale else workload.object_bytes)
        self.stats = Stats()
        self.latency = LatencyHistogram()
        self.gp = GraceEngine(self.env, hw, stream(seed, "grace_periods"), stream(seed, "expedited"))
        self.alloc = PageAllocator(hw, workload, policy.emergency_reserve_fraction, seconds, stream(seed, "memory"))
        self.pool = PageCache(policy, hw.cpus, hw.global_lock_hold_ns * 1e-9)
        self.last_call_at = [-math.inf] * hw.cpus  # per CPU: its latest booked call
        # Kernel work (reclaim, refill, inline allocation) done on each CPU that a busy rcuscale
        # thread pinned there loses from its own time; open-loop callers are not slowed by it.
        self.cpu_busy = [0.0] * hw.cpus
        # PREEMPT_NONE: rcuscale threads inside their loop on each CPU, whether that CPU is in
        # cond_resched() now, and the event its next cond_resched() triggers.
        self.cpu_held = [0] * hw.cpus
        self.cpu_yielding = [False] * hw.cpus
        self._resched = [self.env.event() for _ in range(hw.cpus)]
        self._due: dict[float, list[Callable[[], None]]] = {}  # run_after(): callbacks by instant
        self.blocked_callers = 0
        self.overloaded_cpus = 0
        self.max_booking_interval = 0.1
        self.bytes_pending = 0.0
        self.bytes_peak = 0.0
        self._integral = 0.0
        self._last_change = 0.0
        self._stranded_integral = 0.0
        self.trace = Trace() if trace else None
        self._trace_every = max(KSWAPD_TICK, seconds / TRACE_POINTS)
        self._next_trace = 0.0
        schedule = None
        if not self.rcuscale and workload.calls_per_s_per_cpu > 0:
            schedule = RateSchedule(workload, hw.cpus, seconds, seed)
        self.krcs = [
            KfreeRcuCpu(self, cpu, ArrivalStream(schedule, cpu, seed) if schedule else None,
                        partial(stream, seed, "booking", cpu), partial(stream, seed, "refill", cpu))
            for cpu in range(hw.cpus)
        ]
        if policy.prealloc_at_boot and policy.n_per_cpu and kernel.batching:
            for cpu in range(hw.cpus):
                pages = self.pool.room(cpu)
                self.pool.fill(cpu, pages)
                self.stats.pages_allocated += pages
                self.alloc.block_pages += pages
        self._kswapd_rng = stream(seed, "memory", 1)
        self.env.process(self.kswapd())
        self.threads_left = 0
        self.rcuscale_result: dict[str, int | bool] | None = None
        self.all_done: simpy.Event = self.env.event()
        if self.rcuscale:
            self._start_rcuscale()

    @property
    def cpu_last_call(self) -> np.ndarray:
        """Per CPU, the time of its latest booked call (-inf before the first); a copy."""
        return np.array(self.last_call_at)

    # Accounting used by the mechanisms --------------------------------------------------------

    def run_after(self, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` after `delay`. Callbacks due at the same instant share one event and run in
        the order they were queued (the batches one grace period ends all queue their work at once)."""
        when = self.env.now + delay
        due = self._due.get(when)
        if due is None:
            due = self._due[when] = []
            self.env.timeout(delay).callbacks.append(lambda _e: self._run_due(when))
        due.append(callback)

    def _run_due(self, when: float) -> None:
        for callback in self._due.pop(when):
            callback()

    def _integrate(self, now: float) -> None:
        if now > self._last_change:
            self._integral += self.bytes_pending * (now - self._last_change)
            self._last_change = now

    def add_pending(self, nbytes: float, now: float, arrival_mid: float) -> None:
        """Objects entered the path; they have been waiting since about `arrival_mid`."""
        if nbytes <= 0:
            return
        self._integrate(now)
        self.bytes_pending += nbytes
        self._integral += nbytes * max(0.0, now - arrival_mid)
        self.alloc.object_bytes = self.bytes_pending
        if self.bytes_pending > self.bytes_peak:
            self.bytes_peak = self.bytes_pending

    def free_objects(self, objs: Objs, now: float) -> None:
        """Objects reached kfree()/kvfree(): memory comes back, residency is recorded."""
        if not objs.count:
            return
        self._integrate(now)
        self.bytes_pending = max(0.0, self.bytes_pending - objs.bytes)
        self.alloc.object_bytes = self.bytes_pending
        st = self.stats
        st.objects_freed += objs.count
        st.residency_sum += objs.count * now - objs.arrival_sum

    def cpu_turn(self, cpu: int) -> simpy.Event | None:
        """When work queued to `cpu` can run: None for now, else the event of the CPU's next cond_resched().

        With PREEMPT_NONE a kworker (or any task) woken on a CPU whose rcuscale thread is inside
        its loop waits until that thread calls cond_resched() between loops.
        """
        if self.cpu_held[cpu] and not self.cpu_yielding[cpu]:
            return self._resched[cpu]
        return None

    def cond_resched(self, cpu: int):
        """cond_resched() in a PREEMPT_NONE rcuscale loop: a quiescent state, then the work queued here runs
        (the nice-19 thread waits for it)."""
        self.gp.quiescent(cpu)
        event, self._resched[cpu] = self._resched[cpu], self.env.event()
        self.cpu_yielding[cpu] = True
        event.succeed()
        yield self.env.timeout(0)  # the waiting work items start and charge their CPU time
        busy, self.cpu_busy[cpu] = self.cpu_busy[cpu], 0.0
        if busy:
            yield self.env.timeout(busy)
        self.cpu_yielding[cpu] = False

    def _hold_cpu(self, cpu: int, held: bool) -> None:
        """A PREEMPT_NONE rcuscale loop starts (held) or stops (sleeps, ends) occupying `cpu`."""
        if held:
            self.cpu_held[cpu] += 1
            self.gp.hold(cpu)
            return
        self.cpu_held[cpu] -= 1
        self.gp.release(cpu)
        if not self.cpu_held[cpu]:
            event, self._resched[cpu] = self._resched[cpu], self.env.event()
            event.succeed()  # the CPU is free: what waited for it runs

    def check_safe(self, newest_call: float, gp_number: int) -> None:
        """The safety invariant: the GP that frees an object began after the object's call."""
        if self.gp.start_of[gp_number] < newest_call - 1e-12:
            self.stats.safety_violations += 1

    # kswapd, the shrinker and sampling --------------------------------------------------------

    def kswapd(self):
        """Every ~10 ms: follow background demand and the chain reaction, reclaim, shrink, sample."""
        env = self.env
        alloc = self.alloc
        w = self.workload
        page = self.hw.page_size
        last = 0.0
        while True:
            yield env.timeout(KSWAPD_TICK * self._kswapd_rng.uniform(0.5, 1.5))
            now = env.now
            dt = now - last
            last = now
            chain = w.chain_bytes_per_pending_byte * self.bytes_pending / page
            chain += w.chain_mib_per_blocked_caller * self.blocked_callers * (1 << 20) / page
            reclaiming = alloc.kswapd(now, dt, chain)
            if self.pool.has_shared():  # the lock's contenders: CPUs that called in the last 10 ms
                self.pool.end_window(dt, sum(1 for t in self.last_call_at if t > now - 0.01))
            if self.pool.local_cap:
                idle_before = now - STRANDED_IDLE_S
                if min(self.last_call_at) < idle_before:
                    stranded = 0
                    for pages, t in zip(self.pool.local_list(), self.last_call_at):
                        if t < idle_before:
                            stranded += pages
                    self._stranded_integral += float(stranded) * dt
            self.max_booking_interval = 0.02 if alloc.free < alloc.wmark_low else 0.1
            if reclaiming and self.kernel.shrinker and self.kernel.batching:
                self.shrink(now)  # shrink_node() calls shrink_slab() on every reclaim pass
            if self.rcuscale and alloc.oom_events and not self.all_done.triggered:
                self._rcuscale_oom()
            if self.trace is not None and now >= self._next_trace:
                self._sample(now)

    def shrink(self, now: float) -> None:
        """shrink_slab() on the "slab-kvfree-rcu" shrinker: count (sets backoff), then scan."""
        count = sum(krc.shrink_count() for krc in self.krcs)
        if count == 0:
            return
        alloc = self.alloc
        priority = 12 if alloc.free > alloc.wmark_min else (6 if alloc.free > 0 else 2)
        nr_to_scan = max(128, (count >> priority) * 2)  # do_shrink_slab(): freeable >> priority, x 4 / seeks
        self.stats.shrinker_scans += 1
        for krc in self.krcs:
            nr_to_scan -= krc.shrink_scan(now)
            if nr_to_scan <= 0:
                break

    def _sample(self, now: float) -> None:
        tr = self.trace
        assert tr is not None
        tr.t.append(now)
        tr.bytes_pending.append(self.bytes_pending)
        tr.free_pages.append(self.alloc.free)
        tr.sync_fallbacks.append(self.stats.sync_fallbacks)
        tr.head_fallbacks.append(self.stats.head_fallbacks)
        tr.cached_pages.append(self.pool.held())
        self._next_trace = now + self._trace_every

    # rcuscale ---------------------------------------------------------------------------------

    def _start_rcuscale(self) -> None:
        w = self.workload
        n = w.rcuscale_threads(self.hw.cpus)
        self.threads_left = n
        self._threads_started = 0
        self._gp_at_start = 0
        self._last_start = 0.0
        for i in range(n):
            self.env.process(self.kfree_scale_thread(i))

    def kfree_scale_thread(self, index: int):
        """rcuscale's kfree_scale_thread(): loops x alloc_num kmalloc + kfree_rcu, pinned to CPU index % nr_cpus.

        Follows kernel/rcu/rcuscale.c: single, double or (both equal) a random choice per call; the
        memory footprint is si_mem_available() at start minus a running average sampled every
        kfree_loops/4 loops. Calls are issued in chunks of at most a jiffy's worth. With PREEMPT_NONE
        the thread holds its CPU for a whole loop: it reports a quiescent state and lets the work
        queued on its CPU run only at the cond_resched() between loops (chunks of 10 ms then, since
        nothing on this CPU can change inside a loop).
        """
        env = self.env
        w = self.workload
        hw = self.hw
        krc = self.krcs[index % hw.cpus]
        rng = stream(self.seed, "rcuscale", index)
        # Larger size classes cost more per call: slab pages turn over faster and more memory is touched.
        per_call = (hw.kfree_call_ns + hw.kmalloc_ns_per_kib * self.slab_bytes / 1024) * 1e-9
        total = w.kfree_loops * w.kfree_alloc_num
        jiffy_calls = max(1, int(1e-3 / per_call))
        preempt_none = hw.preempt_none
        if preempt_none:
            jiffy_calls = max(1, int(KSWAPD_TICK / per_call))
            self._hold_cpu(krc.cpu, True)
        # kfree_rcu_test_single/_double exist from 5.13 (686fe1bf6bcc): before, the test is double-argument only.
        modes = self.kernel.rcuscale_modes
        single_only = w.kfree_rcu_test_single and not w.kfree_rcu_test_double and modes
        both = w.kfree_rcu_test_single == w.kfree_rcu_test_double and modes
        start = env.now
        self._threads_started += 1
        if self._threads_started == self.threads_left:
            self._gp_at_start = self.gp.completed  # b_rcu_gp_test_started, set by the last thread to start
        mem_begin = mem_during = None
        quarter = w.kfree_loops // 4
        done = 0
        while done < total and not self.all_done.triggered:
            loop, offset = divmod(done, w.kfree_alloc_num)
            if offset == 0:
                if preempt_none and done:
                    yield from self.cond_resched(krc.cpu)
                if mem_during is None:
                    mem_begin = mem_during = self.alloc.available()
                elif quarter and loop % quarter == 0:
                    mem_during = (mem_during + self.alloc.available()) / 2
            k = min(total - done, w.kfree_alloc_num - offset, jiffy_calls)
            risk = self._sync_risk(krc, both, single_only)
            if risk > 0:
                k = max(1, min(k, int(1.0 / risk)))
            busy = self.cpu_busy[krc.cpu]
            self.cpu_busy[krc.cpu] = 0.0
            if not preempt_none:
                yield env.timeout(k * per_call + busy)
                if self.all_done.triggered:
                    break
            if w.kfree_by_call_rcu:
                single = 0  # call_rcu() with kfree in the callback, no single/double choice
            elif both:
                single = int(rng.binomial(k, 0.5))
            else:
                single = k if single_only else 0
            counts = (k - single, 0, single, 0)
            now = env.now
            # PREEMPT_NONE: a chunk is booked at its start, so that the monitor's timer fires inside
            # the loop, as it does in the kernel (its work then waits for the loop's end).
            mid = now if preempt_none else now - 0.5 * k * per_call
            ev = krc.book(now, counts, mid, by_call_rcu=w.kfree_by_call_rcu)
            done += k
            if preempt_none:
                yield env.timeout(k * per_call + busy)
            if ev is not None:
                if preempt_none:
                    self._hold_cpu(krc.cpu, False)  # synchronize_rcu() sleeps
                yield ev
                if preempt_none:
                    self._hold_cpu(krc.cpu, True)
        if preempt_none:
            if not self.all_done.triggered:
                yield from self.cond_resched(krc.cpu)  # the last loop ends in cond_resched() too
            self._hold_cpu(krc.cpu, False)
        self._thread_end(start, mem_begin, mem_during, done < total)

    def _sync_risk(self, krc: KfreeRcuCpu, both: bool, single: bool) -> float:
        """Chance that a call now falls back to synchronize_rcu(); keeps chunks short when it is real."""
        if both or single:
            h = 0.5 if both else 1.0
            gfp = self.kernel.headless_inline_gfp
            if not self.kernel.headless_api:
                return h
            if self.pool.available(krc.cpu) > 0:
                return 0.0
            p_fail = 1.0 - self.alloc.success_probability(gfp)
            return h * p_fail if p_fail > 1e-4 else 0.0
        return 0.0

    def _thread_end(self, start: float, mem_begin: float | None, mem_during: float | None, enomem: bool) -> None:
        self.threads_left -= 1
        if self.threads_left or self.all_done.triggered:
            return
        now = self.env.now
        page = self.hw.page_size
        footprint = 0
        if mem_begin is not None and mem_during is not None:
            footprint = int(math.floor((mem_begin - mem_during) * page / (1 << 20)))
        self.rcuscale_result = {
            "rcuscale_total_time_ns": int(round((now - start) * 1e9)),
            "rcuscale_batches": self.gp.completed - self._gp_at_start,
            "rcuscale_footprint_mb": footprint,
            "rcuscale_enomem": enomem or self.alloc.oom_events > 0,
        }
        self.all_done.succeed()

    def _rcuscale_oom(self) -> None:
        """A guest running only rcuscale has nothing to kill: the OOM ends the run."""
        self.rcuscale_result = {
            "rcuscale_total_time_ns": 0,
            "rcuscale_batches": 0,
            "rcuscale_footprint_mb": 0,
            "rcuscale_enomem": True,
        }
        self.all_done.succeed()

    # Running ----------------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> Metrics:
        wall = time.perf_counter()
        env = self.env
        if self.rcuscale:
            # Ends when the last kfree'er finishes (or at the time cap): one run, stepped or not.
            env.run(until=env.any_of([self.all_done, env.timeout(self.end)]))
        else:
            steps = 50 if progress else 1
            for i in range(1, steps + 1):
                env.run(until=self.end * i / steps)
                if progress:
                    progress(i / steps)
        now = env.now
        for krc in self.krcs:
            krc.advance(now)
        self._integrate(now)
        return self._metrics(now, time.perf_counter() - wall)

    def _metrics(self, now: float, wall: float) -> Metrics:
        st = self.stats
        hw = self.hw
        pending_end = sum(krc.pending_objects() for krc in self.krcs) + self.blocked_callers
        held = sum(krc.held_pages() for krc in self.krcs) + self.pool.held()
        duration = max(now, 1e-12)
        reasons = self.policy.what_if_reasons(self.kernel)
        rcuscale = self.rcuscale_result or {}
        return Metrics(
            calls=st.calls,
            calls_two_arg=st.calls_two_arg,
            calls_headless=st.calls_headless,
            objects_freed=st.objects_freed,
            objects_pending_end=pending_end,
            bytes_pending_mean=float(self._integral / duration),
            bytes_pending_peak=self.bytes_peak,
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
            mean_residency_seconds=float(st.residency_sum / st.objects_freed) if st.objects_freed else 0.0,
            cache_pages_peak_per_cpu=self.pool.peak_local,
            pages_allocated=st.pages_allocated,
            pages_freed=st.pages_freed,
            pages_held_end=held,
            batches_in_flight_peak=st.batches_in_flight_peak,
            monitor_timer_lengthened=st.monitor_timer_lengthened,
            safety_violations=st.safety_violations,
            refill_allocations=st.refill_allocations,
            drained_ready_blocks=st.drained_ready_blocks,
            what_if=bool(reasons),
            what_if_reasons=reasons,
            rcuscale_total_time_ns=rcuscale.get("rcuscale_total_time_ns"),  # type: ignore[arg-type]
            rcuscale_batches=rcuscale.get("rcuscale_batches"),  # type: ignore[arg-type]
            rcuscale_footprint_mb=rcuscale.get("rcuscale_footprint_mb"),  # type: ignore[arg-type]
            rcuscale_enomem=rcuscale.get("rcuscale_enomem"),  # type: ignore[arg-type]
        )


def _check(hw: HardwareProfile, workload: WorkloadProfile, policy: Policy, seconds: float | None,
           seed: int, kernel: str) -> tuple[KernelBehaviour, float]:
    behaviour = kernel_behaviour(kernel)
    run_for = workload.duration_s if seconds is None else seconds
    if not (isinstance(run_for, (int, float)) and math.isfinite(run_for) and run_for > 0):
        raise ValueError(f"seconds={seconds!r}: must be a positive finite number")
    if seed < 0:
        raise ValueError(f"seed={seed}: must be >= 0")
    return behaviour, float(run_for)


def simulate(hardware: HardwareProfile, workload: WorkloadProfile, policy: Policy, *,
             seconds: float | None = None, seed: int = 0, kernel: str = DEFAULT_KERNEL,
             progress: Callable[[float], None] | None = None) -> Metrics:
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


def simulate_with_trace(hardware: HardwareProfile, workload: WorkloadProfile, policy: Policy, *,
                        seconds: float | None = None, seed: int = 0,
                        kernel: str = DEFAULT_KERNEL) -> tuple[Metrics, Trace]:
    """`simulate()` plus the run's time series (about 400 points), for plots."""
    behaviour, run_for = _check(hardware, workload, policy, seconds, seed, kernel)
    model = Model(hardware, workload, policy, behaviour, run_for, seed, trace=True)
    metrics = model.run()
    assert model.trace is not None
    return metrics, model.trace
