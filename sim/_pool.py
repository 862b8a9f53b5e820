"""Where free block pages wait: the per-CPU bkvcache, or the what-if global and hybrid pools.

per-cpu: the kernel's `bkvcache` llist per CPU, capped at N (put_cached_bnode refuses beyond it);
no shared lock. global: one pool of CPUs x N pages behind one lock, the mempool idea of the LKML
thread. hybrid: per-CPU caches of N plus a shared reserve behind a lock. Every touch of the shared
part is one lock acquisition; the wait is an M/D/1 queue on the lock, capped by the number of CPUs
that can spin on it at once, so it grows with the CPU count and with the miss rate.
"""

from __future__ import annotations

import numpy as np

from ._policy import Policy


class PageCache:
    """Free block pages by CPU and, for the what-if layouts, in a shared pool."""

    def __init__(self, policy: Policy, cpus: int, lock_hold_s: float) -> None:
        self.cpus = cpus
        self.layout = policy.layout
        n = policy.n_per_cpu
        self.local_cap = 0 if policy.layout == "global" else n
        self.shared_cap = cpus * n if policy.layout == "global" else policy.shared_reserve_pages
        self._local = [0] * cpus  # a list: touched a page at a time, where numpy scalars are slow
        self.shared = 0
        self.peak_local = 0
        self.lock_hold_s = lock_hold_s
        self.lock_acquisitions = 0
        self.lock_wait_seconds = 0.0
        self._window_acquisitions = 0
        self.lock_rate = 0.0  # acquisitions per second, smoothed over kswapd ticks
        self.contenders = 1

    @property
    def local(self) -> np.ndarray:
        """Cached pages per CPU (a copy)."""
        return np.array(self._local, dtype=np.int64)

    def local_list(self) -> list[int]:
        """Cached pages per CPU (the live list: do not modify)."""
        return self._local

    def local_pages(self, cpu: int) -> int:
        return self._local[cpu]

    @property
    def reserved_pages(self) -> int:
        return self.cpus * self.local_cap + self.shared_cap

    def has_shared(self) -> bool:
        return self.shared_cap > 0

    def available(self, cpu: int) -> int:
        return self._local[cpu] + self.shared

    def room(self, cpu: int) -> int:
        """Pages a refill for this CPU may add (local cap first; the global pool otherwise)."""
        if self.layout == "global":
            return self.shared_cap - self.shared
        return self.local_cap - self._local[cpu]

    def lock_wait(self) -> float:
        """Mean wait for the shared lock now (M/D/1, capped by the CPUs that can queue on it)."""
        rho = self.lock_rate * self.lock_hold_s
        cap = max(0, self.contenders - 1) * self.lock_hold_s
        if rho >= 1.0:
            return cap
        return min(cap, rho * self.lock_hold_s / (2.0 * (1.0 - rho)))

    def contend(self, attempts: int) -> float:
        """Record `attempts` acquisitions of the shared lock; returns the wait of each."""
        if attempts <= 0 or not self.has_shared():
            return 0.0
        wait = self.lock_wait()
        self.lock_acquisitions += attempts
        self._window_acquisitions += attempts
        self.lock_wait_seconds += attempts * wait
        return wait

    def end_window(self, dt: float, contenders: int) -> None:
        """Called by kswapd each tick: update the lock's arrival rate estimate."""
        if dt > 0:
            self.lock_rate = 0.5 * self.lock_rate + 0.5 * self._window_acquisitions / dt
        self._window_acquisitions = 0
        self.contenders = max(1, contenders)

    def take(self, cpu: int, want: int) -> tuple[int, int]:
        """get_cached_bnode() up to `want` times; returns (pages, shared-lock acquisitions)."""
        local = self._local
        got = min(want, local[cpu])
        local[cpu] -= got
        acquisitions = 0
        if got < want and self.shared > 0:
            extra = min(want - got, self.shared)
            self.shared -= extra
            got += extra
            acquisitions = extra
        return got, acquisitions

    def put(self, cpu: int, pages: int) -> tuple[int, int]:
        """put_cached_bnode() for `pages` pages; returns (kept, shared-lock acquisitions). The rest are freed."""
        local = self._local
        keep = min(pages, self.local_cap - local[cpu])
        local[cpu] += keep
        if keep and local[cpu] > self.peak_local:
            self.peak_local = local[cpu]
        acquisitions = 0
        if keep < pages and self.shared < self.shared_cap:
            extra = min(pages - keep, self.shared_cap - self.shared)
            self.shared += extra
            keep += extra
            acquisitions = extra
        return keep, acquisitions

    def fill(self, cpu: int, pages: int) -> None:
        """Add freshly allocated pages (refill or boot), local first; the caller respects `room`."""
        if self.layout == "global":
            self.shared += pages
        else:
            self._local[cpu] += pages
            self.peak_local = max(self.peak_local, self._local[cpu])

    def drain(self, cpu: int) -> int:
        """drain_page_cache(): free this CPU's cache (and, once, the shared pool); returns pages freed."""
        freed = self._local[cpu]
        self._local[cpu] = 0
        if cpu == 0 and self.shared:
            freed += self.shared
            self.shared = 0
        return freed

    def held(self) -> int:
        return sum(self._local) + self.shared
