"""The page allocator and memory pressure: watermarks, kswapd, the chain reaction and the OOM killer.

Follows mm/page_alloc.c only as far as kvfree_rcu() can tell the difference: order-0 pages, the
min/low/high watermarks computed as the kernel does (min_free_kbytes = sqrt(16 x lowmem KiB),
clamped; low/high gaps from watermark_scale_factor), and how each flag set behaves near them:
GFP_NOWAIT fails below min without reclaiming; GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC tries one
light direct reclaim and fails rather than OOM; GFP_KERNEL retries and ends in the OOM killer.
Left out: zones, compaction, high orders, swap (anonymous demand is unreclaimable here).
"""

from __future__ import annotations

import math

import numpy as np

from ._profiles import HardwareProfile, WorkloadProfile

MIN_FREE_KBYTES_MAX = 262_144  # mm/page_alloc.c clamps min_free_kbytes to [128, 262144]


def _sigmoid(x: float) -> float:
    if x > 40:
        return 1.0
    if x < -40:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


class PageAllocator:
    """Free pages and who holds the rest; answers allocation attempts by flag set."""

    def __init__(self, hw: HardwareProfile, workload: WorkloadProfile, emergency_reserve_fraction: float,
                 seconds: float, rng: np.random.Generator) -> None:
        self.hw = hw
        self.workload = workload
        self.page_size = hw.page_size
        self.total = hw.memory_mib * (1 << 20) // hw.page_size
        min_kb = min(max(int(math.sqrt(hw.memory_mib * 1024 * 16)), 128), MIN_FREE_KBYTES_MAX)
        self.wmark_min = max(1, min_kb * 1024 // hw.page_size)
        gap = max(self.wmark_min // 4, self.total * hw.watermark_scale_factor // 10_000)
        self.wmark_low = self.wmark_min + gap
        self.wmark_high = self.wmark_low + gap
        self.anon = workload.anon_fraction * self.total
        self.file = min(hw.file_cache_fraction * self.total, max(0.0, self.total * 0.95 - self.anon))
        self.block_pages = 0  # kvfree_rcu block pages, in use or cached
        self.object_bytes = 0.0  # objects allocated by the workload and not yet freed (pending)
        self.chain_pages = 0.0  # the dependent subsystem of the chain reaction
        self.rcuscale_bytes = 0.0  # live rcuscale objects are pending objects, see object_bytes
        self.oom_events = 0
        self.oom_killed_anon = 0.0
        self.emergency = emergency_reserve_fraction * self.total
        self.seconds = seconds
        self.storm_phase = rng.uniform(0.0, workload.storm_every_s)
        self.storm_index = -1.0
        self.storm_killed = 0.0
        self.free_min = self.free

    @property
    def free(self) -> float:
        used = self.anon + self.file + self.block_pages + self.object_bytes / self.page_size + self.chain_pages
        return self.total - used

    def available(self) -> float:
        """si_mem_available(): free plus reclaimable page cache, less the low watermarks."""
        return self.free + self.file - self.wmark_low

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
            reclaimable = min(self.file, 32.0)  # SWAP_CLUSTER_MAX pages per pass
            return _sigmoid((free + reclaimable - self.wmark_min) / width)
        return 1.0  # GFP_KERNEL: retries until it gets a page, through the OOM killer if need be

    def latency(self, gfp: str) -> float:
        """Seconds one allocation attempt takes now (fast path, slow path, direct reclaim)."""
        free = self.free
        fast = self.hw.alloc_fast_us * 1e-6
        if free > self.wmark_low or gfp == "nowait":
            return fast
        if free > self.wmark_min:
            return 2 * fast  # slow path: wake kswapd, retry against the min watermark
        return fast + self.hw.direct_reclaim_ms * 1e-3

    def allocate_kernel_page(self) -> None:
        """A GFP_KERNEL allocation that cannot fail: reclaim what is left, else the OOM killer."""
        if self.free - 1 < self.wmark_min:
            take = min(self.file, self.wmark_min - self.free + 1)
            self.file -= take
            if self.free - 1 < 0:
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
        """One kswapd/reclaim round: follow demand, reclaim page cache below low, OOM if nothing is left.

        Returns whether reclaim ran (free memory was below the low watermark): shrinkers run then.
        """
        hw = self.hw
        self.anon = self.anon_demand(t)
        tau = self.workload.chain_tau_ms * 1e-3
        self.chain_pages += (chain_target_pages - self.chain_pages) * (1.0 - math.exp(-dt / tau))
        if self.free < self.wmark_min:
            # Allocating tasks enter direct reclaim: page cache goes first, at once.
            self.file -= min(self.file, self.wmark_min - self.free)
        reclaiming = self.free < self.wmark_low
        if reclaiming:
            want = self.wmark_high - self.free
            rate = hw.reclaim_mib_per_s * (1 << 20) / self.page_size * dt
            self.file -= min(self.file, want, rate)
        elif self.free > self.wmark_high and self.file < hw.file_cache_fraction * self.total:
            # The page cache grows back as files are read, at a tenth of the reclaim rate.
            rate = 0.1 * hw.reclaim_mib_per_s * (1 << 20) / self.page_size * dt
            self.file += min(rate, self.free - self.wmark_high, hw.file_cache_fraction * self.total - self.file)
        kills = 0
        while self.free < 0 and kills < 4:
            # Nothing left to reclaim and a GFP_KERNEL allocation must succeed: the OOM killer.
            before = self.free
            self.oom_kill()
            kills += 1
            if self.free <= before:
                break
        self.free_min = min(self.free_min, max(0.0, self.free))
        return reclaiming
