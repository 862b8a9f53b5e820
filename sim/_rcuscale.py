"""rcuscale's kfree test (kernel/rcu/rcuscale.c, kfree_rcu_test=1): its threads and the figures it prints.

Each kfree_scale_thread() is pinned to CPU index % nr_cpu_ids at nice 19 and runs kfree_loops loops
of kfree_alloc_num kmalloc(GFP_KERNEL) + kfree_rcu(), with cond_resched() between loops. It holds
its CPU as a busy kernel loop (`_cpu.RunQueue.hold()`): what else needs that CPU waits for the
preemption model's next chance, and the loop loses the CPU time that work takes. The test mode per
release: kfree_rcu_test_single/_double exist from 5.13 (686fe1bf6bcc), before that the test frees
with the two-argument kfree_rcu() only; kfree_by_call_rcu (6.2) frees through call_rcu().

Figures, as the kernel prints them: total time from the first thread's start to the last thread's
end of its loops, GPs completed in that window ("batches"), and the memory footprint,
si_mem_available() at start minus a running average sampled every kfree_loops/4 loops.
"""

from __future__ import annotations

import math

import simpy

from ._cpu import CpuSet
from ._gp import GraceEngine
from ._kernels import KernelBehaviour
from ._krc import KfreeRcuCpu
from ._memory import PageAllocator
from ._profiles import HardwareProfile, WorkloadProfile
from ._streams import stream

CHUNK_NONE_S = 0.01  # PREEMPT_NONE: nothing on the CPU changes inside a loop; book in 10 ms chunks


class RcuscaleTest:
    """The kfree test's threads; `result` holds the printed figures once the last thread ends."""

    def __init__(
        self,
        env: simpy.Environment,
        hw: HardwareProfile,
        workload: WorkloadProfile,
        kernel: KernelBehaviour,
        krcs: list[KfreeRcuCpu],
        cpus: CpuSet,
        gp: GraceEngine,
        alloc: PageAllocator,
        slab_bytes: float,
        seed: int,
    ) -> None:
        self.env = env
        self.hw = hw
        self.workload = workload
        self.kernel = kernel
        self.krcs = krcs
        self.cpus = cpus
        self.gp = gp
        self.alloc = alloc
        self.slab_bytes = slab_bytes
        self.seed = seed
        self.result: dict[str, int | bool] | None = None
        self.all_done: simpy.Event = env.event()
        n = workload.rcuscale_threads(hw.cpus)
        self.threads_left = n
        self._threads_started = 0
        self._gp_at_start = 0
        cpus.any_held = True
        alloc.pending.track_spans = True  # chunks are booked spread over their span (Ledger.add_pending)
        for i in range(n):
            env.process(self.kfree_scale_thread(i))

    def kfree_scale_thread(self, index: int):
        """rcuscale's kfree_scale_thread(): loops x alloc_num kmalloc + kfree_rcu, pinned to CPU index % nr_cpus.

        Calls are issued in chunks of at most a jiffy's worth (10 ms with PREEMPT_NONE, where the loop
        lets nothing run before its end). A headless call that falls back to synchronize_rcu() puts
        the thread to sleep until that grace period ends.
        """
        env = self.env
        w = self.workload
        hw = self.hw
        krc = self.krcs[index % hw.cpus]
        rq = self.cpus[krc.cpu]
        alloc = self.alloc
        rng = stream(self.seed, "rcuscale", index)
        # Larger size classes cost more per call: slab pages turn over faster and more memory is touched.
        per_call = (hw.kfree_call_ns + hw.kmalloc_ns_per_kib * self.slab_bytes / 1024) * 1e-9
        total = w.kfree_loops * w.kfree_alloc_num
        preempt_none = hw.preempt == "none"
        chunk_calls = max(1, int((CHUNK_NONE_S if preempt_none else 1.0 / hw.hz) / per_call))
        modes = self.kernel.rcuscale_modes
        single_only = w.kfree_rcu_test_single and not w.kfree_rcu_test_double and modes
        both = w.kfree_rcu_test_single == w.kfree_rcu_test_double and modes
        page = hw.page_size
        jitter = math.sqrt(math.log1p(hw.loop_jitter**2))  # log-normal sigma of a chunk's time factor
        rq.hold()
        start = env.now
        self._threads_started += 1
        if self._threads_started == self.threads_left:
            self._gp_at_start = self.gp.completed  # b_rcu_gp_test_started, set by the last thread to start
        mem_begin = mem_during = None
        quarter = w.kfree_loops // 4
        done = 0
        stalled = [0.0]
        freed_seen = krc.freed_bytes

        def stall(seconds: float) -> None:
            stalled[0] += seconds

        while done < total and not self.all_done.triggered:
            loop, offset = divmod(done, w.kfree_alloc_num)
            if offset == 0:
                if done:
                    yield from self._cond_resched(rq)
                if mem_during is None:
                    mem_begin = mem_during = alloc.available()
                elif quarter and loop % quarter == 0:
                    mem_during = (mem_during + alloc.available()) / 2
            k = min(total - done, w.kfree_alloc_num - offset, chunk_calls)
            risk = self._sync_risk(krc, both, single_only)
            if risk > 0:
                k = max(1, min(k, int(1.0 / risk)))
            # kmalloc(GFP_KERNEL) of these objects: new slab pages only for objects beyond those freed
            # since (their slots are reused); below the min watermark the thread reclaims directly.
            grown = k * self.slab_bytes - (krc.freed_bytes - freed_seen)
            freed_seen = krc.freed_bytes
            if grown > 0 and alloc.free - grown / page < alloc.wmark_min:
                stalled[0] = 0.0
                if not alloc.allocate(grown / page, stall):
                    alloc.oom_kill()
                    self.oom()
                    break
                if stalled[0] > 0:
                    if preempt_none:
                        yield from self._cond_resched(rq)  # reclaim passes cond_resched()
                    yield env.timeout(stalled[0])
            if w.kfree_by_call_rcu:
                single = 0  # call_rcu() with kfree in the callback, no single/double choice
            elif both:
                single = int(rng.binomial(k, 0.5))
            else:
                single = k if single_only else 0
            counts = (k - single, 0, single, 0)
            busy = rq.take_charge()
            calls_s = k * per_call
            if jitter:
                calls_s *= math.exp(jitter * rng.standard_normal() - 0.5 * jitter * jitter)
            if preempt_none:
                # The chunk is booked at its start, so that the monitor's timer fires inside the loop,
                # as it does in the kernel (its work then waits for the loop's end).
                event = krc.book(env.now, counts, env.now, by_call_rcu=w.kfree_by_call_rcu)
                done += k
                yield env.timeout(calls_s + busy)
            else:
                yield env.timeout(calls_s + busy)
                if self.all_done.triggered:
                    break
                now = env.now
                event = krc.book(now, counts, now - 0.5 * calls_s, by_call_rcu=w.kfree_by_call_rcu, chunk=True)
                done += k
            alloc.note_free()
            if event is not None:
                rq.release()  # synchronize_rcu() sleeps
                yield event
                rq.hold()
        if not self.all_done.triggered:
            yield from self._cond_resched(rq)  # the last loop ends in cond_resched() too
        rq.release()
        self._thread_end(start, mem_begin, mem_during, done < total)

    def _cond_resched(self, rq):
        """cond_resched() between loops: rcu_all_qs(), and with PREEMPT_NONE the queued work runs."""
        self.gp.rcu_all_qs(rq.cpu, self.env.now)
        if rq.preempt == "none":
            yield from rq.cond_resched()

    def _sync_risk(self, krc: KfreeRcuCpu, both: bool, single: bool) -> float:
        """Chance that a call now falls back to synchronize_rcu(); keeps chunks short when it is real."""
        if both or single:
            share = 0.5 if both else 1.0
            if not self.kernel.headless_api:
                return share
            if krc.c.pool.available(krc.cpu) > 0:
                return 0.0
            p_fail = 1.0 - self.alloc.success_probability(self.kernel.headless_inline_gfp)
            return share * p_fail if p_fail > 1e-4 else 0.0
        return 0.0

    def _thread_end(self, start: float, mem_begin: float | None, mem_during: float | None, enomem: bool) -> None:
        self.threads_left -= 1
        if self.threads_left or self.all_done.triggered:
            return
        now = self.env.now
        footprint = 0
        if mem_begin is not None and mem_during is not None:
            footprint = int(math.floor((mem_begin - mem_during) * self.hw.page_size / (1 << 20)))
        self.result = {
            "rcuscale_total_time_ns": int(round((now - start) * 1e9)),
            "rcuscale_batches": self.gp.completed - self._gp_at_start,
            "rcuscale_footprint_mb": footprint,
            "rcuscale_enomem": enomem or self.alloc.oom_events > 0,
        }
        self.all_done.succeed()

    def oom(self) -> None:
        """A guest running only rcuscale has nothing to kill: the OOM panics it and ends the run."""
        if self.all_done.triggered:
            return
        self.result = {
            "rcuscale_total_time_ns": 0,
            "rcuscale_batches": 0,
            "rcuscale_footprint_mb": 0,
            "rcuscale_enomem": True,
        }
        self.all_done.succeed()
