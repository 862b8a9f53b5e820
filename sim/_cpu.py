"""The CPUs as kernel work sees them: who holds each one, when queued work runs, whose time it takes.

Kernel work items (the kvfree_rcu monitor, kfree_rcu_work(), the page-cache refill, the GP kthread,
NOCB rcuog/rcuo kthreads) run on a CPU's worker pool one after another, as a per-CPU kworker pool
runs CPU-bound works (kernel/workqueue.c: one running worker per pool while it does not sleep).
When a busy kernel loop (an rcuscale kfree thread) holds the CPU, the preemption model decides when
the queued work gets the CPU (kernel/sched/core.c, include/linux/kernel.h):

- ``none`` (CONFIG_PREEMPT_NONE): only at the loop's explicit cond_resched();
- ``voluntary`` (CONFIG_PREEMPT_VOLUNTARY): at the next might_sleep(), which every GFP_KERNEL
  kmalloc() of the loop passes, so at once in this model;
- ``full`` (CONFIG_PREEMPT): at once.

The loop loses the CPU time the work takes. Every switch from the loop to queued work and back is a
context switch, the quiescent state of a non-preemptible RCU; the GP engine is told of each. Works of
one worker pool that run back to back are not: the pool's kworker takes the next item of its worklist
without sleeping (worker_thread() -> process_one_work()), so e.g. kfree_rcu_monitor() and the
kfree_rcu_work() queued behind it on system_wq share one switch, while the refill on
system_highpri_wq (another pool, another kworker) or a kthread (rcuo, the GP kthread) take their own.
Left out: priorities between work items, load balancing, hrtimer/softirq accounting beyond the
per-callback cost, and the workqueue watchdog's CPU-intensive marking (v6.5).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import simpy

SHORT_WORK_S = 50e-6  # work shorter than this completes at its start: not worth an event of its own

Work = Callable[[float], float]
"""A work item: called with the time it starts, returns the CPU seconds it takes (it schedules its own
completion if something must happen at the end)."""

# Which thread runs a work item: a worker pool's kworker (kernel/workqueue.c), or None for a kthread of
# its own (rcuo, rcuog, the GP kthread), which is always a context switch away.
EVENTS = "events"  # system_wq: the CPU's bound pool
EVENTS_HIGHPRI = "events_highpri"  # system_highpri_wq: the CPU's bound high-priority pool
EVENTS_UNBOUND = "events_unbound"  # system_unbound_wq, rcu_reclaim_wq: the unbound pool's worker here


def kworker_protection(cpus: int, eevdf: bool) -> tuple[float, float]:
    """How long a running kworker keeps its CPU from a woken nice-0 kthread (the GP kthread, rcuog):
    (preempt at the wake-up once the kworker has run this long, else at the first tick after it has
    run this long). The scheduler's tunables scale with 1 + ilog2(min(cpus, 8))
    (SCHED_TUNABLESCALING_LOG, kernel/sched/fair.c).

    CFS (up to 6.5): both sleepers are placed at min_vruntime - sched_latency/2
    (GENTLE_FAIR_SLEEPERS), so the kworker leads the kthread by its own run time r, and
    check_preempt_wakeup() preempts only if r > sched_wakeup_granularity (1 ms); otherwise
    check_preempt_tick() does once r exceeds the kworker's slice, half of sched_latency (6 ms)
    between the two (the nice-19 rcuscale thread weighs nothing).
    EEVDF (v6.6, 147f3efaa241): the kworker runs to the end of its slice, sched_base_slice
    (0.75 ms), RUN_TO_PARITY; the kthread then has the earlier deadline.
    """
    factor = 1 + (min(max(cpus, 1), 8).bit_length() - 1)
    if eevdf:
        base_slice = 0.75e-3 * factor
        return base_slice, base_slice
    return 1e-3 * factor, 6e-3 * factor / 2


class RunQueue:
    """One CPU: the kernel loop holding it (if any), its worker pool, and its scheduler tick."""

    __slots__ = (
        "env",
        "cpu",
        "preempt",
        "jiffy",
        "tick_phase",
        "wakeup_s",
        "held",
        "at_point",
        "busy_until",
        "waiting",
        "charged",
        "work_seconds",
        "_pumping",
        "_drained",
        "on_switch",
        "on_idle",
        "switches",
        "at",
        "switch_s",
        "incoming",
        "_thread",
        "_thread_until",
        "_thread_since",
        "wakeup_gran",
        "tick_slice",
    )

    def __init__(
        self,
        env: simpy.Environment,
        cpu: int,
        preempt: str,
        hz: int,
        wakeup_s: float,
        on_switch: Callable[[int, float], None],
    ) -> None:
        self.env = env
        self.cpu = cpu
        self.preempt = preempt
        self.jiffy = 1.0 / hz
        self.tick_phase = 0.0  # scheduler ticks of all CPUs are aligned (sched_skew_tick=0)
        self.wakeup_s = wakeup_s
        self.held = 0  # kernel loops holding this CPU (rcuscale threads inside their loop)
        self.at_point = False  # the loop is at cond_resched() and lets queued work run
        self.busy_until = 0.0  # the work started here runs until then
        self.waiting: deque[tuple[Work, str | None]] = deque()  # (work, its pool) ready, waiting for the CPU
        self.charged = 0.0  # CPU seconds of work a holding loop has not yet paid for (voluntary, full)
        self.incoming = 0  # work on its way here (a wake-up in flight): the CPU is no longer idle
        self.work_seconds = 0.0  # all CPU seconds of kernel work run here
        self._pumping = False
        self._drained: simpy.Event | None = None
        self.on_switch = on_switch
        self.switch_s = 0.0  # CPU time of one context switch, paid by the loop holding the CPU
        self.on_idle: Callable[[int, float], None] | None = None  # the loop left and the CPU went idle
        self.switches = 0
        self.at: Callable[[float, Callable[[], None]], None] | None = None  # shared instants (CpuSet.at)
        self._thread: str | None = None  # the pool whose kworker ran the last work here (None: the loop)
        self._thread_until = -math.inf  # when that work ended
        self._thread_since = 0.0  # when that pool's kworker took the CPU
        self.wakeup_gran, self.tick_slice = kworker_protection(1, False)  # set by CpuSet

    # Time ------------------------------------------------------------------------------------

    def next_tick(self, t: float) -> float:
        """The first scheduler tick on this CPU at or after t (softirq work, QS notice and report)."""
        jiffy = self.jiffy
        k = math.ceil((t - self.tick_phase) / jiffy - 1e-9)
        return self.tick_phase + k * jiffy

    def tick_after(self, t: float) -> float:
        """The first scheduler tick strictly after t."""
        tick = self.next_tick(t)
        return tick + self.jiffy if tick <= t + 1e-12 else tick

    # Running work ----------------------------------------------------------------------------

    def can_run_now(self) -> bool:
        """Queued work gets the CPU now: no loop holds it, the loop is at cond_resched(), or it is preemptible."""
        return not self.held or self.at_point or self.preempt != "none"

    def idle(self) -> bool:
        """Nothing holds the CPU, its pool has nothing running and nothing is on its way: an unbound
        worker would be placed here."""
        return not self.held and self.busy_until <= self.env.now and not self.waiting and not self.incoming

    def claim(self) -> None:
        """Something was just placed here and will arrive after a wake-up (see `submit(claimed=True)`)."""
        self.incoming += 1

    def submit(
        self,
        work: Work,
        delay: float = 0.0,
        wake: bool = False,
        claimed: bool = False,
        pool: str | None = EVENTS,
    ) -> None:
        """Queue work that is ready after `delay` (plus a kthread wake-up when `wake` and the CPU is not held).

        `claimed`: the CPU was claimed for it already (`claim()`). `pool`: the worker pool that runs
        it (EVENTS...), None for a kthread of its own."""
        if wake and not self.held:
            delay += self.wakeup_s
        if delay > 0.0:
            assert self.at is not None
            if not claimed:
                self.incoming += 1
            self.at(self.env.now + delay, lambda: self._arrive(work, pool))
        else:
            if claimed:
                self.incoming -= 1
            self._ready(work, pool)

    def _arrive(self, work: Work, pool: str | None) -> None:
        self.incoming -= 1
        self._ready(work, pool)

    def _start_work(self, now: float, pool: str | None) -> None:
        """A work item of `pool` starts here: a context switch unless the same pool's kworker is still
        on the CPU, straight from its previous item."""
        from_loop = now > self._thread_until + 1e-12  # no work item ran up to now
        if pool is None or pool != self._thread or from_loop:
            if self.held:
                self.switch(now)
                if from_loop:
                    self._switch_back()
            self._thread_since = now
        self._thread = pool

    def _switch_back(self) -> None:
        """Work that preempted a loop mid-chunk (PREEMPT_VOLUNTARY, PREEMPT) gives the CPU back when it
        sleeps again: a second switch, which the loop pays for. At cond_resched() the loop counts its own."""
        if self.held and not self.at_point:
            self.switches += 1
            self.charged += self.switch_s

    def run_kthread(self, step: Callable[[float], None]) -> bool:
        """A woken kthread (the GP kthread, rcuog) takes the CPU for a moment: where the CPU lets queued
        work run, at once, or after the running kworker's protection (`kworker_protection`: then at
        the kworker's next cond_resched(), or when its item ends); else first at the loop's next
        cond_resched(). Returns True if `step` ran now."""
        now = self.env.now
        if self.can_run_now():
            at = self._kthread_gets_cpu(now)
            if at <= now:
                self._preempt_for(step, now)
                return True
        else:
            at = math.inf
        done = False

        def work(t: float) -> float:
            nonlocal done
            if not done:
                done = True
                step(t)
            return 0.0

        entry = (work, None)
        self.waiting.appendleft(entry)  # it slept the longest: the scheduler picks it first
        if at < math.inf:
            assert self.at is not None

            def preempt() -> None:  # the scheduler takes the CPU from the kworker mid-item
                nonlocal done
                if done or not self.can_run_now():
                    return
                done = True
                self.waiting.remove(entry)
                self._preempt_for(step, self.env.now)

            self.at(at, preempt)
        return False

    def _kthread_gets_cpu(self, now: float) -> float:
        """When a kthread woken now gets this CPU, which lets queued work run: at once, unless a
        kworker runs an item here and the scheduler lets it go on (`kworker_protection`)."""
        if self._thread is None or self.busy_until <= now + 1e-12:
            return now
        ran = now - self._thread_since
        if ran > self.wakeup_gran:
            return now
        return min(self.busy_until, self.tick_after(self._thread_since + self.tick_slice - 1e-12))

    def _preempt_for(self, step: Callable[[float], None], now: float) -> None:
        pool = self._thread
        if self.held:
            self.switch(now)
            self._switch_back()
        step(now)
        self._thread = pool  # a preempted kworker resumes its item (switching back adds no QS now)

    def run_if_free(self, work: Work, pool: str | None = EVENTS) -> bool:
        """Run `work` now if the CPU lets queued work run and nothing runs or waits here; returns whether it ran."""
        if self.busy_until <= self.env.now + 1e-12 and not self.waiting and self.can_run_now():
            self._run(work, pool)
            return True
        return False

    def _ready(self, work: Work, pool: str | None) -> None:
        if not self._pumping and self.run_if_free(work, pool):
            return  # an idle pool: the common case, without the queue
        self.waiting.append((work, pool))
        if not self._pumping and self.can_run_now():
            self._pump()

    def _run(self, work: Work, pool: str | None) -> None:
        now = self.env.now
        self._pumping = True  # work this item queues here waits for it (see `_pump`)
        self._execute(work, pool, now)
        self._pumping = False
        if self.waiting:
            self._pump()  # what it queued
            return
        drained = self._drained  # a loop at cond_resched() waits for the CPU to drain
        if drained is not None:
            if self.busy_until <= now + 1e-12:
                self._drained = None
                drained.succeed()
            else:
                self._pumping = True
                self.env.timeout(self.busy_until - now).callbacks.append(self._pump)

    def _execute(self, work: Work, pool: str | None, now: float) -> None:
        """Start one work item now: the CPU is its until its cost has run."""
        self._start_work(now, pool)  # a context switch, unless this pool's kworker goes on
        cost = work(now)
        self._thread_until = now + max(0.0, cost)  # its kworker is on the CPU till then
        if cost > 0.0:
            self.busy_until = now + cost
            self.work_seconds += cost
            if self.held and not self.at_point:
                self.charged += cost  # preemptible loop: it pays for the time at its next chunk

    def _pump(self, _event: simpy.Event | None = None) -> None:
        """Run waiting work one item after another while the CPU lets it run.

        While an item runs, `_pumping` stays set: work it queues here (the rcuo kthread queuing
        kfree_rcu_work(), the monitor kicking the refill on a held CPU) waits for the item's end.
        Before, it found the CPU free (the item's cost is known only when it returns) and started
        at the same instant, beside it."""
        self._pumping = True
        env = self.env
        waiting = self.waiting
        while waiting and (not self.held or self.at_point or self.preempt != "none"):
            now = env.now
            if self.busy_until > now + 1e-12:
                env.timeout(self.busy_until - now).callbacks.append(self._pump)
                return
            work, pool = waiting.popleft()
            self._execute(work, pool, now)
        self._pumping = False
        drained = self._drained
        if drained is not None and not waiting:
            if self.busy_until <= env.now + 1e-12:
                self._drained = None
                drained.succeed()
            else:  # the last item still runs: the loop resumes when it ends
                self._pumping = True
                env.timeout(self.busy_until - env.now).callbacks.append(self._pump)

    def softirq(self, cost: float) -> None:
        """Softirq work on this CPU: it runs at irq exit whatever holds the CPU, which loses the time."""
        self.work_seconds += cost
        if self.held and not self.at_point:
            self.charged += cost

    def switch(self, now: float) -> None:
        """A context switch on this CPU (rcu_note_context_switch()); the loop holding it pays for it."""
        self.switches += 1
        if self.held:
            self.charged += self.switch_s
        self._thread = None
        self.on_switch(self.cpu, now)

    # The holding loop ------------------------------------------------------------------------

    def hold(self) -> None:
        """A kernel loop starts occupying the CPU."""
        self.held += 1

    def release(self) -> None:
        """The loop sleeps or ends: the CPU is free for queued work (a context switch)."""
        self.held -= 1
        self.switch(self.env.now)
        if not self.held:
            if self.on_idle is not None:
                # Idle, or idle once the queued work is done: either way no loop holds it any more
                # and the next FQS scan finds its QS (a switch to the work would be one too).
                self.on_idle(self.cpu, self.env.now)
            if self.waiting and not self._pumping:
                self._pump()

    def take_charge(self) -> float:
        """CPU seconds of work the (preemptible) loop must now pay for; resets the account."""
        charged, self.charged = self.charged, 0.0
        return charged

    def cond_resched(self):
        """cond_resched() in a PREEMPT_NONE loop: run everything queued here, then return to the loop.

        A generator for the loop's process. Switching to the queued work and back are context
        switches; with nothing queued there is no switch (rcu_all_qs() may still report an urgent QS,
        which the GP engine handles through `on_switch` only when a switch happens).
        """
        env = self.env
        if not self.waiting and self.busy_until <= env.now + 1e-12:
            return
        self.at_point = True
        self._drained = drained = env.event()
        if not self._pumping:
            self._pump()
        if not drained.triggered:
            yield drained
        self.at_point = False
        self.switch(env.now)  # back to the loop


class CpuSet:
    """All CPUs; picks where unbound work runs."""

    def __init__(
        self,
        env: simpy.Environment,
        cpus: int,
        preempt: str,
        hz: int,
        wakeup_s: float,
        on_switch: Callable[[int, float], None],
        switch_s: float = 0.0,
        eevdf: bool = False,
    ) -> None:
        self.env = env
        self.queues = [RunQueue(env, cpu, preempt, hz, wakeup_s, on_switch) for cpu in range(cpus)]
        protection = kworker_protection(cpus, eevdf)
        for rq in self.queues:
            rq.switch_s = switch_s
            rq.wakeup_gran, rq.tick_slice = protection
        self.preempt = preempt
        self.any_held = False  # some kernel loop holds a CPU (the rcuscale test)
        self._due: dict[float, list[Callable[[], None]]] = {}
        for rq in self.queues:
            rq.at = self.at

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Run `callback` at `when`. Callbacks due at one instant share one event and run in the order
        they were queued (the batches one grace period ends, the callbacks of one tick)."""
        now = self.env.now
        if when < now:
            when = now
        due = self._due.get(when)
        if due is None:
            due = self._due[when] = []
            self.env.timeout(when - now).callbacks.append(lambda _e: self._run_due(when))
        due.append(callback)

    def _run_due(self, when: float) -> None:
        for callback in self._due.pop(when):
            callback()

    def __getitem__(self, cpu: int) -> RunQueue:
        return self.queues[cpu]

    def __len__(self) -> int:
        return len(self.queues)

    def unbound_target(self, local: int) -> int:
        """The CPU an unbound workqueue's worker runs on: an idle CPU if any (the scheduler's
        select_idle_sibling()), the local one otherwise."""
        if not self.any_held:
            return local
        queues = self.queues
        if queues[local].idle():
            return local
        for rq in queues:
            if rq.idle():
                return rq.cpu
        return local
