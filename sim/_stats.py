"""What a run counts: the mechanisms' counters and the ledger of objects waiting to be freed."""

from __future__ import annotations

import math
from collections import deque


class Stats:
    """Counters the mechanisms bump; turned into `Metrics` at the end."""

    def __init__(self) -> None:
        self.calls = self.calls_two_arg = self.calls_headless = 0
        self.batches = self.blocks_detached = self.records_detached = 0
        self.blocks_from_cache = self.page_alloc_attempts = self.page_alloc_failures = 0
        self.head_fallbacks = self.sync_fallbacks = 0
        self.sync_stall_seconds = 0.0
        self.pages_allocated = self.pages_freed = self.refill_allocations = 0
        self.drained_ready_blocks = 0
        self.batches_in_flight_peak = 0
        self.monitor_timer_lengthened = 0
        self.shrinker_scans = 0
        self.head_extra_cpu_seconds = 0.0


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

    def absorb(self, other: Objs) -> None:
        if other.count:
            self.count += other.count
            self.bytes += other.bytes
            if other.newest > self.newest:  # (a conditional, not max(): this runs on every booking)
                self.newest = other.newest
            self.arrival_sum += other.arrival_sum


class Ledger:
    """Every object between its kvfree_rcu() call and its free: pending bytes over time, residency and
    the safety invariant (no object is freed before a grace period that began after its call)."""

    def __init__(self, gp_start_of: list[float]) -> None:
        self.gp_start_of = gp_start_of  # start_of[k]: when GP number k began (the engine's list)
        self.bytes_pending = 0.0
        self.bytes_peak = 0.0
        self.objects_freed = 0
        self.residency_sum = 0.0
        self.safety_violations = 0
        self.blocked_callers = 0  # headless callers inside the synchronize_rcu() fallback
        self._integral = 0.0
        self._last_change = 0.0
        self._history: deque[tuple[float, float]] = deque()  # (time, pending bytes after a change)
        self.track_spans = False  # keep that history (kernel loops book spread chunks; see add_pending)

    def integrate(self, now: float) -> None:
        if now > self._last_change:
            self._integral += self.bytes_pending * (now - self._last_change)
            self._last_change = now

    def mean(self, duration: float) -> float:
        return self._integral / duration

    def add_pending(self, nbytes: float, now: float, arrival_mid: float, span_peak: bool = False) -> None:
        """Objects entered the path; they have been waiting since about `arrival_mid`.

        `span_peak`: they arrived spread over [2 arrival_mid - now, now] while frees may have lowered
        the pending set (a kernel loop's chunk): the peak then accounts for the highest level in
        that span (open-loop bookings, whose spans are long, leave it out)."""
        if nbytes <= 0:
            return
        self.integrate(now)
        high = 0.0
        if span_peak and arrival_mid < now:
            # Objects booked together arrived over [2 mid - now, now]; frees may have lowered the
            # pending set meanwhile: its highest level in that span plus these bounds the span's peak.
            start = 2.0 * arrival_mid - now
            history = self._history
            level = self.bytes_pending
            for i in range(len(history) - 1, -1, -1):
                t, value = history[i]
                if value > level:
                    level = value
                if t < start:
                    break
            high = level + nbytes
        self.bytes_pending += nbytes
        if self.track_spans:
            self._note(now)
        self._integral += nbytes * max(0.0, now - arrival_mid)
        peak = self.bytes_pending if self.bytes_pending > high else high
        if peak > self.bytes_peak:
            self.bytes_peak = peak

    def _note(self, now: float) -> None:
        history = self._history
        history.append((now, self.bytes_pending))
        if len(history) > 256:
            history.popleft()

    def note_peak(self, nbytes: float) -> None:
        """Bytes about to be booked count toward the peak now (see KfreeRcuCpu._reserve_for_unbooked)."""
        if self.bytes_pending + nbytes > self.bytes_peak:
            self.bytes_peak = self.bytes_pending + nbytes

    def free_objects(self, objs: Objs, now: float) -> None:
        """Objects reached kfree()/kvfree(): memory comes back, residency is recorded."""
        if not objs.count:
            return
        self.integrate(now)
        self.bytes_pending = max(0.0, self.bytes_pending - objs.bytes)
        if self.track_spans:
            self._note(now)
        self.objects_freed += objs.count
        self.residency_sum += objs.count * now - objs.arrival_sum

    def check_safe(self, newest_call: float, gp_number: int) -> None:
        """The safety invariant: the GP that frees an object began after the object's call."""
        if self.gp_start_of[gp_number] < newest_call - 1e-12:
            self.safety_violations += 1
