"""The grace-period engine: rcu_gp_kthread() reduced to what kvfree_rcu() can observe.

Follows kernel/rcu/tree.c: a global sequence of grace periods, a new one started only when some
callback or synchronize_rcu() caller waits and none is in progress (rcu_start_this_gp), and the
polled API: get_state_synchronize_rcu() returns the number of the first GP that will start after
now, poll_state_synchronize_rcu() tells whether it has completed. Left out: the rcu_node tree,
quiescent-state reporting and FQS scans, which only shape the duration distribution taken from
the hardware profile.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np
import simpy

from ._profiles import HardwareProfile

# rcutree.qovld = 2 * qhimark: a CPU with this many callbacks makes RCU force quiescent states
# at once, which shortens grace periods (modelled as halving them).
QOVLD = 20_000
OVERLOAD_FACTOR = 0.5


class GraceEngine:
    """Normal grace periods, started on demand; callers register a callback for a GP number."""

    def __init__(self, env: simpy.Environment, hw: HardwareProfile, rng: np.random.Generator,
                 expedited_rng: np.random.Generator) -> None:
        self.env = env
        self.hw = hw
        self.rng = rng
        self.expedited_rng = expedited_rng
        self.completed = 0
        self.in_progress = False
        self.start_of: list[float] = [0.0]  # start_of[k]: when GP number k began
        self.overloaded = False
        self.expedited_count = 0
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._watchers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self._wake: simpy.Event | None = None
        self._mu = math.log(max(1e-9, hw.gp_median_ms - hw.gp_min_ms * 0.5))
        # PREEMPT_NONE: CPUs running a kernel loop report a quiescent state only at cond_resched().
        self._held: dict[int, int] = {}
        self._need_qs: set[int] = set()
        self._qs_event: simpy.Event | None = None
        env.process(self.rcu_gp_kthread())

    def snap(self) -> int:
        """get_state_synchronize_rcu(): the first GP number that starts after now."""
        return self.completed + (2 if self.in_progress else 1)

    def done(self, snap: int) -> bool:
        """poll_state_synchronize_rcu()."""
        return self.completed >= snap

    def request(self, callback: Callable[[], None]) -> int:
        """call_rcu(): run `callback` once a GP that starts after now has completed; returns its number."""
        target = self.snap()
        heapq.heappush(self._waiters, (target, self._seq, callback))
        self._seq += 1
        if not self.in_progress and self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return target

    def when_done(self, snap: int, callback: Callable[[], None]) -> None:
        """Run `callback` once GP number `snap` has completed, without asking for a GP (polled API)."""
        if self.done(snap):
            callback()
            return
        heapq.heappush(self._watchers, (snap, self._seq, callback))
        self._seq += 1

    def hold(self, cpu: int) -> None:
        """A non-preemptible kernel loop starts on `cpu`: GPs that begin now wait for its quiescent state."""
        self._held[cpu] = self._held.get(cpu, 0) + 1

    def release(self, cpu: int) -> None:
        """The loop on `cpu` ended or slept: the CPU is quiescent (idle or in schedule())."""
        self._held[cpu] -= 1
        if not self._held[cpu]:
            del self._held[cpu]
        self.quiescent(cpu)

    def quiescent(self, cpu: int) -> None:
        """rcu_note_context_switch() on `cpu` (cond_resched() in a PREEMPT_NONE kernel loop)."""
        self._need_qs.discard(cpu)
        if not self._need_qs and self._qs_event is not None and not self._qs_event.triggered:
            self._qs_event.succeed()

    def remaining(self) -> float:
        """Expected wait for synchronize_rcu() issued now: the rest of the current GP plus one more."""
        median = self.hw.gp_median_ms * 1e-3
        if not self.in_progress:
            return median
        elapsed = self.env.now - self.start_of[-1]
        return max(0.0, median - elapsed) + median

    def expedited_duration(self) -> float:
        """One expedited GP (synchronize_rcu_expedited()), drawn from the hardware profile."""
        self.expedited_count += 1
        ms = self.hw.gp_expedited_median_ms * math.exp(self.hw.gp_expedited_sigma * self.expedited_rng.standard_normal())
        return ms * 1e-3

    def _duration(self) -> float:
        hw = self.hw
        shift = hw.gp_min_ms * 0.5
        ms = shift + math.exp(self._mu + hw.gp_sigma * self.rng.standard_normal())
        ms = min(max(ms, hw.gp_min_ms), hw.gp_max_ms)
        if self.overloaded:
            ms = max(hw.gp_min_ms * OVERLOAD_FACTOR, ms * OVERLOAD_FACTOR)
        return ms * 1e-3

    def rcu_gp_kthread(self):
        """Wait for demand, run one GP, wake every waiter whose GP number has completed; repeat."""
        env = self.env
        while True:
            if not self._waiters:
                self._wake = env.event()
                yield self._wake
                self._wake = None
            self.in_progress = True
            self.start_of.append(env.now)
            self._need_qs = set(self._held)
            yield env.timeout(self._duration())
            while self._need_qs:  # a CPU still inside its kernel loop holds the GP up
                self._qs_event = env.event()
                yield self._qs_event
            self._qs_event = None
            self.completed += 1
            self.in_progress = False
            while self._waiters and self._waiters[0][0] <= self.completed:
                _, _, callback = heapq.heappop(self._waiters)
                callback()
            while self._watchers and self._watchers[0][0] <= self.completed:
                _, _, callback = heapq.heappop(self._watchers)
                callback()
