"""What one simulated run measured (DESIGN.md §2.4), and the latency histogram behind its quantiles."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

# Log-spaced latency bins: 20 per decade from 1 ns to 1000 s.
_BINS_PER_DECADE = 20
_LO_NS = 1.0
_NBINS = 12 * _BINS_PER_DECADE + 1


class LatencyHistogram:
    """Counts of call latencies in log bins; many calls at one latency are one `add`."""

    def __init__(self) -> None:
        self._counts = [0] * _NBINS  # a list: one bump per booking is cheaper than numpy indexing
        self._bin: dict[float, int] = {}  # latency -> bin (most bookings repeat the fast-path cost)
        self.max_ns = 0.0

    @property
    def counts(self) -> np.ndarray:
        return np.array(self._counts, dtype=np.int64)

    def add(self, latency_ns: float, count: int = 1) -> None:
        if count <= 0:
            return
        i = self._bin.get(latency_ns)
        if i is None:
            i = 0 if latency_ns <= _LO_NS else min(_NBINS - 1, int(math.log10(latency_ns / _LO_NS) * _BINS_PER_DECADE))
            if len(self._bin) < 4096:
                self._bin[latency_ns] = i
        self._counts[i] += count
        if latency_ns > self.max_ns:
            self.max_ns = latency_ns

    def quantile_us(self, q: float) -> float:
        counts = self.counts
        total = int(counts.sum())
        if total == 0:
            return 0.0
        rank = q * total
        cum = np.cumsum(counts)
        i = int(np.searchsorted(cum, rank, side="left"))
        before = cum[i - 1] if i else 0
        frac = (rank - before) / max(1, counts[i])
        ns = _LO_NS * 10 ** ((i + min(1.0, max(0.0, frac))) / _BINS_PER_DECADE)
        return float(min(ns, self.max_ns)) / 1000.0


@dataclass(frozen=True)
class Metrics:
    """Every figure of one run. Times are simulated unless named wall_*.

    Invariants (asserted by the test suite): calls == objects_freed + objects_pending_end;
    safety_violations == 0; cache_pages_peak_per_cpu <= N; pages_allocated == pages_freed +
    pages_held_end; batches_in_flight_peak <= 2; monitor_timer_lengthened == 0.
    """

    calls: int
    calls_two_arg: int
    calls_headless: int
    objects_freed: int
    objects_pending_end: int
    bytes_pending_mean: float
    bytes_pending_peak: float
    grace_periods: int
    batches: int
    records_per_block_mean: float
    blocks_from_cache: int
    page_alloc_attempts: int
    page_alloc_failures: int
    head_fallbacks: int
    sync_fallbacks: int
    sync_stall_seconds: float
    call_latency_p50_us: float
    call_latency_p99_us: float
    call_latency_max_us: float
    lock_wait_seconds: float
    cache_pages_reserved: int
    cache_bytes_reserved: int
    cache_pages_stranded_mean: float
    free_pages_min: int
    oom_events: int
    shrinker_scans: int
    sim_seconds: float
    events: int
    wall_seconds: float
    # Checks and context beyond the design's list.
    records_per_block: int
    mean_residency_seconds: float
    cache_pages_peak_per_cpu: int
    pages_allocated: int
    pages_freed: int
    pages_held_end: int
    batches_in_flight_peak: int
    monitor_timer_lengthened: int
    safety_violations: int
    refill_allocations: int
    drained_ready_blocks: int
    what_if: bool
    what_if_reasons: tuple[str, ...]
    # The figures the kernel's rcuscale kfree test prints (None unless the workload is rcuscale).
    rcuscale_total_time_ns: int | None = None
    rcuscale_batches: int | None = None
    rcuscale_footprint_mb: int | None = None
    rcuscale_enomem: bool | None = None
    # CPU seconds freeing rcu_head-list objects one by one took beyond what kfree_bulk() would have.
    head_extra_cpu_seconds: float = 0.0
    # CPU seconds of kernel work (reclaim, refill, callbacks) the CPUs ran.
    kernel_work_cpu_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["what_if_reasons"] = list(self.what_if_reasons)
        return out

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
