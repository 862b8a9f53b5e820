"""The page allocator and memory pressure: watermarks, kswapd, shrinkers, direct reclaim, the OOM killer.

Follows mm/page_alloc.c and mm/vmscan.c only as far as kvfree_rcu() can tell the difference:

- order-0 pages; min/low/high watermarks as the kernel computes them (min_free_kbytes =
  sqrt(16 x lowmem KiB), clamped; low/high gaps from watermark_scale_factor);
- memory the kernel holds from boot (the profile's `boot_reserved_mib`) and the page cache the
  profile starts with, which reclaim eats first and which grows back when memory is plentiful;
- how each flag set behaves near the watermarks: GFP_NOWAIT fails below min without reclaiming;
  GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC tries one light direct reclaim and fails rather than
  OOM; GFP_KERNEL reclaims directly and retries;
- kswapd, woken below the low watermark, runs balance_pgdat(): reclaim passes at priority 12 down
  to 1 until free memory is back at the high watermark; direct reclaim (do_try_to_free_pages(),
  priorities 12 to 0 until SWAP_CLUSTER_MAX pages come back) runs in the allocating task below
  the min watermark and stalls it;
- every reclaim pass calls shrink_slab(), and each shrinker is driven as do_shrink_slab() does:
  count_objects(), then scan_objects() in batches of SHRINK_BATCH (128) for
  (freeable >> priority) * 4 / seeks objects, the rest carried over (nr_deferred);
- the OOM killer: a GFP_KERNEL allocation that finds free memory under the min watermark with no
  page cache left and makes no progress over MAX_RECLAIM_RETRIES (16) direct-reclaim passes
  (should_reclaim_retry()) ends in out_of_memory(); with nothing killable the kernel panics.

Left out: zones, compaction, high orders, swap (anonymous demand is unreclaimable here), memcg.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._profiles import HardwareProfile, WorkloadProfile

MIN_FREE_KBYTES_MAX = 262_144  # mm/page_alloc.c clamps min_free_kbytes to [128, 262144]
DEF_PRIORITY = 12  # mm/vmscan.c
SHRINK_BATCH = 128  # include/linux/shrinker.h
DEFAULT_SEEKS = 2
SWAP_CLUSTER_MAX = 32
MAX_RECLAIM_RETRIES = 16  # mm/internal.h
STRUCT_PAGE_BYTES = 64  # sizeof(struct page) on 64-bit: the memmap the kernel holds from boot


def _sigmoid(x: float) -> float:
    if x > 40:
        return 1.0
    if x < -40:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


class Shrinker:
    """A registered shrinker as shrink_slab() drives it (struct shrinker with its nr_deferred)."""

    def __init__(
        self,
        count: Callable[[], int],
        scan: Callable[[int], int],
        seeks: int = DEFAULT_SEEKS,
        batch: int = SHRINK_BATCH,
    ) -> None:
        self.count_objects = count
        self.scan_objects = scan  # returns objects freed, or -1 for SHRINK_STOP
        self.seeks = seeks
        self.batch = batch
        self.nr_deferred = 0
        self.scans = 0  # scan_objects() calls

    def do_shrink_slab(self, priority: int) -> int:
        """One shrink_slab() visit at `priority`; returns objects freed."""
        freeable = self.count_objects()
        if freeable <= 0:
            return 0
        delta = (freeable >> priority) * 4 // self.seeks
        total_scan = min(self.nr_deferred + delta, 2 * freeable)
        self.nr_deferred = 0
        freed = 0
        batch = self.batch
        while total_scan >= batch or total_scan >= freeable:
            nr_to_scan = min(batch, total_scan)
            self.scans += 1
            ret = self.scan_objects(nr_to_scan)
            if ret < 0:  # SHRINK_STOP
                break
            freed += ret
            total_scan -= nr_to_scan
            if total_scan <= 0:
                break
        self.nr_deferred = max(0, total_scan)
        return freed


class PageAllocator:
    """Free pages and who holds the rest; answers allocation attempts by flag set; reclaims and OOMs."""

    def __init__(
        self,
        hw: HardwareProfile,
        workload: WorkloadProfile,
        emergency_reserve_fraction: float,
        seconds: float,
        rng: np.random.Generator,
    ) -> None:
        self.hw = hw
        self.workload = workload
        self.page_size = hw.page_size
        self.total = hw.memory_mib * (1 << 20) // hw.page_size
        # Held from boot: the memmap (one struct page per page) plus what the profile names (kernel image,
        # per-CPU areas, early allocations).
        self.reserved = self.total * STRUCT_PAGE_BYTES / hw.page_size + hw.boot_reserved_mib * (1 << 20) / hw.page_size
        min_kb = min(max(int(math.sqrt(hw.memory_mib * 1024 * 16)), 128), MIN_FREE_KBYTES_MAX)
        self.wmark_min = max(1, min_kb * 1024 // hw.page_size)
        gap = max(self.wmark_min // 4, self.total * hw.watermark_scale_factor // 10_000)
        self.wmark_low = self.wmark_min + gap
        self.wmark_high = self.wmark_low + gap
        self.anon = workload.anon_fraction * self.total
        usable = max(0.0, self.total * 0.95 - self.anon - self.reserved)
        self.file_target = min(hw.file_cache_fraction * self.total, usable)
        self.file = self.file_target
        self.block_pages = 0  # kvfree_rcu block pages, in use or cached
        self.pending = None  # the ledger of objects waiting for a grace period (its bytes_pending)
        self.chain_pages = 0.0  # the dependent subsystem of the chain reaction
        self.oom_events = 0
        self.oom_killed_anon = 0.0
        self.emergency = emergency_reserve_fraction * self.total
        self.seconds = seconds
        self.storm_phase = rng.uniform(0.0, workload.storm_every_s)
        self.storm_index = -1.0
        self.storm_killed = 0.0
        self.shrinkers: list[Shrinker] = []
        self.no_progress_passes = 0  # direct-reclaim passes in a row that brought nothing back
        self.direct_reclaims = 0
        self.booking_interval = 0.1  # how stale open-loop bookings may get (shorter under pressure)
        self.free_min = max(0.0, self.free)

    @property
    def object_bytes(self) -> float:
        return self.pending.bytes_pending if self.pending is not None else 0.0

    @property
    def free(self) -> float:
        used = (
            self.reserved
            + self.anon
            + self.file
            + self.block_pages
            + self.object_bytes / self.page_size
            + self.chain_pages
        )
        return self.total - used

    def available(self) -> float:
        """si_mem_available(): free plus reclaimable page cache, less the low watermarks."""
        return self.free + self.file - self.wmark_low

    def note_free(self) -> None:
        free = self.free
        if free < self.free_min:
            self.free_min = max(0.0, free)

    # Allocation by flag set -------------------------------------------------------------------

    def success_probability(self, gfp: str) -> float:
        """Chance that one order-0 allocation with this flag set succeeds now."""
        if gfp == "none":
            return 0.0
        free = self.free
        if self.emergency and free < self.emergency:
            return 1.0 if free > 1 else 0.0  # reserves tapped (the never-merged GFP_MEMALLOC idea)
        width = self.hw.alloc_fail_softness * self.wmark_min
        if gfp == "nowait":
            return _sigmoid((free - self.wmark_min) / width)
        if gfp == "noretry":
            # One light direct-reclaim pass: succeeds while page cache is left to reclaim.
            reclaimable = min(self.file, float(SWAP_CLUSTER_MAX))
            return _sigmoid((free + reclaimable - self.wmark_min) / width)
        return 1.0  # GFP_KERNEL: reclaims and retries; the OOM killer decides the rest

    def latency(self, gfp: str) -> float:
        """Seconds one allocation attempt takes now (fast path, slow path, direct reclaim)."""
        free = self.free
        fast = self.hw.alloc_fast_us * 1e-6
        if free > self.wmark_low or gfp == "nowait":
            return fast
        if free > self.wmark_min:
            return 2 * fast  # slow path: wake kswapd, retry against the min watermark
        return fast + self.hw.direct_reclaim_ms * 1e-3

    # Reclaim ----------------------------------------------------------------------------------

    def shrink_slab(self, priority: int) -> int:
        return sum(s.do_shrink_slab(priority) for s in self.shrinkers)

    def _reclaim_file(self, pages: float) -> float:
        take = min(self.file, max(0.0, pages))
        self.file -= take
        return take

    def direct_reclaim(self) -> float:
        """do_try_to_free_pages() in an allocating task: priorities 12 to 0 until SWAP_CLUSTER_MAX pages
        come back; every pass shrinks the slab caches. Returns the seconds the task stalls."""
        self.direct_reclaims += 1
        reclaimed = 0.0
        for priority in range(DEF_PRIORITY, -1, -1):
            scan = max(float(SWAP_CLUSTER_MAX), self.file / (1 << priority)) if self.file else 0.0
            reclaimed += self._reclaim_file(scan)
            self.shrink_slab(priority)
            if reclaimed >= SWAP_CLUSTER_MAX:
                break
        return self.hw.direct_reclaim_ms * 1e-3

    def allocate(self, pages: float, direct: Callable[[float], None] | None = None) -> bool:
        """A GFP_KERNEL allocation of `pages` (already counted in `free` by the caller): reclaim directly
        below the min watermark; returns False when the OOM killer must be called.

        `direct(seconds)` is told how long the allocating task stalled in direct reclaim.
        """
        if self.free >= self.wmark_min:
            self.no_progress_passes = 0
            return True
        before = self.free
        stall = self.direct_reclaim()
        if direct is not None:
            direct(stall)
        if self.free >= self.wmark_min:
            self.no_progress_passes = 0
            return True
        if self.free > before + SWAP_CLUSTER_MAX:
            self.no_progress_passes = 0
        else:
            self.no_progress_passes += 1
        # should_reclaim_retry(): keep retrying while reclaim may still help, at most 16 passes without progress.
        return self.free > 0 and (self.file > 0 or self.no_progress_passes <= MAX_RECLAIM_RETRIES)

    def allocate_kernel_page(self) -> None:
        """A GFP_KERNEL page for the 5.11 refill worker: reclaim what is left, else the OOM killer."""
        if not self.allocate(1.0) or self.free < 0:
            self.oom_kill()

    # Background demand ------------------------------------------------------------------------

    def anon_demand(self, t: float) -> float:
        """Unreclaimable pages the rest of the system wants at time t (steady, ramp or storm)."""
        w = self.workload
        pages = w.anon_fraction * self.total
        if w.pressure == "ramp":
            pages += (w.anon_fraction_end - w.anon_fraction) * self.total * min(1.0, t / max(self.seconds, 1e-9))
        elif w.pressure == "storm":
            storm, phase = divmod(t + self.storm_phase, w.storm_every_s)
            if phase < w.storm_ms * 1e-3:
                if storm != self.storm_index:  # a new storm: a new task, nothing of it killed yet
                    self.storm_index, self.storm_killed = storm, 0.0
                # The storm's task allocates steadily over the storm, then exits.
                grown = w.storm_fraction * self.total * phase / (w.storm_ms * 1e-3)
                pages += max(0.0, grown - self.storm_killed)
        return max(0.0, pages - self.oom_killed_anon)

    def oom_kill(self) -> None:
        """out_of_memory(): kill the largest task; its unreclaimable memory comes back.

        The dependent subsystem of the chain reaction is a candidate too (it loses half). With
        nothing killable the kernel panics; the caller sees `oom_events` grow and no memory back.
        """
        self.oom_events += 1
        self.no_progress_passes = 0
        victim = self.anon * self.workload.oom_kill_fraction
        storm = max(0.0, self.anon - self.workload.anon_fraction * self.total + self.oom_killed_anon)
        if self.chain_pages * 0.5 > max(victim, storm):
            self.chain_pages *= 0.5
        elif storm > victim:
            self.storm_killed += storm  # the storm's task is the largest: it dies, the next storm is new
            self.anon -= storm
        elif victim > 0:
            self.oom_killed_anon += victim
            self.anon -= victim

    def kswapd(self, t: float, dt: float, chain_target_pages: float) -> bool:
        """One kswapd round plus the allocations of the rest of the system over `dt`.

        Demand follows the workload's pressure and the chain reaction; below the min watermark the
        allocating tasks reclaim directly (and may end in the OOM killer); below the low watermark
        kswapd runs balance_pgdat() within its reclaim throughput. Returns whether reclaim ran.
        """
        hw = self.hw
        demand_before = self.anon + self.chain_pages
        self.anon = self.anon_demand(t)
        tau = self.workload.chain_tau_ms * 1e-3
        self.chain_pages += (chain_target_pages - self.chain_pages) * (1.0 - math.exp(-dt / tau))
        passes = 0
        allocated = self.anon + self.chain_pages > demand_before + 0.5
        while allocated and self.free < self.wmark_min and passes < 4:
            # The tasks that allocated this demand reclaim directly, then retry or OOM.
            passes += 1
            if not self.allocate(0.0):
                before = self.free
                self.oom_kill()
                if self.free <= before:
                    break
        reclaiming = self.free < self.wmark_low
        if reclaiming:
            budget = hw.reclaim_mib_per_s * (1 << 20) / self.page_size * dt
            for priority in range(DEF_PRIORITY, 0, -1):  # balance_pgdat()
                want = self.wmark_high - self.free
                if want <= 0:
                    break
                scan = min(budget, self.file / (1 << priority) + SWAP_CLUSTER_MAX, want)
                budget -= self._reclaim_file(scan)
                self.shrink_slab(priority)
                if budget <= 0:
                    break
        elif self.free > self.wmark_high and self.file < self.file_target:
            # The page cache grows back as files are read, at a tenth of the reclaim rate.
            rate = 0.1 * hw.reclaim_mib_per_s * (1 << 20) / self.page_size * dt
            self.file += min(rate, self.free - self.wmark_high, self.file_target - self.file)
        kills = 0
        while self.free < 0 and kills < 4:
            # Nothing left to reclaim and a GFP_KERNEL allocation must succeed: the OOM killer.
            before = self.free
            self.oom_kill()
            kills += 1
            if self.free <= before:
                break
        self.note_free()
        return reclaiming


class Kswapd:
    """The kswapd thread plus the rest of the system's allocations, every ~10 ms (jittered)."""

    TICK = 0.01

    def __init__(
        self,
        env,
        alloc: PageAllocator,
        rng: np.random.Generator,
        chain_pages: Callable[[], float],
        after_tick: Callable[[float, float, bool], None],
    ) -> None:
        self.env = env
        self.alloc = alloc
        self.rng = rng
        self.chain_pages = chain_pages  # what the chain reaction's subsystem wants now, in pages
        self.after_tick = after_tick  # (now, dt, reclaiming): accounting and sampling of the model
        env.process(self.run())

    def run(self):
        env = self.env
        last = 0.0
        while True:
            yield env.timeout(self.TICK * self.rng.uniform(0.5, 1.5))
            now = env.now
            dt = now - last
            last = now
            reclaiming = self.alloc.kswapd(now, dt, self.chain_pages())
            self.after_tick(now, dt, reclaiming)
