"""Per-CPU kvfree_rcu() state and the kernel functions that act on it (struct kfree_rcu_cpu).

Mirrors kernel/rcu/tree.c (up to 6.13) and mm/slab_common.c (6.14+): kvfree_call_rcu() and
add_ptr_to_bulk_krc_lock(), kfree_rcu_monitor() with kvfree_rcu_drain_ready() and the krw batches,
kfree_rcu_work(), run_page_cache_worker()/fill_page_cache_func(), and the shrinker's per-CPU
part. What differs between releases is read from `KernelBehaviour`; there is one copy of each
mechanism.

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
from typing import TYPE_CHECKING

import numpy as np
import simpy

from ._arrivals import ArrivalStream
from ._gp import QOVLD

if TYPE_CHECKING:
    from ._engine import Model

KFREE_N_BATCHES = 2
SHORT_WORK_S = 50e-6  # reclaim work shorter than this completes at its start


class Objs:
    """Objects waiting together: how many, their bytes, the newest call time and the arrival-time sum."""

    __slots__ = ("count", "bytes", "newest", "arrival_sum")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0.0
        self.newest = -math.inf
        self.arrival_sum = 0.0

    def add(self, count: int, nbytes: float, now: float, arrival_mid: float) -> None:
        if count:
            self.count += count
            self.bytes += nbytes
            self.newest = now
            self.arrival_sum += count * arrival_mid

    def absorb(self, other: "Objs") -> None:
        if other.count:
            self.count += other.count
            self.bytes += other.bytes
            self.newest = max(self.newest, other.newest)
            self.arrival_sum += other.arrival_sum


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


class KfreeRcuCpu:
    """One CPU's `krc`: current blocks, pending blocks, the rcu_head list, two batch slots, the monitor."""

    def __init__(self, model: "Model", cpu: int, stream: ArrivalStream | None,
                 rng: Callable[[], np.random.Generator], refill_rng: Callable[[], np.random.Generator]) -> None:
        """`rng` and `refill_rng` make this CPU's booking and refill streams, on first use."""
        self.m = model
        self.env: simpy.Environment = model.env
        self.cpu = cpu
        self.stream = stream
        self._make_rng = rng
        self._make_refill_rng = refill_rng
        self._rng: np.random.Generator | None = None
        self._refill_rng: np.random.Generator | None = None
        self.nocb = cpu < model.hw.nocb_cpus
        channels = max(1, model.kernel.block_channels)
        self.cur: list[BlockGroup | None] = [None] * channels
        self.pending: list[deque[BlockGroup]] = [deque() for _ in range(channels)]
        self.head = Objs()
        self.head_snap = 0
        self.krw: list[Batch | None] = [None] * KFREE_N_BATCHES
        self.pending_count = 0  # krc_count(): records in blocks plus the rcu_head list
        self.callbacks = Objs()  # call_rcu() callbacks (5.5, or rcuscale's kfree_by_call_rcu)
        self.reclaiming = Objs()  # batches whose kfree_rcu_work() is running
        self.reclaiming_blocks = 0
        self.cum_seen: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.last_t = 0.0
        self.deadline: float | None = None
        self.blocked: tuple[float, float] | None = None  # (re-arm anchor, period) while both slots are busy
        self.queued = False  # the monitor's timer fired and its work waits for the CPU (PREEMPT_NONE)
        self.work_in_progress = False
        self.backoff = False
        self._wake_at: float | None = None
        # (last booking, the first call after it until the run's end) when the monitor looked it up.
        self._first_call: tuple[float, float] | None = None
        self.reserved_pages = 0  # cache pages taken for calls not yet booked (see _reserve_for_unbooked)
        # Per-CPU caches only: a shared pool's lock is taken when a call takes its page.
        self._reserve_at_reclaim = (model.pool.layout == "per-cpu" and model.kernel.batching
                                    and model.kernel.headless_api)
        self._jiffy = 1.0 / model.hw.hz
        self._refills = model.kernel.refill_worker and model.policy.n_per_cpu > 0  # a miss kicks the refill
        self._adaptive = model.kernel.adaptive_drain
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
            if self.deadline is None and self.blocked is None and self.m.kernel.batching:
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

    def book(self, now: float, counts: tuple[int, int, int, int], arrival_mid: float,
             slab_bytes: float | None = None, by_call_rcu: bool = False,
             first_call: Callable[[], float] | None = None, first_after: float = -math.inf) -> simpy.Event | None:
        """kvfree_call_rcu() for counts of (two-arg slab, two-arg vmalloc, headless slab, headless vmalloc).

        Returns the event a closed-loop caller waits on if one of its calls fell back to
        synchronize_rcu(), else None.
        """
        m = self.m
        k = m.kernel
        n2s, n2v, nhs, nhv = counts
        slab = m.slab_bytes if slab_bytes is None else slab_bytes
        vmb = float(m.workload.vmalloc_object_bytes)
        st = m.stats
        total = n2s + n2v + nhs + nhv
        st.calls += total
        st.calls_two_arg += n2s + n2v
        st.calls_headless += nhs + nhv
        m.last_call_at[self.cpu] = now
        m.add_pending((n2s + nhs) * slab + (n2v + nhv) * vmb, now, arrival_mid)
        base = m.hw.kfree_call_ns * 1e-9
        sync_event = None
        if by_call_rcu or not k.batching:
            # call_rcu() per object; lazy (v6.2+, CONFIG_RCU_LAZY) unless it is a kvfree batch.
            lazy = by_call_rcu and k.lazy_rcu and m.hw.rcu_lazy
            self._call_rcu(n2s + n2v, n2s * slab + n2v * vmb, now, arrival_mid, lazy=lazy)
            m.latency.add(base * 1e9, n2s + n2v)
            if nhs + nhv:
                sync_event = self._synchronize_rcu(nhs + nhv, nhs * slab + nhv * vmb, now, arrival_mid, base)
            return sync_event
        if not k.headless_api:
            # Before 5.9 there is no single-argument kvfree_rcu(): callers do synchronize_rcu(); kfree().
            if nhs + nhv:
                sync_event = self._synchronize_rcu(nhs + nhv, nhs * slab + nhv * vmb, now, arrival_mid, base)
            nhs = nhv = 0
        if not k.block_channels:
            # 5.6: no pointer blocks; every object waits on the rcu_head list (the normal path, not a fallback).
            n2 = n2s + n2v
            if n2:
                self.head.add(n2, n2s * slab + n2v * vmb, now, arrival_mid)
                self.head_snap = m.gp.snap()
                m.latency.add(base * 1e9, n2)
                self._recount()
                self.schedule_delayed_monitor_work(now, first_call, first_after)
            return sync_event
        if len(self.cur) == 1:
            n2s, nhs, n2v, nhv = n2s + n2v, nhs + nhv, 0, 0
        sync_count, sync_bytes = self._add_to_channel(0, n2s, nhs, slab, now, arrival_mid, base)
        if n2v + nhv:
            c, b = self._add_to_channel(1, n2v, nhv, vmb, now, arrival_mid, base)
            sync_count += c
            sync_bytes += b
        if sync_count:
            ev = self._synchronize_rcu(sync_count, sync_bytes, now, arrival_mid, base)
            sync_event = sync_event or ev
        self.schedule_delayed_monitor_work(now, first_call, first_after)
        return sync_event

    def _add_to_channel(self, ch: int, n2: int, nh: int, obj_bytes: float, now: float, mid: float,
                        base: float) -> tuple[int, int]:
        """add_ptr_to_bulk_krc_lock() for n2 two-argument and nh headless calls on one channel.

        Returns (calls that fell back to synchronize_rcu(), their bytes).
        """
        n = n2 + nh
        if n == 0:
            return 0, 0
        m = self.m
        st = m.stats
        pool = m.pool
        records = m.records
        snap = m.gp.snap()  # get_state_synchronize_rcu_full() on every insertion
        h = nh / n
        filled = BlockGroup(snap)
        fast_calls = n  # calls that took only the fast path; adjusted below
        lock_calls = 0
        lock_wait = 0.0
        cur = self.cur[ch]
        if cur is not None:
            take = min(records - cur.count, n)
            if take:
                cur.add(take, take * obj_bytes, now, mid)
                cur.snap = snap
                n -= take
            if n and cur.count >= records:
                filled.blocks += 1
                filled.absorb(cur)
                self.cur[ch] = cur = None
        new_records = 0  # records placed in blocks taken in this booking
        new_blocks = 0
        if n:
            need = -(-n // records)
            reserved = min(need, self.reserved_pages)  # taken for these calls at a reclaim
            self.reserved_pages -= reserved
            got, acquisitions = pool.take(self.cpu, need - reserved)
            if acquisitions:
                lock_wait = pool.contend(acquisitions)
                lock_calls += acquisitions
            st.blocks_from_cache += got
            got += reserved
            absorbed = min(n, got * records)
            new_records += absorbed
            new_blocks += got
            n -= absorbed
            if m.policy.refill_low_watermark and pool.available(self.cpu) <= m.policy.refill_low_watermark:
                self.run_page_cache_worker(now)
        sync_count = 0
        if n:
            # The cache is empty: each call that needs a block allocates inline or falls back.
            k = m.kernel
            g2, gh = k.two_arg_inline_gfp, k.headless_inline_gfp
            a2 = g2 != "none"
            ah = gh != "none"
            s2 = m.alloc.success_probability(g2) if a2 and h < 1 else 0.0
            sh = m.alloc.success_probability(gh) if ah and h > 0 else 0.0
            q = (1 - h) * s2 + h * sh
            blocks, failures = self._renewal(n, q, records)
            # Split the failed calls: two-argument (attempted or not) vs headless (attempted or not).
            f2a = f2n = fha = fhn = 0
            if failures:
                p2 = (1 - h) * (1 - s2)
                f2 = self._binomial(failures, p2 / (p2 + h * (1 - sh))) if h > 0 else failures
                fh = failures - f2
                if a2:
                    f2a = f2
                else:
                    f2n = f2
                if ah:
                    fha = fh
                else:
                    fhn = fh
            if pool.has_shared():
                # Every call that finds no block tries the shared pool again under its lock.
                lock_wait = pool.contend(blocks + failures)
                lock_calls += blocks + failures
            attempts_ok = blocks
            st.page_alloc_attempts += attempts_ok + f2a + fha
            st.page_alloc_failures += f2a + fha
            st.pages_allocated += blocks
            m.alloc.block_pages += blocks
            # Which caller kind allocated each block, for its latency.
            ok_head = self._binomial(blocks, h * sh / q) if blocks and q > 0 else 0
            lat2 = m.alloc.latency(g2) if a2 else 0.0
            lath = m.alloc.latency(gh) if ah else 0.0
            m.latency.add((base + lat2) * 1e9, blocks - ok_head + f2a)
            m.latency.add((base + lath) * 1e9, ok_head)
            m.cpu_busy[self.cpu] += (blocks - ok_head + f2a) * lat2 + (ok_head + fha) * lath
            st.head_fallbacks += f2a + f2n
            in_blocks = n - failures
            new_records += in_blocks
            new_blocks += blocks
            head_count = f2a + f2n
            if head_count:
                self.head.add(head_count, head_count * obj_bytes, now, mid)
                self.head_snap = snap
            sync_count = fha + fhn
            fast_calls -= blocks + f2a + sync_count
            if failures:
                self.run_page_cache_worker(now)
        fast_calls -= lock_calls
        m.latency.add(base * 1e9, max(0, fast_calls))
        if lock_calls:
            m.latency.add((base + lock_wait) * 1e9, lock_calls)
        if new_blocks:
            full, rest = divmod(new_records, records)
            if rest == 0 and full == new_blocks and full:
                full -= 1  # the last block stays current even when exactly full
                rest = records
            if full:
                filled.blocks += full
                filled.add(full * records, full * records * obj_bytes, now, mid)
            cur = BlockGroup(snap)
            cur.blocks = 1
            cur.add(rest, rest * obj_bytes, now, mid)
            self.cur[ch] = cur
            unused = new_blocks - full - 1
            if unused > 0:  # rounding in the renewal draw: give back pages no call used
                self._put_pages(unused)
        if filled.blocks:
            self.pending[ch].append(filled)
        self._recount()
        return sync_count, int(sync_count * obj_bytes)

    def _recount(self) -> None:
        """krc_count(): records in blocks plus the rcu_head list (a few groups per channel to add)."""
        count = self.head.count
        for c in range(len(self.cur)):
            cur = self.cur[c]
            if cur is not None:
                count += cur.count
            for g in self.pending[c]:
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
        """Headless fallback: block for a full grace period, then kvfree() inline."""
        m = self.m
        st = m.stats
        st.sync_fallbacks += count
        m.blocked_callers += count
        objs = Objs()
        objs.add(count, nbytes, now, mid)
        done_event = self.env.event()

        def done() -> None:
            t = self.env.now
            stall = t - now
            st.sync_stall_seconds += count * stall
            m.latency.add((base + stall) * 1e9, count)
            m.blocked_callers -= count
            m.free_objects(objs, t)
            done_event.succeed()

        if m.hw.rcu_expedited:
            self.env.timeout(m.gp.expedited_duration()).callbacks.append(lambda _e: done())
        else:
            target: list[int] = []
            target.append(m.gp.request(lambda: (m.check_safe(objs.newest, target[0]), done())))
        return done_event

    def _call_rcu(self, count: int, nbytes: float, now: float, mid: float, lazy: bool) -> None:
        """call_rcu() per object (5.5, or rcuscale's kfree_by_call_rcu): freed one by one after a GP."""
        if not count:
            return
        m = self.m
        objs = Objs()
        objs.add(count, nbytes, now, mid)
        was_over = self.callbacks.count > QOVLD
        self.callbacks.absorb(objs)
        if (self.callbacks.count > QOVLD) != was_over:
            m.overloaded_cpus += 1 if not was_over else -1
            m.gp.overloaded = m.overloaded_cpus > 0
        env = self.env

        def invoked(target: int) -> None:
            m.check_safe(objs.newest, target)
            delay = (m.hw.nocb_invoke_ms * 1e-3 if self.nocb else m.hw.cb_invoke_us * 1e-6)
            work = count * m.hw.kvfree_ns_per_object * 1e-9
            m.cpu_busy[self.cpu] += work
            delay += work

            def free(_e: simpy.Event) -> None:
                was = self.callbacks.count > QOVLD
                self.callbacks.count -= count
                self.callbacks.bytes -= nbytes
                if was and self.callbacks.count <= QOVLD:
                    m.overloaded_cpus -= 1
                    m.gp.overloaded = m.overloaded_cpus > 0
                m.free_objects(objs, env.now)

            env.timeout(delay).callbacks.append(free)

        def queue() -> None:
            holder: list[int] = []
            holder.append(m.gp.request(lambda: invoked(holder[0])))

        if lazy and self.nocb:
            # Lazy callbacks sit in the bypass list until LAZY_FLUSH_JIFFIES (or a flush).
            env.timeout(m.hw.lazy_flush_ms * 1e-3).callbacks.append(lambda _e: queue())
        else:
            queue()

    # The monitor ------------------------------------------------------------------------------

    def schedule_delayed_monitor_work(self, now: float, first_call: Callable[[], float] | None = None,
                                      first_after: float = -math.inf) -> None:
        """Arm the monitor; from 6.1 a pending timer is only ever shortened, before it only armed once.

        `first_call`: when calls booked together began, gives the time of the first of them (after
        `first_after`), which armed the timer then.
        """
        m = self.m
        if not m.kernel.batching or self.pending_count == 0 or self.blocked is not None or self.queued:
            return
        hz = m.hw.hz
        adaptive = m.kernel.adaptive_drain
        delay = m.kernel.drain_delay_jiffies(hz, self.pending_count, m.records) / hz
        if self.deadline is None:
            if first_call is None:
                self._set_deadline(now + delay)
            else:
                armed_delay = m.kernel.drain_delay_jiffies(hz, 1, m.records) / hz
                if not (adaptive and now + delay < first_after + armed_delay):
                    self._set_deadline(first_call() + armed_delay)
                # else: the timer the first call armed is shortened to now + delay at once, below
        if adaptive and (self.deadline is None or now + delay < self.deadline):
            self._set_deadline(now + delay)

    def _set_deadline(self, when: float) -> None:
        if self.deadline is not None and when > self.deadline + 1e-12:
            self.m.stats.monitor_timer_lengthened += 1
        self.deadline = when
        if self._wake_at is not None and when < self._wake_at and self.proc is not None:
            self._wake_at = None
            self.proc.interrupt()

    def _forecast(self, now: float, until: float) -> tuple[float, bool]:
        """When the open-loop calls will next matter: the cache running dry (the refill kick), or a
        block's worth pending (6.1+), when the kernel shortens the timer to one jiffy from then.

        Returns (wake time, whether that wake is the shortened timer's expiry).
        """
        m = self.m
        stream = self.stream
        assert stream is not None
        jiffy = self._jiffy
        records = m.records
        k_miss = k_cross = math.inf
        if self._refills and not self.work_in_progress:
            cur = self.cur[0]
            room = (records - cur.count) if cur is not None else 0
            k_miss = room + (m.pool.available(self.cpu) + self.reserved_pages) * records + 1
        if self._adaptive and self.pending_count < records and until - now > 2 * jiffy:
            k_cross = records - self.pending_count
        if k_miss == k_cross == math.inf:
            return until, False
        seen = sum(self.cum_seen) if now == self.last_t else sum(stream.cumulative(now))
        if k_cross < k_miss:
            cross = stream.time_to_reach(now, int(k_cross), until, seen)
            if cross + jiffy >= until:
                return until, False
            if (k_miss == math.inf or stream.calls_by_slot_end(cross + jiffy) - seen < k_miss
                    or sum(stream.cumulative(cross + jiffy)) - seen < k_miss):
                return cross + jiffy, True  # the cache lasts past the shortened timer's expiry
        return stream.time_to_reach(now, int(k_miss), until, seen), False

    def _forecast_unarmed(self, now: float, first_delay: float) -> tuple[float, bool]:
        """`_forecast()` while no timer is armed: the next call arms one for `first_delay` later.

        When a block's worth is pending well before that timer could expire (6.1+), when the next
        call comes does not matter and is not looked up (the booking looks it up if it needs it).
        """
        m = self.m
        stream = self.stream
        assert stream is not None
        end = m.end
        records = m.records
        jiffy = self._jiffy
        seen = sum(self.cum_seen) if now == self.last_t else sum(stream.cumulative(now))
        if self._adaptive and self.pending_count < records and first_delay > 2 * jiffy:
            k_cross = records - self.pending_count
            k_miss = math.inf
            if self._refills and not self.work_in_progress:
                cur = self.cur[0]
                room = (records - cur.count) if cur is not None else 0
                k_miss = room + (m.pool.available(self.cpu) + self.reserved_pages) * records + 1
            if k_cross < k_miss:
                cross = stream.time_to_reach(now, k_cross, end, seen)
                # Found before the end and before any timer the next call arms: as _forecast() finds it.
                if cross < end and cross + jiffy < now + first_delay and (
                        k_miss == math.inf or stream.calls_by_slot_end(cross + jiffy) - seen < k_miss
                        or sum(stream.cumulative(cross + jiffy)) - seen < k_miss):
                    return cross + jiffy, True
        first = stream.time_to_reach(now, 1, end, seen)
        if now == self.last_t:
            self._first_call = (now, first)
        if first >= end:
            return end, False
        return self._forecast(now, first + first_delay)

    def kfree_rcu_monitor(self):
        """The delayed monitor work, and the clock that books this CPU's open-loop calls.

        Sleeps until the earliest of: the monitor's deadline, the next arrival when nothing is
        pending, the moment a block's worth of calls will be pending (6.1+: the timer shortens),
        the moment the cache will run dry (the refill kick), and a bound on booking staleness (at most
        1.5 times `max_booking_interval`).
        """
        env = self.env
        m = self.m
        stream = self.stream
        end = m.end
        records = m.records
        batching = m.kernel.batching
        first_delay = m.kernel.drain_delay_jiffies(m.hw.hz, 1, records) / m.hw.hz  # armed by one call
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
            if stream is not None and wake - now > 1.5 * m.max_booking_interval:
                # Bound the staleness of booked calls, but do not wake only to book when a planned
                # wake comes within half an interval after the bound (a drain cycle a bit longer
                # than the bound would otherwise cost two wakes).
                wake = now + m.max_booking_interval
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
                turn = m.cpu_turn(self.cpu)
                if turn is not None:  # PREEMPT_NONE: the work runs at the CPU's next cond_resched()
                    self.queued = True
                    yield turn
                    self.queued = False
                    now = env.now
                self.monitor_work(now)

    def monitor_work(self, now: float) -> None:
        """kfree_rcu_monitor(): free ready blocks (6.3), detach one batch, re-arm if work remains."""
        m = self.m
        if m.kernel.polled_gp_per_block:
            self.kvfree_rcu_drain_ready(now)
        queued = self.kvfree_rcu_queue_batch(now)
        if queued:
            self.blocked = None
        if not self.pending_count:
            return
        delay = m.kernel.drain_delay_jiffies(m.hw.hz, self.pending_count, m.records) / m.hw.hz
        if not queued and self.deadline is None and self.stream is None and (not m.kernel.adaptive_drain or self.pending_count >= m.records):
            # Both krw slots are busy and the timer re-arms every `delay` (1 jiffy, or 20 ms before
            # 6.1). Those fires change nothing until a slot frees or (6.3) a polled GP completes,
            # so skip them: the next fire is the first tick of that re-arm grid after such an event.
            # Only where callers book their own calls (rcuscale threads): open-loop calls are
            # booked at the monitor's fires, and their polled snapshots need that cadence.
            self._block(now, delay)
        elif m.kernel.adaptive_drain or not queued:
            self.schedule_delayed_monitor_work(now)

    def _block(self, now: float, period: float) -> None:
        if self.blocked is None:
            self.blocked = (now, period)
        if self.m.kernel.polled_gp_per_block:
            snaps = [g[0].snap for g in self.pending if g]
            snaps += [c.snap for c in self.cur if c is not None and c.count]
            if self.head.count:
                snaps.append(self.head_snap)
            if snaps:
                self.m.gp.when_done(min(snaps), self._unblock)

    def _unblock(self) -> None:
        """Something the blocked monitor waits for happened: fire at the next tick of its re-arm grid."""
        if self.blocked is None or self.queued:
            return
        anchor, period = self.blocked
        self.blocked = None
        ticks = max(1, math.ceil((self.env.now - anchor) / period - 1e-9))
        self._set_deadline(anchor + ticks * period)

    def kvfree_rcu_drain_ready(self, now: float) -> None:
        """Free blocks (oldest first) and the rcu_head list whose polled GP has already completed."""
        m = self.m
        gp = m.gp
        for ch, groups in enumerate(self.pending):
            while groups and gp.done(groups[0].snap):
                g = groups.popleft()
                self._free_ready(g)
            cur = self.cur[ch]
            if not groups and cur is not None and cur.count and gp.done(cur.snap):
                self.cur[ch] = None
                self._free_ready(cur)
        if self.head.count and gp.done(self.head_snap):
            m.check_safe(self.head.newest, self.head_snap)
            self.pending_count -= self.head.count
            m.free_objects(self.head, now)
            self.head = Objs()

    def _free_ready(self, g: BlockGroup) -> None:
        m = self.m
        m.check_safe(g.newest, g.snap)
        m.stats.drained_ready_blocks += g.blocks
        m.stats.blocks_detached += g.blocks
        m.stats.records_detached += g.count
        self.pending_count -= g.count
        m.free_objects(g, self.env.now)
        self._put_pages(g.blocks)

    def kvfree_rcu_queue_batch(self, now: float) -> bool:
        """Move everything pending into a fully empty krw slot and queue_rcu_work() it."""
        if self.pending_count == 0:
            return False
        krw = self.krw
        if krw[0] is None:
            slot = 0
        elif krw[1] is None:
            slot = 1
        else:
            return False
        m = self.m
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
        st = m.stats
        st.batches += 1
        st.blocks_detached += batch.blocks
        st.records_detached += batch.records
        in_flight = (krw[0] is not None) + (krw[1] is not None)
        if in_flight > st.batches_in_flight_peak:
            st.batches_in_flight_peak = in_flight
        # queue_rcu_work() uses call_rcu_hurry(): never lazy.
        batch.target = m.gp.request(lambda: self._rcu_work_rcufn(batch))
        return True

    def _rcu_work_rcufn(self, batch: Batch) -> None:
        """The batch's GP ended: its callback is invoked (softirq, or an rcuo kthread with NOCB)
        and queues kfree_rcu_work()."""
        hw = self.m.hw
        invoke = hw.nocb_invoke_ms * 1e-3 if self.nocb else hw.cb_invoke_us * 1e-6
        self.m.run_after(invoke + hw.wq_latency_us * 1e-6, lambda: self.kfree_rcu_work(batch))

    def kfree_rcu_work(self, batch: Batch) -> None:
        """The work takes the batch's lists (its krw slot is free again), frees the objects with
        kfree_bulk() or per-object kvfree(), and returns the pages to this CPU's cache, whichever
        CPU it runs on."""
        m = self.m
        hw = m.hw
        turn = m.cpu_turn(self.cpu)
        if turn is not None:  # PREEMPT_NONE: the kworker runs at the CPU's next cond_resched()
            turn.callbacks.append(lambda _e: self.kfree_rcu_work(batch))
            return
        self.krw[batch.slot] = None
        self._unblock()
        self.reclaiming.count += batch.objs.count
        self.reclaiming_blocks += batch.blocks
        m.check_safe(batch.objs.newest, batch.target)
        duration = (batch.records * hw.kfree_bulk_ns_per_object + batch.head * hw.kvfree_ns_per_object) * 1e-9
        m.cpu_busy[self.cpu] += duration
        if duration < SHORT_WORK_S:
            self._kfree_rcu_work_done(batch)  # a few microseconds: not worth an event of its own
        else:
            self.env.timeout(duration).callbacks.append(lambda _e: self._kfree_rcu_work_done(batch))

    def _kfree_rcu_work_done(self, batch: Batch) -> None:
        m = self.m
        now = self.env.now
        if not self._reserve_for_unbooked(now):
            self.advance(now)  # earlier calls must not use the pages coming back
        self.reclaiming.count -= batch.objs.count
        self.reclaiming_blocks -= batch.blocks
        m.free_objects(batch.objs, now)
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
        m = self.m
        seen = self.cum_seen
        cum = stream.cumulative(now) if now > self.last_t else seen
        n2s, n2v, nhs, nhv = cum[0] - seen[0], cum[1] - seen[1], cum[2] - seen[2], cum[3] - seen[3]
        per_channel = (n2s + n2v + nhs + nhv,) if len(self.cur) == 1 else (n2s + nhs, n2v + nhv)
        records = m.records
        need = 0
        for ch, n in enumerate(per_channel):
            cur = self.cur[ch]
            room = records - cur.count if cur is not None else 0
            if n > room:
                need += -(-(n - room) // records)
        extra = need - self.reserved_pages
        if extra > 0:
            pool = m.pool
            left = pool.available(self.cpu) - extra
            if left < 0 or (m.policy.refill_low_watermark and left <= m.policy.refill_low_watermark):
                return False
            got, _ = pool.take(self.cpu, extra)
            m.stats.blocks_from_cache += got
            self.reserved_pages += got
        nbytes = (n2s + nhs) * m.slab_bytes + (n2v + nhv) * float(m.workload.vmalloc_object_bytes)
        if m.bytes_pending + nbytes > m.bytes_peak:
            m.bytes_peak = m.bytes_pending + nbytes
        return True

    def _put_pages(self, pages: int) -> None:
        """put_cached_bnode() each page back to this CPU; free_page() what the cache refuses."""
        if not pages:
            return
        m = self.m
        kept, acquisitions = m.pool.put(self.cpu, pages)
        if acquisitions:
            m.pool.contend(acquisitions)
        freed = pages - kept
        if freed:
            m.stats.pages_freed += freed
            m.alloc.block_pages -= freed

    # Cache refill -----------------------------------------------------------------------------

    def run_page_cache_worker(self, now: float) -> None:
        """Kick the refill: an hrtimer then high-priority work, or after the backoff delay."""
        m = self.m
        if not m.kernel.refill_worker or m.policy.n_per_cpu == 0 or self.work_in_progress:
            return
        self.work_in_progress = True
        delay = m.policy.refill_delay_ms * 1e-3 if self.backoff else m.hw.wq_latency_us * 1e-6
        self.env.timeout(delay).callbacks.append(self.fill_page_cache_func)

    def fill_page_cache_func(self, _event: simpy.Event | None = None) -> None:
        """The refill work: allocate pages up to N (1 while backing off), stopping at the first
        failure from 6.1. The allocations take microseconds; their CPU time is charged to this CPU."""
        m = self.m
        turn = m.cpu_turn(self.cpu)
        if turn is not None:  # PREEMPT_NONE: the kworker runs at the CPU's next cond_resched()
            turn.callbacks.append(self.fill_page_cache_func)
            return
        now = self.env.now
        self.advance(now)
        target = 1 if self.backoff else m.policy.n_per_cpu
        if m.pool.layout == "global":
            want = min(target, m.pool.room(self.cpu))
        else:
            want = max(0, min(target, m.pool.local_cap) - m.pool.local_pages(self.cpu))
        gfp = m.kernel.refill_gfp
        got = attempts = 0
        if want:
            if gfp == "kernel":
                for _ in range(want):
                    m.alloc.allocate_kernel_page()
                got = attempts = want
            else:
                p = m.alloc.success_probability(gfp)
                if m.kernel.refill_stops_at_failure:
                    got = want if p >= 1.0 else min(want, int(self.refill_rng.geometric(1.0 - p)) - 1)
                    attempts = got + (1 if got < want else 0)
                else:
                    got = int(self.refill_rng.binomial(want, p))
                    attempts = want
            m.cpu_busy[self.cpu] += attempts * m.alloc.latency(gfp)
        st = m.stats
        st.page_alloc_attempts += attempts
        st.page_alloc_failures += attempts - got
        if got:
            m.pool.fill(self.cpu, got)
            st.pages_allocated += got
            st.refill_allocations += got
            m.alloc.block_pages += got
        self.work_in_progress = False
        self.backoff = False
        if self.stream is not None and self._wake_at is not None and self.proc is not None:
            # The monitor planned its next wake while the refill was in flight (no miss to
            # foresee then); let it plan for the moment these pages run dry.
            self._wake_at = None
            self.proc.interrupt()

    # Shrinker ---------------------------------------------------------------------------------

    def shrink_count(self) -> int:
        """kfree_rcu_shrink_count() for this CPU: pending objects plus cached pages; sets the backoff."""
        if self.m.kernel.shrinker_drains_cache:
            self.backoff = True
        return self.pending_count + self.m.pool.local_pages(self.cpu)

    def shrink_scan(self, now: float) -> int:
        """kfree_rcu_shrink_scan() for this CPU: drain the cache, run the monitor now."""
        m = self.m
        self.advance(now)
        freed = 0
        if m.kernel.shrinker_drains_cache:
            freed = m.pool.drain(self.cpu)
            if freed:
                m.stats.pages_freed += freed
                m.alloc.block_pages -= freed
        count = self.pending_count
        self.monitor_work(now)
        return count + freed

    # Accounting -------------------------------------------------------------------------------

    def held_pages(self) -> int:
        pages = 0
        for ch, groups in enumerate(self.pending):
            pages += sum(g.blocks for g in groups)
            if self.cur[ch] is not None:
                pages += self.cur[ch].blocks
        pages += sum(b.blocks for b in self.krw if b is not None)
        return pages + self.reclaiming_blocks + self.reserved_pages

    def pending_objects(self) -> int:
        """Objects this CPU holds: blocks, rcu_head list, batches, running reclaim, call_rcu callbacks."""
        in_batches = sum(b.objs.count for b in self.krw if b is not None)
        return self.pending_count + in_batches + self.reclaiming.count + self.callbacks.count
