"""The grace-period engine: rcu_gp_kthread() reduced to what kvfree_rcu() can observe.

Follows kernel/rcu/tree.c: a global sequence of grace periods, a new one started only when some
callback or synchronize_rcu() caller waits (rcu_start_this_gp()), and the polled API:
get_state_synchronize_rcu() returns the number of the first GP that will start after now,
poll_state_synchronize_rcu() tells whether it has completed.

How long a GP lasts comes from two sources:

- CPUs that no kernel loop holds (idle, user space, ordinary kernel paths) report their quiescent
  states as the hardware profile's GP distribution says (it was measured on such machines);
- CPUs a busy kernel loop holds (an rcuscale kfree thread) report per the preemption model: with
  preemptible RCU (``full``), or a tick that sees PREEMPT_COUNT (the v6.15 rcu_flavor_sched_clock_irq()
  change, on PREEMPT_DYNAMIC builds), at a tick; otherwise only at a context switch after the CPU has
  noticed the GP (at its next tick), reported at the tick after that. From jiffies_to_sched_qs after
  the GP start (HZ/10 + nr_cpu_ids/256 jiffies), rcu_all_qs() in cond_resched() reports one without a
  switch; with a callback overload (rcutree.qovld, v5.7) that urgency starts at the first FQS scan.

The GP kthread itself must get a CPU to start and to end a GP: at once where a CPU is idle or lets it
preempt, otherwise at the next cond_resched() of the loop holding its CPU. Left out: the rcu_node
tree, expedited GPs beyond a drawn duration, priority boosting.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np
import simpy

from ._cpu import CpuSet
from ._kernels import KernelBehaviour
from ._profiles import HardwareProfile

QOVLD = 20_000  # rcutree.qovld = 2 * qhimark: callbacks on one CPU that make RCU hammer quiescent states


def fqs_jiffies(hz: int, cpus: int) -> int:
    """jiffies_till_first_fqs (and _next_fqs) by default: RCU_JIFFIES_TILL_FORCE_QS + nr_cpu_ids/256."""
    return 1 + (hz > 250) + (hz > 500) + cpus // 256


def sched_qs_jiffies(hz: int, cpus: int) -> int:
    """jiffies_to_sched_qs: the third FQS scan, bounded below by HZ/10 + nr_cpu_ids/256
    (adjust_jiffies_till_sched_qs())."""
    fqs = fqs_jiffies(hz, cpus)
    return max(3 * fqs, hz // 10 + cpus // 256)


class GraceEngine:
    """Normal grace periods, started on demand; callers register a callback for a GP number."""

    def __init__(
        self,
        env: simpy.Environment,
        hw: HardwareProfile,
        kernel: KernelBehaviour,
        cpus: CpuSet,
        rng: np.random.Generator,
        expedited_rng: np.random.Generator,
    ) -> None:
        self.env = env
        self.hw = hw
        self.cpus = cpus
        self.rng = rng
        self.expedited_rng = expedited_rng
        self.completed = 0
        self.in_progress = False
        self.start_of: list[float] = [0.0]  # start_of[k]: when GP number k began
        self.expedited_count = 0
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._watchers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self._wake: simpy.Event | None = None
        self._mu = math.log(max(1e-9, hw.gp_median_ms - hw.gp_min_ms * 0.5))
        jiffy = 1.0 / hw.hz
        self.first_fqs_s = fqs_jiffies(hw.hz, hw.cpus) * jiffy
        self.sched_qs_s = sched_qs_jiffies(hw.hz, hw.cpus) * jiffy
        # Held CPUs report at a tick (preemptible RCU, or PREEMPT_COUNT seen by the tick from v6.15).
        self.tick_qs = hw.preempt == "full" or (kernel.tick_qs_preempt_count and hw.preempt_dynamic)
        self.qovld = kernel.qovld
        self.overloaded = 0  # CPUs with more than qovld callbacks (rcu_state.cbovld when non-zero)
        self.home = 0  # the GP kthread's CPU when no CPU is idle
        # The current GP: held CPUs that still owe a quiescent state, with the tick they notice it at.
        self._holdouts: dict[int, float] = {}
        self._last_report = 0.0
        self._base_end = 0.0
        self._urgent_at = math.inf
        self._all_qs: simpy.Event | None = None
        self._step_done: simpy.Event | None = None
        env.process(self.rcu_gp_kthread())

    # The polled API and call_rcu() ------------------------------------------------------------

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

    def set_overloaded(self, delta: int) -> None:
        """A CPU crossed rcutree.qovld callbacks (+1 up, -1 down); only releases with qovld react."""
        self.overloaded += delta

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
        ms = self.hw.gp_expedited_median_ms * math.exp(
            self.hw.gp_expedited_sigma * self.expedited_rng.standard_normal()
        )
        return ms * 1e-3

    # Quiescent states of held CPUs ------------------------------------------------------------

    def context_switch(self, cpu: int, now: float) -> None:
        """rcu_note_context_switch() on a CPU a loop holds: its QS, once it has noticed the current GP."""
        notice = self._holdouts.get(cpu)
        if notice is not None and now >= notice - 1e-12:
            self._report(cpu, now)

    def rcu_all_qs(self, cpu: int, now: float) -> None:
        """cond_resched() without a switch: a QS only once RCU asked for one urgently."""
        if now >= self._urgent_at - 1e-12:
            notice = self._holdouts.get(cpu)
            if notice is not None and now >= notice - 1e-12:
                self._report(cpu, now)

    def cpu_idle(self, cpu: int, now: float) -> None:
        """The loop holding `cpu` slept or ended and the CPU went idle: the next FQS scan finds it in
        dyntick-idle (rcu_implicit_dynticks_qs()) and reports its QS."""
        if cpu in self._holdouts:
            start = self.start_of[-1]
            fqs = self.first_fqs_s
            scans = max(0, math.ceil((now - start - fqs) / fqs - 1e-9))
            self._report(cpu, now, start + fqs + scans * fqs)

    def _report(self, cpu: int, now: float, report: float | None = None) -> None:
        del self._holdouts[cpu]
        if report is None:
            report = self.cpus[cpu].tick_after(now)  # rcu_core() reports it from the next tick's softirq
        if report > self._last_report:
            self._last_report = report
        if not self._holdouts and self._all_qs is not None and not self._all_qs.triggered:
            self._all_qs.succeed()

    def _urgent(self, _event: simpy.Event) -> None:
        """RCU asks for help: loops at might_sleep() points (voluntary) report at once."""
        if self.cpus.preempt != "voluntary":
            return
        now = self.env.now
        for cpu in [c for c, notice in self._holdouts.items() if now >= notice - 1e-12]:
            self._report(cpu, now)

    # The kthread ---------------------------------------------------------------------------

    def _duration(self) -> float:
        """Quiescent states of the CPUs no loop holds: the profile's distribution (hammered under overload)."""
        hw = self.hw
        shift = hw.gp_min_ms * 0.5
        ms = shift + math.exp(self._mu + hw.gp_sigma * self.rng.standard_normal())
        ms = min(max(ms, hw.gp_min_ms), hw.gp_max_ms)
        s = ms * 1e-3
        if self.qovld and self.overloaded:
            # rcu_implicit_dynticks_qs() with cbovld: urgent/heavy QS and resched_cpu() at the first FQS scan.
            s = min(s, self.first_fqs_s + 2.0 / self.hw.hz)
        return s

    def kthread_cpu(self) -> int:
        """Where the woken GP kthread runs: an idle CPU if there is one, else its home CPU."""
        cpus = self.cpus
        if not cpus.any_held:
            return self.home
        if not cpus[self.home].held:
            return self.home
        for rq in cpus.queues:
            if not rq.held:
                self.home = rq.cpu
                return rq.cpu
        return self.home

    def _kthread_runs(self, step: Callable[[float], None]):
        """Run `step` when the GP kthread gets its CPU (a generator for the kthread's process)."""
        ran = self.cpus[self.kthread_cpu()].run_kthread(step) if self.cpus.any_held else (step(self.env.now) or True)
        if not ran:
            event = self.env.event()
            self._step_done = event
            yield event

    def _start(self, now: float) -> None:
        """rcu_gp_init(): a new GP; held CPUs owe a QS once they notice it."""
        cpus = self.cpus
        self.in_progress = True
        self.start_of.append(now)
        # The profile's distribution stands for the CPUs no loop holds; with every CPU held, all
        # quiescent states come from the mechanism below.
        every_held = cpus.any_held and all(rq.held for rq in cpus.queues)
        self._base_end = now if every_held else now + self._duration()
        if cpus.any_held and self.tick_qs:
            # A held CPU reporting at its tick: the first tick notices the GP (rcu_core() resets its
            # QS need), the second one's rcu_qs() counts and is reported.
            second = cpus[0].tick_after(now) + cpus[0].jiffy
            if second > self._base_end:
                self._base_end = second
        self._last_report = now
        self._holdouts = {}
        self._urgent_at = math.inf
        if cpus.any_held and not self.tick_qs:
            me = self.kthread_cpu()
            for rq in cpus.queues:
                if rq.held:
                    # The kthread's own CPU noticed the GP in rcu_gp_init(); the others at their next tick.
                    self._holdouts[rq.cpu] = now if rq.cpu == me else rq.tick_after(now)
            if me in self._holdouts:
                self._report(me, now)  # it switches back from the kthread: its QS
            if self._holdouts:
                urgent = self.first_fqs_s if (self.qovld and self.overloaded) else self.sched_qs_s
                self._urgent_at = now + urgent
                self.env.timeout(urgent).callbacks.append(self._urgent)

    def _end(self, now: float) -> None:
        """rcu_gp_cleanup(): the GP completes; callbacks and polled waiters see it; the next GP, if any
        callback waits for one, starts in the same kthread run."""
        self.completed += 1
        self.in_progress = False
        while self._waiters and self._waiters[0][0] <= self.completed:
            _, _, callback = heapq.heappop(self._waiters)
            callback()
        while self._watchers and self._watchers[0][0] <= self.completed:
            _, _, callback = heapq.heappop(self._watchers)
            callback()
        if self._waiters:
            self._start(now)

    def rcu_gp_kthread(self):
        """Wait for demand, start a GP, wait for its quiescent states, end it (and start the next); repeat."""
        env = self.env

        def start(now: float) -> None:
            self._start(now)
            self._wake_step()

        def end(now: float) -> None:
            self._end(now)
            self._wake_step()

        while True:
            if not self.in_progress:
                if not self._waiters:
                    self._wake = env.event()
                    yield self._wake
                    self._wake = None
                    # The sleeping kthread takes a wake-up to run where no loop holds its CPU (else it
                    # waits for the CPU below); requests meanwhile share its GP.
                    rq = self.cpus[self.kthread_cpu()]
                    if not rq.held and rq.wakeup_s > 0:
                        yield env.timeout(rq.wakeup_s)
                yield from self._kthread_runs(start)
            if self._holdouts:
                self._all_qs = env.event()
                yield self._all_qs
                self._all_qs = None
            wait = max(self._base_end, self._last_report) - env.now
            if wait > 0:
                yield env.timeout(wait)
            yield from self._kthread_runs(end)

    def _wake_step(self) -> None:
        event = self._step_done
        if event is not None:
            self._step_done = None
            event.succeed()
