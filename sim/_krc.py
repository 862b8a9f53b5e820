"""Per-CPU kvfree_rcu() state and the kernel functions that act on it (struct kfree_rcu_cpu).

Mirrors kernel/rcu/tree.c (up to 6.13) and mm/slab_common.c (6.14+): kvfree_call_rcu() and
add_ptr_to_bulk_krc_lock(), kfree_rcu_monitor() with kvfree_rcu_drain_ready() and the krw batches,
kfree_rcu_work(), run_page_cache_worker()/fill_page_cache_func(), and the shrinker's per-CPU
part. What differs between releases is read from `KernelBehaviour`; there is one copy of each
mechanism. Where the work runs and when (workqueues, callback invocation) is the reclaim pipeline's
business (`_reclaim.py`); whose CPU it takes is the run queues' (`_cpu.py`).

Calls are booked in bulk: `book()` takes counts of calls of each kind that arrived since the last
booking and resolves them the way the kernel would one by one. Calls fill the current block; then
block pages come from the cache; once it is empty each call that needs a block either allocates
inline (if its kind and the release allow, succeeding with the allocator's probability), or falls
back: two-argument calls to the rcu_head list, headless calls to synchronize_rcu(). The number of
inline-allocated blocks and of fallbacks is drawn from the renewal process this defines, so a whole
jiffy of a flood costs a handful of random draws, not one per call.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from ._arrivals import ArrivalStream
from ._cpu import EVENTS_HIGHPRI, SHORT_WORK_S, CpuSet
from ._gp import GraceEngine
from ._kernels import KernelBehaviour
from ._memory import PageAllocator
from ._metrics import LatencyHistogram
from ._policy import Policy
from ._pool import PageCache
from ._profiles import HardwareProfile
from ._reclaim import ReclaimPipeline
from ._slab import FreeCosts
from ._stats import Ledger, Objs, Stats

KFREE_N_BATCHES = 2


class BlockGroup(Objs):
    """Full blocks filled in one booking (one gp_snap), or the current partly filled block."""

    __slots__ = ("blocks", "snap")

    def __init__(self, snap: int = 0) -> None:
        self.count = 0  # Objs.__init__, inlined: one of these is made on every booking
        self.bytes = 0.0
        self.newest = -math.inf
        self.arrival_sum = 0.0
        self.blocks = 0
        self.snap = snap


class Batch:
    """struct kfree_rcu_cpu_work: what one detach moved out, waiting for its grace period."""

    __slots__ = ("slot", "blocks", "records", "objs", "head", "target")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.blocks = 0
        self.records = 0
        self.objs = Objs()  # all objects of the batch, blocks and rcu_head list
        self.head = 0  # objects on the rcu_head list
        self.target = 0


@dataclass(frozen=True)
class Collaborators:
    """What one CPU's krc works with: the shared mechanisms of the run, named."""

    env: simpy.Environment
    kernel: KernelBehaviour
    hw: HardwareProfile
    policy: Policy
    gp: GraceEngine
    alloc: PageAllocator
    pool: PageCache
    cpus: CpuSet
    pipeline: ReclaimPipeline
    costs: FreeCosts
    stats: Stats
    ledger: Ledger
    latency: LatencyHistogram
    records: int  # KVFREE_BULK_MAX_ENTR for the page size
    slab_bytes: float  # the kmalloc size class two-argument and headless slab objects occupy
    vmalloc_bytes: float
    end: float  # the run's end
    sheaf_share: float = 0.0  # slab objects whose cache has per-CPU sheaves (6.18's kfree_rcu_sheaf())
    sheaf_capacity: int = 32


class Placement:
    """One channel's booking, step by step: where the calls' records went."""

    __slots__ = ("filled", "left", "new_records", "new_blocks", "fast_calls", "lock_calls", "lock_wait")

    def __init__(self, filled: BlockGroup, calls: int) -> None:
        self.filled = filled  # full blocks closed in this booking
        self.left = calls  # calls still without a record
        self.new_records = 0  # records placed in blocks taken in this booking
        self.new_blocks = 0
        self.fast_calls = calls  # calls that took only the fast path (adjusted as calls take others)
        self.lock_calls = 0  # calls that took a shared pool's lock (what-if layouts)
        self.lock_wait = 0.0


class KfreeRcuCpu:
    """One CPU's `krc`: current blocks, pending blocks, the rcu_head list, two batch slots, the monitor."""

    def __init__(
        self,
        c: Collaborators,
        cpu: int,
        stream: ArrivalStream | None,
        rng: Callable[[], np.random.Generator],
        refill_rng: Callable[[], np.random.Generator],
    ) -> None:
        """`rng` and `refill_rng` make this CPU's booking and refill streams, on first use."""
        self.c = c
        self.env: simpy.Environment = c.env
        self.cpu = cpu
        self.rq = c.cpus[cpu]
        self.stream = stream
        self._make_rng = rng
        self._make_refill_rng = refill_rng
        self._rng: np.random.Generator | None = None
        self._refill_rng: np.random.Generator | None = None
        channels = max(1, c.kernel.block_channels)
        self.cur: list[BlockGroup | None] = [None] * channels
        self.pending: list[deque[BlockGroup]] = [deque() for _ in range(channels)]
        self.head = Objs()
        self.head_snap = 0
        self.krw: list[Batch | None] = [None] * KFREE_N_BATCHES
        self.pending_count = 0  # krc_count(): records in blocks plus the rcu_head list
        self.callbacks = Objs()  # call_rcu() callbacks (5.5, rcuscale's kfree_by_call_rcu, full sheaves)
        self.sheaf = Objs()  # objects in this CPU's rcu_free sheaf, not yet submitted (6.18)
        self.sheaf_fill = 0
        self.reclaiming = Objs()  # batches whose kfree_rcu_work() is running
        self.reclaiming_blocks = 0
        self.freed_bytes = 0.0  # bytes of this CPU's calls freed so far (their slab slots are free again)
        self.cum_seen: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.last_t = 0.0
        self.last_call = -math.inf  # the latest booked call
        self.deadline: float | None = None
        self.blocked: tuple[float, float] | None = None  # (re-arm anchor, period) while both slots are busy
        self.queued = False  # the monitor's timer fired and its work waits for a CPU
        self.work_in_progress = False
        self.backoff = False
        self._wake_at: float | None = None
        # (last booking, the first call after it until the run's end) when the monitor looked it up.
        self._first_call: tuple[float, float] | None = None
        self.reserved_pages = 0  # cache pages taken for calls not yet booked (see _reserve_for_unbooked)
        # Per-CPU caches only: a shared pool's lock is taken when a call takes its page.
        self._reserve_at_reclaim = c.pool.layout == "per-cpu" and c.kernel.batching and c.kernel.headless_api
        self._jiffy = 1.0 / c.hw.hz
        self._refills = c.kernel.refill_worker and c.policy.n_per_cpu > 0  # a miss kicks a refill that brings pages
        # A miss kicks the refill work, even an empty one (N=0 before v6.5).
        self._kicks = self._refills or (c.kernel.refill_worker and c.kernel.refill_when_disabled)
        self._kick_gap_s = c.hw.hrtimer_latency_us * 1e-6
        self._prompt_span = 0.0
        self._booked_calls = 0
        self._adaptive = c.kernel.adaptive_drain
        self._call_s = c.hw.kfree_call_ns * 1e-9
        self._bulk_local = c.costs.bulk(True)  # kfree_bulk() per record when the work runs on this CPU
        self._bulk_remote = c.costs.bulk(False)
        self.proc = self.env.process(self.kfree_rcu_monitor())

    @property
    def rng(self) -> np.random.Generator:
        """How this CPU's calls that miss the cache resolve (made on first use: most CPUs never miss)."""
        if self._rng is None:
            self._rng = self._make_rng()
        return self._rng

    @property
    def refill_rng(self) -> np.random.Generator:
        """Refill allocation outcomes on this CPU (made on first use)."""
        if self._refill_rng is None:
            self._refill_rng = self._make_refill_rng()
        return self._refill_rng

    # Booking calls ----------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Book the open-loop calls that arrived since the last booking (lazy catch-up)."""
        if self.stream is None or now <= self.last_t:
            return
        cum = self.stream.cumulative(now)
        seen = self.cum_seen
        delta = (cum[0] - seen[0], cum[1] - seen[1], cum[2] - seen[2], cum[3] - seen[3])
        if any(delta):
            first_call = None
            last = self.last_t
            if self.deadline is None and self.blocked is None and self.c.kernel.batching:
                # The first of these calls armed the monitor (schedule_delayed_monitor_work()),
                # looked up only if the timer's shortening does not make it moot.
                planned = self._first_call
                if planned is not None and planned[0] == last:
                    first = planned[1]  # the monitor found it when it planned its wake
                    first_call = lambda: min(first, now)  # noqa: E731
                else:
                    stream, seen_sum = self.stream, sum(seen)
                    first_call = lambda: stream.time_to_reach(last, 1, now, seen_sum)  # noqa: E731
            self.cum_seen = cum
            self.last_t = now
            self.book(now, delta, 0.5 * (last + now), first_call=first_call, first_after=last)
        else:
            self.cum_seen = cum
            self.last_t = now

    def book(
        self,
        now: float,
        counts: tuple[int, int, int, int],
        arrival_mid: float,
        by_call_rcu: bool = False,
        first_call: Callable[[], float] | None = None,
        first_after: float = -math.inf,
        chunk: bool = False,
    ) -> simpy.Event | None:
        """kvfree_call_rcu() for counts of (two-arg slab, two-arg vmalloc, headless slab, headless vmalloc).

        Returns the event a closed-loop caller waits on if one of its calls fell back to
        synchronize_rcu(), else None. `chunk`: a kernel loop's calls, spread over the span before now.
        """
        c = self.c
        k = c.kernel
        two_slab, two_vmalloc, headless_slab, headless_vmalloc = counts
        slab = c.slab_bytes
        vmb = c.vmalloc_bytes
        st = c.stats
        total = two_slab + two_vmalloc + headless_slab + headless_vmalloc
        st.calls += total
        st.calls_two_arg += two_slab + two_vmalloc
        st.calls_headless += headless_slab + headless_vmalloc
        self.last_call = now
        c.ledger.add_pending(
            (two_slab + headless_slab) * slab + (two_vmalloc + headless_vmalloc) * vmb,
            now,
            arrival_mid,
            span_peak=chunk,
        )
        base = self._call_s
        sync_event = None
        headless = headless_slab + headless_vmalloc
        # A preemptible loop's chunk: the refill work it kicks runs between its calls (see
        # _refill_between_calls); with PREEMPT_NONE it waits for the loop's cond_resched().
        self._prompt_span = 2.0 * (now - arrival_mid) if chunk and self._kicks and self.rq.preempt != "none" else 0.0
        self._booked_calls = total
        if by_call_rcu or not k.batching:
            # call_rcu() per object; lazy (v6.2+, CONFIG_RCU_LAZY) unless it is a kvfree batch.
            lazy = by_call_rcu and k.lazy_rcu and c.hw.rcu_lazy
            two = two_slab + two_vmalloc
            self._call_rcu(two, two_slab * slab + two_vmalloc * vmb, now, arrival_mid, lazy=lazy)
            c.latency.add(base * 1e9, two)
            if headless:
                sync_event = self._synchronize_rcu(
                    headless, headless_slab * slab + headless_vmalloc * vmb, now, arrival_mid, base
                )
            return sync_event
        if k.sheaves and c.sheaf_share > 0.0 and (two_slab or headless_slab):
            two_sheaf = self._binomial(two_slab, c.sheaf_share)
            headless_sheaf = self._binomial(headless_slab, c.sheaf_share)
            taken = self.kfree_rcu_sheaf(two_sheaf + headless_sheaf, slab, now, arrival_mid)
            # What the sheaves took, two-argument calls first; the rest takes the batching path.
            from_two = min(taken, two_sheaf)
            two_slab -= from_two
            headless_slab -= taken - from_two
            c.latency.add(base * 1e9, taken)
        if not k.headless_api:
            # Before 5.9 there is no single-argument kvfree_rcu(): callers do synchronize_rcu(); kfree().
            if headless:
                sync_event = self._synchronize_rcu(
                    headless, headless_slab * slab + headless_vmalloc * vmb, now, arrival_mid, base
                )
            headless_slab = headless_vmalloc = 0
        if not k.block_channels:
            # 5.6: no pointer blocks; every object waits on the rcu_head list (the normal path, not a fallback).
            two = two_slab + two_vmalloc
            if two:
                self.head.add(two, two_slab * slab + two_vmalloc * vmb, now, arrival_mid)
                self.head_snap = c.gp.snap()
                c.latency.add(base * 1e9, two)
                self._recount()
                self.schedule_delayed_monitor_work(now, first_call, first_after)
            return sync_event
        if len(self.cur) == 1:
            two_slab, headless_slab = two_slab + two_vmalloc, headless_slab + headless_vmalloc
            two_vmalloc = headless_vmalloc = 0
        sync_count, sync_bytes = self._add_to_channel(0, two_slab, headless_slab, slab, now, arrival_mid, base)
        if two_vmalloc + headless_vmalloc:
            more, more_bytes = self._add_to_channel(1, two_vmalloc, headless_vmalloc, vmb, now, arrival_mid, base)
            sync_count += more
            sync_bytes += more_bytes
        if sync_count:
            event = self._synchronize_rcu(sync_count, sync_bytes, now, arrival_mid, base)
            sync_event = sync_event or event
        self.schedule_delayed_monitor_work(now, first_call, first_after)
        return sync_event

    def _add_to_channel(
        self, ch: int, two_arg: int, headless: int, obj_bytes: float, now: float, mid: float, base: float
    ) -> tuple[int, int]:
        """add_ptr_to_bulk_krc_lock() for `two_arg` and `headless` calls on one channel, then the fallbacks.

        Returns (calls that fell back to synchronize_rcu(), their bytes).
        """
        calls = two_arg + headless
        if calls == 0:
            return 0, 0
        c = self.c
        snap = c.gp.snap()  # get_state_synchronize_rcu_full() on every insertion
        step = Placement(BlockGroup(snap), calls)
        self._fill_current_block(ch, step, obj_bytes, now, mid, snap)
        if step.left:
            self._take_cached_pages(step, now)
        if step.left and self._prompt_span > 0.0:
            self._refill_between_calls(step, now)
        sync_count = 0
        if step.left:
            sync_count = self._allocate_or_fall_back(step, headless / calls, obj_bytes, now, mid, snap, base)
        step.fast_calls -= step.lock_calls
        c.latency.add(base * 1e9, max(0, step.fast_calls))
        if step.lock_calls:
            c.latency.add((base + step.lock_wait) * 1e9, step.lock_calls)
        if step.new_blocks:
            self._place_new_records(ch, step, obj_bytes, now, mid, snap)
        if step.filled.blocks:
            self.pending[ch].append(step.filled)
        self._recount()
        return sync_count, int(sync_count * obj_bytes)

    def _fill_current_block(
        self, ch: int, step: Placement, obj_bytes: float, now: float, mid: float, snap: int
    ) -> None:
        """The first calls go into the channel's current block until it is full."""
        cur = self.cur[ch]
        if cur is None:
            return
        records = self.c.records
        take = min(records - cur.count, step.left)
        if take:
            cur.add(take, take * obj_bytes, now, mid)
            cur.snap = snap
            step.left -= take
        if step.left and cur.count >= records:
            step.filled.blocks += 1
            step.filled.absorb(cur)
            self.cur[ch] = None

    def _take_cached_pages(self, step: Placement, now: float) -> None:
        """get_cached_bnode(): block pages from this CPU's cache (pages taken ahead for these calls first)."""
        c = self.c
        pool = c.pool
        records = c.records
        need = -(-step.left // records)
        reserved = min(need, self.reserved_pages)  # taken for these calls at a reclaim
        self.reserved_pages -= reserved
        got, acquisitions = pool.take(self.cpu, need - reserved)
        if acquisitions:
            step.lock_wait = pool.contend(acquisitions)
            step.lock_calls += acquisitions
        c.stats.blocks_from_cache += got
        got += reserved
        absorbed = min(step.left, got * records)
        step.new_records += absorbed
        step.new_blocks += got
        step.left -= absorbed
        low = c.policy.refill_low_watermark
        if low and pool.available(self.cpu) <= low:
            self.run_page_cache_worker(now)

    def _refill_between_calls(self, step: Placement, now: float) -> None:
        """The cache ran dry inside a preemptible loop's chunk (PREEMPT_VOLUNTARY or PREEMPT).

        In the kernel the miss arms the refill's hrtimer; when it fires the high-priority kworker is
        woken and the loop switches to it at its next kmalloc(GFP_KERNEL) (might_resched()) or at once,
        so the calls arriving meanwhile fall back and then the cache holds N pages again (none with
        N=0 before v6.5: the work fills nothing and the next miss kicks it again). Cycle by cycle:
        `gap` calls fall back, the refill's pages take the calls that follow. Each kick costs the loop
        two context switches and the refill's allocations. The calls left without a block stay in
        `step` for `_allocate_or_fall_back()`, whose own miss kicks the next refill.
        """
        if self.work_in_progress or self.backoff:
            return
        c = self.c
        span = self._prompt_span
        t_call = span / max(1, self._booked_calls)
        gap = 1 + int(self._kick_gap_s / t_call) if t_call > 0.0 else step.left
        n = c.policy.n_per_cpu if self._refills else 0
        records = c.records
        left = step.left
        fell_back = kicks = used = 0
        cost = 0.0
        if n == 0:  # every kick's work fills nothing: the calls all fall back
            kicks = (left - 1) // gap
        while n and left > gap:
            kicks += 1
            fell_back += gap
            left -= gap
            got, _, alloc_cost = self._refill_pages(n)
            cost += alloc_cost
            if got == 0:
                break  # the allocator failed: the rest fall back and the next miss kicks again
            use = min(got, -(-left // records))
            placed = min(left, use * records)
            left -= placed
            used += use
            step.new_records += placed
            if use < got:
                self.c.pool.fill(self.cpu, got - use)
        if not kicks:
            return
        step.new_blocks += used
        c.stats.blocks_from_cache += used
        step.left = left + fell_back
        rq = self.rq
        rq.switches += 2 * kicks
        rq.charged += cost + 2 * kicks * rq.switch_s
        rq.work_seconds += cost
        c.gp.context_switch(self.cpu, now)

    def _allocate_or_fall_back(
        self, step: Placement, headless_share: float, obj_bytes: float, now: float, mid: float, snap: int, base: float
    ) -> int:
        """The cache is empty: each call that needs a block allocates inline (where its kind and the release
        allow) or falls back, two-argument calls to the rcu_head list, headless ones to synchronize_rcu().

        Returns the calls that fell back to synchronize_rcu().
        """
        c = self.c
        k = c.kernel
        st = c.stats
        alloc = c.alloc
        pool = c.pool
        calls = step.left
        h = headless_share
        gfp_two, gfp_headless = k.two_arg_inline_gfp, k.headless_inline_gfp
        two_allocates = gfp_two != "none"
        headless_allocates = gfp_headless != "none"
        ok_two = alloc.success_probability(gfp_two) if two_allocates and h < 1 else 0.0
        ok_headless = alloc.success_probability(gfp_headless) if headless_allocates and h > 0 else 0.0
        ok = (1 - h) * ok_two + h * ok_headless
        blocks, failures = self._renewal(calls, ok, c.records)
        # Split the failed calls: two-argument (tried to allocate or not) vs headless (tried or not).
        two_failed_alloc = two_no_alloc = headless_failed_alloc = headless_no_alloc = 0
        if failures:
            p_two = (1 - h) * (1 - ok_two)
            two_failed = self._binomial(failures, p_two / (p_two + h * (1 - ok_headless))) if h > 0 else failures
            headless_failed = failures - two_failed
            if two_allocates:
                two_failed_alloc = two_failed
            else:
                two_no_alloc = two_failed
            if headless_allocates:
                headless_failed_alloc = headless_failed
            else:
                headless_no_alloc = headless_failed
        if pool.has_shared():
            # Every call that finds no block tries the shared pool again under its lock.
            step.lock_wait = pool.contend(blocks + failures)
            step.lock_calls += blocks + failures
        st.page_alloc_attempts += blocks + two_failed_alloc + headless_failed_alloc
        st.page_alloc_failures += two_failed_alloc + headless_failed_alloc
        st.pages_allocated += blocks
        alloc.block_pages += blocks
        # Which caller kind allocated each block, for its latency and the CPU time it took.
        headless_blocks = self._binomial(blocks, h * ok_headless / ok) if blocks and ok > 0 else 0
        lat_two = alloc.latency(gfp_two) if two_allocates else 0.0
        lat_headless = alloc.latency(gfp_headless) if headless_allocates else 0.0
        c.latency.add((base + lat_two) * 1e9, blocks - headless_blocks + two_failed_alloc)
        c.latency.add((base + lat_headless) * 1e9, headless_blocks)
        self.rq.charged += (blocks - headless_blocks + two_failed_alloc) * lat_two + (
            headless_blocks + headless_failed_alloc
        ) * lat_headless
        head_count = two_failed_alloc + two_no_alloc
        st.head_fallbacks += head_count
        step.new_records += calls - failures
        step.new_blocks += blocks
        if head_count:
            self.head.add(head_count, head_count * obj_bytes, now, mid)
            self.head_snap = snap
        sync_count = headless_failed_alloc + headless_no_alloc
        step.fast_calls -= blocks + two_failed_alloc + sync_count
        step.left = 0
        if failures:
            self.run_page_cache_worker(now)
        return sync_count

    def _place_new_records(self, ch: int, step: Placement, obj_bytes: float, now: float, mid: float, snap: int) -> None:
        """The records of the blocks taken in this booking: full blocks, then the new current block."""
        records = self.c.records
        full, rest = divmod(step.new_records, records)
        if rest == 0 and full == step.new_blocks and full:
            full -= 1  # the last block stays current even when exactly full
            rest = records
        if full:
            step.filled.blocks += full
            step.filled.add(full * records, full * records * obj_bytes, now, mid)
        cur = BlockGroup(snap)
        cur.blocks = 1
        cur.add(rest, rest * obj_bytes, now, mid)
        self.cur[ch] = cur
        unused = step.new_blocks - full - 1
        if unused > 0:  # rounding in the renewal draw: give back pages no call used
            self._put_pages(unused)

    def _recount(self) -> None:
        """krc_count(): records in blocks plus the rcu_head list (a few groups per channel to add)."""
        count = self.head.count
        for ch in range(len(self.cur)):
            cur = self.cur[ch]
            if cur is not None:
                count += cur.count
            for g in self.pending[ch]:
                count += g.count
        self.pending_count = count

    def _binomial(self, n: int, p: float) -> int:
        if p <= 0.0:
            return 0
        if p >= 1.0:
            return n
        return int(self.rng.binomial(n, p))

    def _renewal(self, n: int, q: float, records: int) -> tuple[int, int]:
        """Blocks allocated inline and calls that failed, among n calls that each need a block.

        Each call that needs a block succeeds with probability q and then opens a block that the
        next `records` calls fill; failures before each success are geometric.
        """
        if q <= 0.0:
            return 0, n
        rng = self.rng
        if q >= 1.0:
            return -(-n // records), 0
        failures = int(rng.geometric(q)) - 1
        if failures >= n:
            return 0, n
        blocks = 1
        left = n - failures - records
        if left > 0:
            cycle = records + (1.0 - q) / q
            expect = left / cycle
            more = int(expect) + (1 if rng.random() < expect - int(expect) else 0)
            extra_failures = int(rng.negative_binomial(more, q)) if more else 0
            blocks += more
            failures += extra_failures
            # Reconcile so that the calls in blocks fit the blocks opened.
            while n - failures > blocks * records:
                failures += int(rng.geometric(q)) - 1
                blocks += 1
            failures = min(failures, n - 1)
            blocks = max(1, min(blocks, -(-(n - failures) // records)))
        return blocks, failures

    # Fallback paths ---------------------------------------------------------------------------

    def _synchronize_rcu(self, count: int, nbytes: float, now: float, mid: float, base: float) -> simpy.Event:
        """Headless fallback: block until a full grace period's callback wakes the caller, then kvfree() inline."""
        c = self.c
        st = c.stats
        ledger = c.ledger
        st.sync_fallbacks += count
        ledger.blocked_callers += count
        objs = Objs()
        objs.add(count, nbytes, now, mid)
        done_event = self.env.event()

        def done() -> None:
            t = self.env.now
            stall = t - now
            st.sync_stall_seconds += count * stall
            c.latency.add((base + stall) * 1e9, count)
            ledger.blocked_callers -= count
            self._freed(objs, t)
            self.rq.charged += count * c.costs.single()  # the caller's inline kvfree()
            done_event.succeed()

        if c.hw.rcu_expedited:
            self.env.timeout(c.gp.expedited_duration()).callbacks.append(lambda _e: done())
        else:
            c.pipeline.call_rcu(
                self.cpu,
                1,
                lambda _cpu, _t: 0.0,
                done,
                check=lambda gp_number: ledger.check_safe(objs.newest, gp_number),
            )
        return done_event

    def _call_rcu(self, count: int, nbytes: float, now: float, mid: float, lazy: bool) -> None:
        """call_rcu() per object (5.5, or rcuscale's kfree_by_call_rcu): freed one by one after a GP."""
        if not count:
            return
        c = self.c
        objs = Objs()
        objs.add(count, nbytes, now, mid)
        self.callbacks.absorb(objs)
        pending = self.callbacks

        def body(run_cpu: int, _t: float) -> float:
            return count * c.costs.single(local=run_cpu == self.cpu)  # the callback's kfree()

        def freed() -> None:
            pending.count -= count
            pending.bytes -= nbytes
            self._freed(objs, self.env.now)

        def queue() -> None:
            c.pipeline.call_rcu(
                self.cpu, count, body, freed, check=lambda gp_number: c.ledger.check_safe(objs.newest, gp_number)
            )

        if lazy and c.pipeline.offloaded(self.cpu):
            # Lazy callbacks sit in the bypass list until LAZY_FLUSH_JIFFIES (or a flush).
            self.env.timeout(c.hw.lazy_flush_ms * 1e-3).callbacks.append(lambda _e: queue())
        else:
            queue()

    def kfree_rcu_sheaf(self, count: int, obj_bytes: float, now: float, mid: float) -> int:
        """6.18's front end for caches with per-CPU sheaves: objects go into this CPU's rcu_free sheaf;
        a full sheaf is call_rcu()'d and its objects return to the cache after the GP. A new empty
        sheaf comes with GFP_NOWAIT; when that fails the object takes the batching path.

        Returns how many of the `count` objects the sheaves took.
        """
        if not count:
            return 0
        c = self.c
        capacity = c.sheaf_capacity
        taken = 0
        room = capacity - self.sheaf_fill
        while taken < count:
            if self.sheaf_fill == 0 and c.alloc.success_probability("nowait") < 1.0:
                if self.rng.random() >= c.alloc.success_probability("nowait"):
                    break  # no empty sheaf: this and the following objects fall back
            put = min(count - taken, room)
            self.sheaf.add(put, put * obj_bytes, now, mid)
            self.sheaf_fill += put
            taken += put
            if self.sheaf_fill >= capacity:
                self._submit_sheaf()
            room = capacity - self.sheaf_fill
        return taken

    def _submit_sheaf(self) -> None:
        """A full rcu_free sheaf: call_rcu() it; after the GP its objects are reusable (rcu_free_sheaf())."""
        c = self.c
        objs, self.sheaf, self.sheaf_fill = self.sheaf, Objs(), 0
        self.callbacks.absorb(objs)
        pending = self.callbacks

        def body(run_cpu: int, _t: float) -> float:
            return objs.count * c.costs.fast  # back into the barn as a full sheaf: no slab frees

        def freed() -> None:
            pending.count -= objs.count
            pending.bytes -= objs.bytes
            self._freed(objs, self.env.now)

        c.pipeline.call_rcu(
            self.cpu, 1, body, freed, check=lambda gp_number: c.ledger.check_safe(objs.newest, gp_number)
        )

    # The monitor ------------------------------------------------------------------------------

    def schedule_delayed_monitor_work(
        self, now: float, first_call: Callable[[], float] | None = None, first_after: float = -math.inf
    ) -> None:
        """Arm the monitor; from 6.1 a pending timer is only ever shortened, before it only armed once.

        `first_call`: when calls booked together began, gives the time of the first of them (after
        `first_after`), which armed the timer then.
        """
        k = self.c.kernel
        if not k.batching or self.pending_count == 0 or self.blocked is not None or self.queued:
            return
        hz = self.c.hw.hz
        records = self.c.records
        adaptive = k.adaptive_drain
        delay = k.drain_delay_jiffies(hz, self.pending_count, records) / hz
        if self.deadline is None:
            if first_call is None:
                self._set_deadline(now + delay)
            else:
                armed_delay = k.drain_delay_jiffies(hz, 1, records) / hz
                if not (adaptive and now + delay < first_after + armed_delay):
                    self._set_deadline(first_call() + armed_delay)
                # else: the timer the first call armed is shortened to now + delay at once, below
        if adaptive and (self.deadline is None or now + delay < self.deadline):
            self._set_deadline(now + delay)

    def _set_deadline(self, when: float) -> None:
        if self.deadline is not None and when > self.deadline + 1e-12:
            self.c.stats.monitor_timer_lengthened += 1
        self.deadline = when
        if self._wake_at is not None and when < self._wake_at and self.proc is not None:
            self._wake_at = None
            self.proc.interrupt()

    def _forecast(self, now: float, until: float) -> tuple[float, bool]:
        """When the open-loop calls will next matter: the cache running dry (the refill kick), or a
        block's worth pending (6.1+), when the kernel shortens the timer to one jiffy from then.

        Returns (wake time, whether that wake is the shortened timer's expiry).
        """
        stream = self.stream
        assert stream is not None
        jiffy = self._jiffy
        records = self.c.records
        k_miss = math.inf  # calls until the cache runs dry and the refill is kicked
        if self._refills and not self.work_in_progress:
            cur = self.cur[0]
            room = (records - cur.count) if cur is not None else 0
            k_miss = room + (self.c.pool.available(self.cpu) + self.reserved_pages) * records + 1
        k_cross = math.inf
        if self._adaptive and self.pending_count < records and until - now > 2 * jiffy:
            k_cross = records - self.pending_count
        if k_miss == k_cross == math.inf:
            return until, False
        seen = sum(self.cum_seen) if now == self.last_t else sum(stream.cumulative(now))
        if k_cross < k_miss:
            cross = stream.time_to_reach(now, int(k_cross), until, seen)
            if cross + jiffy >= until:
                return until, False
            if (
                k_miss == math.inf
                or stream.calls_by_slot_end(cross + jiffy) - seen < k_miss
                or sum(stream.cumulative(cross + jiffy)) - seen < k_miss
            ):
                return cross + jiffy, True  # the cache lasts past the shortened timer's expiry
        return stream.time_to_reach(now, int(k_miss), until, seen), False

    def _forecast_unarmed(self, now: float, first_delay: float) -> tuple[float, bool]:
        """`_forecast()` while no timer is armed: the next call arms one for `first_delay` later.

        When a block's worth is pending well before that timer could expire (6.1+), when the next
        call comes does not matter and is not looked up (the booking looks it up if it needs it).
        """
        stream = self.stream
        assert stream is not None
        end = self.c.end
        records = self.c.records
        jiffy = self._jiffy
        seen = sum(self.cum_seen) if now == self.last_t else sum(stream.cumulative(now))
        if self._adaptive and self.pending_count < records and first_delay > 2 * jiffy:
            k_cross = records - self.pending_count
            k_miss = math.inf
            if self._refills and not self.work_in_progress:
                cur = self.cur[0]
                room = (records - cur.count) if cur is not None else 0
                k_miss = room + (self.c.pool.available(self.cpu) + self.reserved_pages) * records + 1
            if k_cross < k_miss:
                cross = stream.time_to_reach(now, k_cross, end, seen)
                # Found before the end and before any timer the next call arms: as _forecast() finds it.
                if (
                    cross < end
                    and cross + jiffy < now + first_delay
                    and (
                        k_miss == math.inf
                        or stream.calls_by_slot_end(cross + jiffy) - seen < k_miss
                        or sum(stream.cumulative(cross + jiffy)) - seen < k_miss
                    )
                ):
                    return cross + jiffy, True
        first = stream.time_to_reach(now, 1, end, seen)
        if now == self.last_t:
            self._first_call = (now, first)
        if first >= end:
            return end, False
        return self._forecast(now, first + first_delay)

    def kfree_rcu_monitor(self):
        """The delayed monitor work's timer, and the clock that books this CPU's open-loop calls.

        Sleeps until the earliest of: the monitor's deadline, the next arrival when nothing is
        pending, the moment a block's worth of calls will be pending (6.1+: the timer shortens),
        the moment the cache will run dry (the refill kick), and a bound on booking staleness (at most
        1.5 times the allocator's booking interval). At the deadline the monitor work is queued on
        the release's workqueue and runs when a CPU takes it.
        """
        env = self.env
        c = self.c
        stream = self.stream
        end = c.end
        records = c.records
        batching = c.kernel.batching
        first_delay = c.kernel.drain_delay_jiffies(c.hw.hz, 1, records) / c.hw.hz  # armed by one call
        alloc = c.alloc
        while True:
            now = env.now
            shortened = False
            if not batching:
                # No monitor before 5.6: book this CPU's calls (each its own call_rcu()) every jiffy.
                wake = end if stream is None else now + self._jiffy
            elif self.blocked is not None:
                wake = end  # until _unblock() sets the deadline (bookings still happen below)
            elif self.deadline is None:
                if stream is None:
                    wake = end
                else:
                    # The next call will arm the timer; plan for the deadline it will set.
                    wake, shortened = self._forecast_unarmed(now, first_delay)
            elif stream is None:
                wake = self.deadline
            else:
                wake, shortened = self._forecast(now, self.deadline)
            bound = alloc.booking_interval
            if stream is not None and wake - now > 1.5 * bound:
                # Bound the staleness of booked calls, but do not wake only to book when a planned
                # wake comes within half an interval after the bound (a drain cycle a bit longer
                # than the bound would otherwise cost two wakes).
                wake = now + bound
            if wake >= end:
                wake = end + 1.0
            if wake < now + 1e-9:
                wake = now + 1e-9
            self._wake_at = wake
            try:
                yield env.timeout(wake - now)
            except simpy.Interrupt:
                continue
            self._wake_at = None
            now = env.now
            self.advance(now)
            if shortened and self.deadline is not None and self.pending_count >= records:
                # A block's worth arrived one jiffy ago: the kernel shortened the timer to expire now.
                if now < self.deadline:
                    self.deadline = now
            if self.deadline is not None and now >= self.deadline - 1e-12:
                self.deadline = None
                waits = self._queue_monitor_work(now)
                if waits is not None:
                    yield waits

    def _queue_monitor_work(self, now: float) -> simpy.Event | None:
        """The timer fired: queue_delayed_work()'s work runs on this CPU (system_wq) or where an unbound
        worker is placed. Returns None when it ran at once, else the event of its run (the monitor
        is not re-armed meanwhile)."""
        c = self.c
        target = self.cpu if (c.pipeline.bound or not c.cpus.any_held) else c.cpus.unbound_target(self.cpu)
        rq = c.cpus.queues[target]
        pool = c.pipeline.pool
        if rq.run_if_free(lambda t: self.monitor_work(t, target), pool):
            return None
        self.queued = True
        ran = self.env.event()

        def work(t: float) -> float:
            self.queued = False
            cost = self.monitor_work(t, target)
            ran.succeed()
            return cost

        rq.submit(work, pool=pool)
        return ran

    def monitor_work(self, now: float, run_cpu: int) -> float:
        """kfree_rcu_monitor(): free ready blocks (6.3), detach one batch, re-arm if work remains.

        Returns the CPU seconds it takes (the frees of ready blocks) on `run_cpu`.
        """
        c = self.c
        k = c.kernel
        cost = 0.0
        if k.polled_gp_per_block:
            cost = self.kvfree_rcu_drain_ready(now, local=run_cpu == self.cpu)
        queued = self.kvfree_rcu_queue_batch(now, run_cpu)
        if queued:
            self.blocked = None
        if not self.pending_count:
            return cost
        delay = k.drain_delay_jiffies(c.hw.hz, self.pending_count, c.records) / c.hw.hz
        if (
            not queued
            and self.deadline is None
            and self.stream is None
            and (not k.adaptive_drain or self.pending_count >= c.records)
        ):
            # Both krw slots are busy and the timer re-arms every `delay` (1 jiffy, or 20 ms before
            # 6.1). Those fires change nothing until a slot frees or (6.3) a polled GP completes,
            # so skip them: the next fire is the first tick of that re-arm grid after such an event.
            # Only where callers book their own calls (rcuscale threads): open-loop calls are
            # booked at the monitor's fires, and their polled snapshots need that cadence.
            self._block(now, delay)
        elif k.adaptive_drain or not queued:
            self.schedule_delayed_monitor_work(now)
        return cost

    def _block(self, now: float, period: float) -> None:
        if self.blocked is None:
            self.blocked = (now, period)
        if self.c.kernel.polled_gp_per_block:
            snaps = [g[0].snap for g in self.pending if g]
            snaps += [cur.snap for cur in self.cur if cur is not None and cur.count]
            if self.head.count:
                snaps.append(self.head_snap)
            if snaps:
                self.c.gp.when_done(min(snaps), self._unblock)

    def _unblock(self) -> None:
        """Something the blocked monitor waits for happened: fire at the next tick of its re-arm grid."""
        if self.blocked is None or self.queued:
            return
        anchor, period = self.blocked
        self.blocked = None
        ticks = max(1, math.ceil((self.env.now - anchor) / period - 1e-9))
        self._set_deadline(anchor + ticks * period)

    def kvfree_rcu_drain_ready(self, now: float, local: bool = True) -> float:
        """Free blocks (oldest first) and the rcu_head list whose polled GP has already completed.

        Returns the CPU seconds the frees take.
        """
        c = self.c
        gp = c.gp
        cost = 0.0
        for ch, groups in enumerate(self.pending):
            while groups and gp.done(groups[0].snap):
                cost += self._free_ready(groups.popleft(), local)
            cur = self.cur[ch]
            if not groups and cur is not None and cur.count and gp.done(cur.snap):
                self.cur[ch] = None
                cost += self._free_ready(cur, local)
        if self.head.count and gp.done(self.head_snap):
            head = self.head
            c.ledger.check_safe(head.newest, self.head_snap)
            self.pending_count -= head.count
            cost += self._head_cost(head.count, local)
            self._freed(head, now)
            self.head = Objs()
        return cost

    def _head_cost(self, count: int, local: bool) -> float:
        """kvfree() of `count` rcu_head-list objects one by one; the extra over kfree_bulk() is counted."""
        if not count:
            return 0.0
        costs = self.c.costs
        per_object = costs.head(count, local)
        self.c.stats.head_extra_cpu_seconds += count * max(0.0, per_object - costs.bulk(local))
        return count * per_object

    def _free_ready(self, g: BlockGroup, local: bool) -> float:
        c = self.c
        st = c.stats
        c.ledger.check_safe(g.newest, g.snap)
        st.drained_ready_blocks += g.blocks
        st.blocks_detached += g.blocks
        st.records_detached += g.count
        self.pending_count -= g.count
        self._freed(g, self.env.now)
        self._put_pages(g.blocks)
        return g.count * (self._bulk_local if local else self._bulk_remote)

    def kvfree_rcu_queue_batch(self, now: float, run_cpu: int) -> bool:
        """Move everything pending into a fully empty krw slot and queue_rcu_work() it (from `run_cpu`)."""
        if self.pending_count == 0:
            return False
        krw = self.krw
        if krw[0] is None:
            slot = 0
        elif krw[1] is None:
            slot = 1
        else:
            return False
        c = self.c
        batch = Batch(slot)
        objs = batch.objs
        cur_blocks = self.cur
        for ch, groups in enumerate(self.pending):
            while groups:
                g = groups.popleft()
                batch.blocks += g.blocks
                batch.records += g.count
                objs.absorb(g)
            cur = cur_blocks[ch]
            if cur is not None:
                cur_blocks[ch] = None
                batch.blocks += cur.blocks
                batch.records += cur.count
                objs.absorb(cur)
        if self.head.count:
            batch.head = self.head.count
            objs.absorb(self.head)
            self.head = Objs()
        self.pending_count = 0
        krw[slot] = batch
        st = c.stats
        st.batches += 1
        st.blocks_detached += batch.blocks
        st.records_detached += batch.records
        in_flight = (krw[0] is not None) + (krw[1] is not None)
        if in_flight > st.batches_in_flight_peak:
            st.batches_in_flight_peak = in_flight
        # queue_rcu_work() is call_rcu_hurry() on the CPU running the monitor: never lazy.
        c.pipeline.queue_rcu_work(
            run_cpu, lambda invoked_on, delay: self._rcu_work_rcufn(batch, invoked_on, delay), batch
        )
        return True

    def _rcu_work_rcufn(self, batch: Batch, invoked_on: int, delay: float) -> None:
        """The batch's GP ended and its callback runs on `invoked_on` (`delay` from now): queue
        kfree_rcu_work() on the release's workqueue (a kworker wakes there)."""
        target = self.c.pipeline.work_cpu(invoked_on)
        self.c.cpus.queues[target].submit(
            lambda now: self.kfree_rcu_work(batch, target, now), delay, wake=True, pool=self.c.pipeline.pool
        )

    def kfree_rcu_work(self, batch: Batch, run_cpu: int, now: float) -> float:
        """The work takes the batch's lists (its krw slot is free again), frees the objects with
        kfree_bulk() or per-object kvfree(), and returns the pages to this CPU's cache, whichever
        CPU it runs on. Returns the CPU seconds it takes on `run_cpu`."""
        c = self.c
        self.krw[batch.slot] = None
        self._unblock()
        self.reclaiming.count += batch.objs.count
        self.reclaiming_blocks += batch.blocks
        c.ledger.check_safe(batch.objs.newest, batch.target)
        local = run_cpu == self.cpu
        duration = batch.records * (self._bulk_local if local else self._bulk_remote)
        if batch.head:
            duration += self._head_cost(batch.head, local)
        if duration < SHORT_WORK_S:
            self._kfree_rcu_work_done(batch)  # a few microseconds: not worth an event of its own
        else:
            self.env.timeout(duration).callbacks.append(lambda _e: self._kfree_rcu_work_done(batch))
        return duration

    def _kfree_rcu_work_done(self, batch: Batch) -> None:
        now = self.env.now
        if not self._reserve_for_unbooked(now):
            self.advance(now)  # earlier calls must not use the pages coming back
        self.reclaiming.count -= batch.objs.count
        self.reclaiming_blocks -= batch.blocks
        self._freed(batch.objs, now)
        self._put_pages(batch.blocks)

    def _reserve_for_unbooked(self, now: float) -> bool:
        """Before pages come back: take from the cache the pages the calls not yet booked need.

        Returns False, and does nothing, where only booking them now is right (a shared pool, or
        a cache too short for them: the misses must be resolved now). Otherwise the cache ends as if
        they had been booked now and they are booked with the next calls, one booking per drain cycle
        instead of two; their bytes count toward the pending peak now, as a booking would.
        """
        stream = self.stream
        if stream is None or not self._reserve_at_reclaim:
            return False
        c = self.c
        seen = self.cum_seen
        cum = stream.cumulative(now) if now > self.last_t else seen
        two_slab, two_vmalloc = cum[0] - seen[0], cum[1] - seen[1]
        headless_slab, headless_vmalloc = cum[2] - seen[2], cum[3] - seen[3]
        per_channel = (
            (two_slab + two_vmalloc + headless_slab + headless_vmalloc,)
            if len(self.cur) == 1
            else (two_slab + headless_slab, two_vmalloc + headless_vmalloc)
        )
        records = c.records
        need = 0
        for ch, n in enumerate(per_channel):
            cur = self.cur[ch]
            room = records - cur.count if cur is not None else 0
            if n > room:
                need += -(-(n - room) // records)
        extra = need - self.reserved_pages
        if extra > 0:
            pool = c.pool
            left = pool.available(self.cpu) - extra
            low = c.policy.refill_low_watermark
            if left < 0 or (low and left <= low):
                return False
            got, _ = pool.take(self.cpu, extra)
            c.stats.blocks_from_cache += got
            self.reserved_pages += got
        c.ledger.note_peak(
            (two_slab + headless_slab) * c.slab_bytes + (two_vmalloc + headless_vmalloc) * c.vmalloc_bytes
        )
        return True

    def _put_pages(self, pages: int) -> None:
        """put_cached_bnode() each page back to this CPU; free_page() what the cache refuses."""
        if not pages:
            return
        c = self.c
        kept, acquisitions = c.pool.put(self.cpu, pages)
        if acquisitions:
            c.pool.contend(acquisitions)
        freed = pages - kept
        if freed:
            c.stats.pages_freed += freed
            c.alloc.block_pages -= freed

    # Cache refill -----------------------------------------------------------------------------

    def run_page_cache_worker(self, now: float) -> None:
        """Kick the refill: an hrtimer, then work on this CPU's system_highpri_wq pool; or, backing off,
        delayed work on the release's workqueue after rcu_delay_page_cache_fill_msec."""
        c = self.c
        if not self._kicks or self.work_in_progress:
            return
        self.work_in_progress = True
        if self.backoff:
            target = self.cpu if c.pipeline.bound else c.cpus.unbound_target(self.cpu)
            c.cpus[target].submit(
                self.fill_page_cache_func, delay=c.policy.refill_delay_ms * 1e-3, wake=True, pool=c.pipeline.pool
            )
        else:
            self.rq.submit(self.fill_page_cache_func, wake=True, pool=EVENTS_HIGHPRI)

    def fill_page_cache_func(self, now: float) -> float:
        """The refill work: allocate pages up to N (1 while backing off), stopping at the first
        failure from 6.1. Returns the CPU seconds the allocations take."""
        c = self.c
        pool = c.pool
        self.advance(now)
        target = 1 if self.backoff else c.policy.n_per_cpu
        if pool.layout == "global":
            want = min(target, pool.room(self.cpu))
        else:
            want = max(0, min(target, pool.local_cap) - pool.local_pages(self.cpu))
        got, _, cost = self._refill_pages(want)
        if got:
            pool.fill(self.cpu, got)
        self.work_in_progress = False
        self.backoff = False
        if self.stream is not None and self._wake_at is not None and self.proc is not None:
            # The monitor planned its next wake while the refill was in flight (no miss to
            # foresee then); let it plan for the moment these pages run dry.
            self._wake_at = None
            self.proc.interrupt()
        return cost

    def _refill_pages(self, want: int) -> tuple[int, int, float]:
        """fill_page_cache_func()'s allocations of `want` pages: (pages got, attempts, CPU seconds).
        The caller puts the pages where they go."""
        if want <= 0:
            return 0, 0, 0.0
        c = self.c
        alloc = c.alloc
        gfp = c.kernel.refill_gfp
        if gfp == "kernel":
            for _ in range(want):
                alloc.allocate_kernel_page()
            got = attempts = want
        else:
            p = alloc.success_probability(gfp)
            if c.kernel.refill_stops_at_failure:
                got = want if p >= 1.0 else min(want, int(self.refill_rng.geometric(1.0 - p)) - 1)
                attempts = got + (1 if got < want else 0)
            else:
                got = int(self.refill_rng.binomial(want, p))
                attempts = want
        st = c.stats
        st.page_alloc_attempts += attempts
        st.page_alloc_failures += attempts - got
        if got:
            st.pages_allocated += got
            st.refill_allocations += got
            alloc.block_pages += got
        return got, attempts, attempts * alloc.latency(gfp)

    # Shrinker ---------------------------------------------------------------------------------

    def shrink_count(self) -> int:
        """kfree_rcu_shrink_count() for this CPU, as the release counts: objects not yet in a batch
        (5.8-5.13), plus cached pages (5.14+, which also sets the refill backoff)."""
        c = self.c
        if c.kernel.shrinker_count == "pending_and_cache":
            self.backoff = True
            return self.pending_count + c.pool.local_pages(self.cpu)
        return self.pending_count

    def shrink_scan(self, now: float) -> int:
        """kfree_rcu_shrink_scan() for this CPU: drain the cache (5.14+), run the monitor now.

        Returns what the kernel counts against nr_to_scan: pending objects plus pages freed.
        """
        c = self.c
        self.advance(now)
        freed = 0
        if c.kernel.shrinker_drains_cache:
            freed = c.pool.drain(self.cpu)
            if freed:
                c.stats.pages_freed += freed
                c.alloc.block_pages -= freed
        count = self.pending_count
        self.monitor_work(now, self.cpu)  # synchronously, in the reclaiming task
        return count + freed

    # Accounting -------------------------------------------------------------------------------

    def _freed(self, objs: Objs, now: float) -> None:
        """Objects of this CPU's calls reached kfree()/kvfree()."""
        self.freed_bytes += objs.bytes
        self.c.ledger.free_objects(objs, now)

    def held_pages(self) -> int:
        pages = 0
        for ch, groups in enumerate(self.pending):
            pages += sum(g.blocks for g in groups)
            cur = self.cur[ch]
            if cur is not None:
                pages += cur.blocks
        pages += sum(b.blocks for b in self.krw if b is not None)
        return pages + self.reclaiming_blocks + self.reserved_pages

    def pending_objects(self) -> int:
        """Objects this CPU holds: blocks, rcu_head list, batches, running reclaim, call_rcu callbacks."""
        in_batches = sum(b.objs.count for b in self.krw if b is not None)
        return self.pending_count + in_batches + self.reclaiming.count + self.callbacks.count + self.sheaf.count
