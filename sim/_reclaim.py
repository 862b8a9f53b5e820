"""From a grace period's end to the frees: callback invocation and the workqueues kfree_rcu_work() runs on.

Follows kernel/rcu/tree.c, tree_nocb.h and kernel/workqueue.c:

- queue_rcu_work() is call_rcu(): the callback sits on the queuing CPU's list. After the GP, a
  CPU that is not offloaded notices the end at its next scheduler tick (ticks of all CPUs are aligned,
  sched_skew_tick=0) and invokes its callbacks in RCU_SOFTIRQ, whatever runs there; an offloaded
  (NOCB) CPU's callbacks wait for its group's rcuog kthread, woken by the GP kthread, to wake the
  rcuo kthread that invokes them (one rcuog per `nocb_gp_stride()` CPUs). Those kthreads run on the
  housekeeping CPUs when there are any, else on the offloaded CPUs themselves, and need a CPU like
  any kthread (a PREEMPT_NONE loop holding it delays them to its cond_resched()).
- rcu_work_rcufn() queues kfree_rcu_work() where the callback ran: on system_wq (per-CPU pools, up to
  6.11) the CPU that invoked the callback; on system_unbound_wq (6.12) or rcu_reclaim_wq (6.14) a
  worker the scheduler places on an idle CPU if there is one.
- Callbacks that free objects one by one (5.5, rcuscale's kfree_by_call_rcu) are limited per
  rcu_do_batch() in softirq to rcutree.rcu_resched_ns (3 ms) of work; the rest waits a tick (v5.7).
- rcutree.qovld (v5.7): a CPU with more than 20000 callbacks makes RCU hammer quiescent states.
- synchronize_rcu() is a callback too (wakeme_after_rcu()): the caller wakes when it is invoked.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import simpy

from ._cpu import EVENTS, EVENTS_UNBOUND, CpuSet
from ._gp import QOVLD, GraceEngine
from ._kernels import KernelBehaviour
from ._profiles import HardwareProfile

RCU_RESCHED_NS = 3_000_000  # rcutree.rcu_resched_ns


def nocb_gp_stride(cpus: int) -> int:
    """CPUs per rcuog kthread: rcu_nocb_gp_stride's default, nr_cpu_ids / int_sqrt(nr_cpu_ids)
    (rcu_organize_nocb_kthreads()); one rcuog for both CPUs of a 2-CPU machine."""
    return max(1, cpus // math.isqrt(cpus))


class ReclaimPipeline:
    """Invokes RCU callbacks where and when the kernel would, and queues the reclaim work they start."""

    def __init__(
        self, env: simpy.Environment, hw: HardwareProfile, kernel: KernelBehaviour, gp: GraceEngine, cpus: CpuSet
    ) -> None:
        self.env = env
        self.gp = gp
        self.cpus = cpus
        self.nocb_cpus = hw.nocb_cpus  # CPUs 0 .. nocb_cpus-1 are offloaded (rcu_nocbs=)
        self.housekeeping = list(range(hw.nocb_cpus, hw.cpus))
        self.stride = nocb_gp_stride(hw.cpus)
        self.bound = kernel.reclaim_wq == "system_wq"
        # The worker pool the monitor, kfree_rcu_work() and a backed-off refill run in.
        self.pool = EVENTS if self.bound else EVENTS_UNBOUND
        self.resched_limit = RCU_RESCHED_NS * 1e-9 if kernel.qovld else math.inf  # both arrived around v5.7
        self.qovld = kernel.qovld
        self.cb_cost = hw.cb_invoke_us * 1e-6
        self.nocb_wake = hw.nocb_invoke_ms * 1e-3 * 0.5  # each of the rcuog and rcuo wake-ups
        self.callbacks = [0] * hw.cpus  # per CPU: callbacks queued (for qovld)
        self.awaiting_rcuog: dict[int, list[tuple[Callable[[], None], Callable[[int], None]]]] = {}

    def offloaded(self, cpu: int) -> bool:
        return cpu < self.nocb_cpus

    def rcuo_cpu(self, cpu: int) -> int:
        """Where CPU `cpu`'s rcuo kthread runs: a housekeeping CPU when some are not offloaded; else,
        an unbound kthread, on an idle CPU if the scheduler finds one (select_idle_sibling()), else
        on its previous CPU (wake_affine_weight() barely sees nice-19 loops). The chain that wakes
        it (GP kthread -> rcuog -> rcuo) gathers on one CPU and stays: a traced 2-CPU guest with both
        CPUs offloaded ran the GP kthread, rcuog and both rcuo kthreads on one CPU, and with them
        every kfree_rcu_work() they queued (33 of 34 GPs). The model keeps them on the GP kthread's."""
        hk = self.housekeeping
        return hk[cpu % len(hk)] if hk else self.cpus.unbound_target(self.gp.kthread_cpu())

    def rcuog_cpu(self, cpu: int) -> int:
        """Where the rcuog kthread of `cpu`'s group runs (as the rcuo kthreads)."""
        leader = cpu - cpu % self.stride
        hk = self.housekeeping
        return hk[leader % len(hk)] if hk else self.cpus.unbound_target(self.gp.kthread_cpu())

    def work_cpu(self, invoked_on: int) -> int:
        """The CPU kfree_rcu_work() runs on when rcu_work_rcufn() runs on `invoked_on`."""
        if self.bound or not self.cpus.any_held:
            return invoked_on
        return self.cpus.unbound_target(invoked_on)

    # call_rcu() and what comes after the GP -----------------------------------------------------

    def call_rcu(
        self,
        cpu: int,
        count: int,
        body: Callable[[int, float], float],
        done: Callable[[], None],
        check: Callable[[int], None] | None = None,
    ) -> None:
        """call_rcu() of `count` callbacks on `cpu`; after their GP, `body(run_cpu, now)` runs where they
        are invoked and returns its CPU seconds; `done()` runs when the invocation ends.
        `check(gp_number)` is called at the GP's end (the safety check)."""
        self._count(cpu, count)
        holder: list[int] = []

        def gp_end() -> None:
            if check is not None:
                check(holder[0])
            self.invoke(cpu, count, body, done)

        self._request(cpu, gp_end, holder.append)

    def queue_rcu_work(self, cpu: int, rcufn: Callable[[int, float], None], work) -> None:
        """queue_rcu_work() from `cpu`: after a GP, `rcufn(invoked_on, delay)` (rcu_work_rcufn()) runs where
        the callback is invoked, `delay` before it would really run; `work.target` learns the GP it
        waits for. (Two of these per CPU at most: never near qovld.)"""
        if cpu >= self.nocb_cpus:
            work.target = self.gp.request(lambda: self._invoke_rcu_work(cpu, rcufn))
            return
        self._request(
            cpu, lambda: self._invoke_rcu_work(cpu, rcufn), lambda gp_number: setattr(work, "target", gp_number)
        )

    def _request(self, cpu: int, gp_end: Callable[[], None], on_target: Callable[[int], None]) -> None:
        """The callback asks for a GP: from call_rcu() itself on a CPU that is not offloaded; on an
        offloaded one the first callback on an empty list wakes the group's rcuog kthread, which
        advances the callbacks and asks for the GP when it runs (nocb_gp_wait())."""
        if not self.offloaded(cpu):
            on_target(self.gp.request(gp_end))
            return
        waiting = self.awaiting_rcuog.setdefault(cpu, [])
        waiting.append((gp_end, on_target))
        if len(waiting) > 1:
            return  # rcuog is on its way already

        def rcuog(_t: float) -> None:
            for end, target in self.awaiting_rcuog.pop(cpu, []):
                target(self.gp.request(end))

        og = self.cpus[self.rcuog_cpu(cpu)]
        if og.held:
            og.run_kthread(rcuog)
        else:
            self.cpus.at(self.env.now + self.nocb_wake, lambda: rcuog(self.env.now))

    def _invoke_rcu_work(self, cpu: int, rcufn: Callable[[int, float], None]) -> None:
        if self.offloaded(cpu):
            self.invoke(cpu, 0, lambda run_on, _t: rcufn(run_on, 0.0) or 0.0, _nothing)
            return
        rq = self.cpus.queues[cpu]
        now = self.env.now
        tick = rq.tick_after(now)
        if not rq.held:
            # Nothing on this CPU depends on the softirq's moment: let the work it queues carry the delay.
            rq.work_seconds += self.cb_cost
            rcufn(cpu, tick - now)
            return

        def softirq() -> None:
            rq.softirq(self.cb_cost)
            rcufn(cpu, 0.0)

        self.cpus.at(tick, softirq)

    def _count(self, cpu: int, delta: int) -> None:
        before = self.callbacks[cpu]
        after = before + delta
        self.callbacks[cpu] = after
        if self.qovld and (before > QOVLD) != (after > QOVLD):
            self.gp.set_overloaded(1 if after > QOVLD else -1)

    def invoke(self, cpu: int, count: int, body: Callable[[int, float], float], done: Callable[[], None]) -> None:
        """Invoke callbacks of `cpu` whose GP just ended."""
        now = self.env.now
        cpus = self.cpus
        if not self.offloaded(cpu):
            rq = cpus[cpu]

            def softirq() -> None:
                t = self.env.now
                cost = self.cb_cost * count + body(cpu, t)
                self._softirq_time(cpu, cost, count, done)

            cpus.at(rq.tick_after(now), softirq)
            return

        run_on = self.rcuo_cpu(cpu)
        cpus[run_on].claim()

        def rcuo(t: float) -> float:
            cost = self.cb_cost * count + body(run_on, t)
            self._count(cpu, -count)
            if cost < 50e-6:
                done()
            else:
                self.env.timeout(cost).callbacks.append(lambda _e: done())
            return cost

        def rcuog(_t: float) -> None:
            rq = cpus[run_on]
            rq.submit(rcuo, delay=0.0 if rq.held else self.nocb_wake, claimed=True, pool=None)  # the rcuo kthread

        og = cpus[self.rcuog_cpu(cpu)]
        if og.held:
            og.run_kthread(rcuog)
        else:
            cpus.at(now + self.nocb_wake, lambda: rcuog(self.env.now))

    def _softirq_time(self, cpu: int, cost: float, count: int, done: Callable[[], None]) -> None:
        """RCU_SOFTIRQ work on `cpu`: at most rcu_resched_ns per tick, taken from whatever runs there."""
        rq = self.cpus[cpu]
        now = self.env.now
        if cost > self.resched_limit:
            rq.softirq(self.resched_limit)
            rest = cost - self.resched_limit
            self.cpus.at(rq.tick_after(now), lambda: self._softirq_time(cpu, rest, count, done))
            return
        rq.softirq(cost)
        self._count(cpu, -count)
        if cost < 50e-6:
            done()
        else:
            self.env.timeout(cost).callbacks.append(lambda _e: done())


def _nothing() -> None:
    return None
