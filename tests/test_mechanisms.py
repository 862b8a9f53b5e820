"""The mechanisms of issue 11, one or two tests each: CPUs and the preemption model, the reclaim
pipeline, grace periods under load, the shrinker and memory, per-object costs, rcuscale's modes.

Seeds are fixed; where a claim is statistical the tolerance is stated beside the assertion.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import simpy

from rcutune import sim
from rcutune.sim._cpu import EVENTS, EVENTS_HIGHPRI, CpuSet, RunQueue, kworker_protection
from rcutune.sim._engine import Model
from rcutune.sim._krc import KfreeRcuCpu
from rcutune.sim._memory import SHRINK_BATCH, PageAllocator, Shrinker
from rcutune.sim._reclaim import nocb_gp_stride
from rcutune.sim._slab import FreeCosts, objects_per_slab
from tests.support.sim_checks import assert_invariants, load

GUEST = {
    "hardware.cpus": 2,
    "hardware.memory_mib": 1024,
    "hardware.hz": 1000,
    "hardware.kfree_call_ns": 1000,
    "hardware.kfree_slow_ns": 300,
    "hardware.kfree_fast_ns": 100,
    "hardware.file_cache_fraction": 0,
    "hardware.loop_jitter": 0,
    "workload.kfree_loops": 20,
    "workload.kfree_rcu_test_single": "false",
    "workload.kfree_rcu_test_double": "true",
}


def rcuscale(preempt="none", n=5, kernel="6.1", behaviour=None, seed=1, **overrides):
    """A 2-CPU guest running rcuscale's two-argument kfree test (20 loops of 8000 frees per CPU)."""
    hw, wl = load("vm-2", "rcuscale", **{**GUEST, "hardware.preempt": preempt, **overrides})
    policy = sim.Policy(n_per_cpu=n)
    k = behaviour or sim.kernel_behaviour(kernel)
    m = Model(hw, wl, policy, k, 60.0, seed).run()
    assert_invariants(m, policy)
    return m


# CPUs and the preemption model --------------------------------------------------------------------


def test_preempt_none_busy_cpus_report_quiescent_states_only_between_loops():
    m = rcuscale("none")
    # Each GP needs every busy CPU to pass the cond_resched() between its loops: at most one GP per
    # loop (plus the one in progress at the start).
    assert 0 < m.rcuscale_batches <= 20 + 1


def test_voluntary_lets_queued_work_preempt_the_loop_so_grace_periods_shorten():
    none, voluntary = rcuscale("none"), rcuscale("voluntary")
    assert voluntary.rcuscale_batches > 2 * none.rcuscale_batches


def test_full_preemption_reports_at_ticks():
    full = rcuscale("full")
    loop_s = full.rcuscale_total_time_ns / 1e9
    # Preemptible RCU: a held CPU reports at its ticks, so GPs take a few jiffies (HZ=1000 here).
    assert full.rcuscale_batches > loop_s / 0.01


def test_the_loop_pays_for_the_kernel_work_on_its_cpu():
    """Reclaim work runs on the CPUs the loops hold and is charged there: the loops take longer by it."""
    cheap = rcuscale("voluntary", n=0, **{"hardware.kfree_slow_ns": 10, "hardware.kfree_fast_ns": 1})
    dear = rcuscale("voluntary", n=0, **{"hardware.kfree_slow_ns": 3000, "hardware.kfree_fast_ns": 1})
    assert dear.kernel_work_cpu_seconds > 5 * cheap.kernel_work_cpu_seconds
    extra = (dear.rcuscale_total_time_ns - cheap.rcuscale_total_time_ns) / 1e9
    # Most of the extra work lands inside the test's window (2 CPUs share it).
    assert extra > 0.25 * (dear.kernel_work_cpu_seconds - cheap.kernel_work_cpu_seconds) / 2


def test_with_n_zero_before_v6_5_every_miss_kicks_an_empty_refill_that_a_preemptible_loop_pays_for():
    k61 = sim.kernel_behaviour("6.1")
    without = dataclasses.replace(k61, refill_when_disabled=False)  # 021a5ff84743's bail-out
    kicked = rcuscale(
        "voluntary", n=0, behaviour=k61, **{"hardware.hrtimer_latency_us": 20, "hardware.context_switch_us": 5}
    )
    quiet = rcuscale(
        "voluntary", n=0, behaviour=without, **{"hardware.hrtimer_latency_us": 20, "hardware.context_switch_us": 5}
    )
    assert kicked.refill_allocations == quiet.refill_allocations == 0
    # 320000 calls, a kick every ~20 calls (20 us at 1 us per call), two 5 us switches each: ~0.16 s more.
    extra = (kicked.rcuscale_total_time_ns - quiet.rcuscale_total_time_ns) / 1e9
    assert 0.05 < extra < 0.4


def test_with_preempt_none_the_refill_waits_for_the_end_of_a_loop():
    none = rcuscale("none", n=1)
    voluntary = rcuscale("voluntary", n=1)
    # N=1: voluntary refills after every miss, so nearly every block comes from the cache; with
    # PREEMPT_NONE the refill runs once per loop and most calls of a loop fall back.
    assert voluntary.head_fallbacks < 0.2 * voluntary.calls
    assert none.head_fallbacks > 0.5 * none.calls


def test_a_cpu_whose_loop_sleeps_with_work_queued_is_no_longer_a_holdout():
    env = simpy.Environment()
    idle = []
    cpus = CpuSet(env, 2, "none", 1000, 0.0, on_switch=lambda cpu, now: None)
    cpus[0].on_idle = lambda cpu, now: idle.append(cpu)
    cpus[0].hold()
    cpus[0].submit(lambda now: 0.001)  # queued behind the PREEMPT_NONE loop
    cpus[0].release()  # the loop sleeps (synchronize_rcu()) with that work still queued
    assert idle == [0]


def _loop_at_cond_resched(cpus: CpuSet, env: simpy.Environment, cpu: int = 0):
    """The PREEMPT_NONE loop holding `cpu` (see `hold()`) reaches cond_resched() now, then keeps the CPU."""
    rq = cpus[cpu]

    def loop():
        yield env.timeout(0.0)
        yield from rq.cond_resched()

    return env.process(loop())


def test_works_of_one_pool_back_to_back_share_one_context_switch():
    # worker_thread() takes the next item of its pool without sleeping: monitor + kfree_rcu_work on
    # system_wq are one switch in and one out; the highpri refill is another kworker, another switch.
    for pools, expected in (((EVENTS, EVENTS), 2), ((EVENTS, EVENTS_HIGHPRI), 3), ((None, None), 3)):
        env = simpy.Environment()
        switches: list[float] = []
        cpus = CpuSet(env, 1, "none", 1000, 0.0, on_switch=lambda cpu, now, out=switches: out.append(now))
        cpus[0].hold()
        for pool in pools:
            cpus[0].submit(lambda now: 0.002, pool=pool)  # queued behind the loop
        _loop_at_cond_resched(cpus, env)
        env.run(until=0.01)
        assert len(switches) == expected, (pools, switches)
        assert switches[-1] == pytest.approx(0.004)  # back to the loop when both items are done


def test_work_queued_by_running_work_joins_the_same_pump(monkeypatch):
    # An rcuo kthread queuing kfree_rcu_work() where it runs: the work starts when the item that
    # queued it ends, not beside it; one pump runs both, whether the first item ran from the queue
    # or at once on an idle pool.
    env = simpy.Environment()
    cpus = CpuSet(env, 1, "none", 1000, 0.0, on_switch=lambda cpu, now: None)
    rq = cpus[0]
    pumps, ran = [], []
    pump = RunQueue._pump

    def counted(self, event=None):
        pumps.append(env.now)
        pump(self, event)

    monkeypatch.setattr(RunQueue, "_pump", counted)

    def monitor(now):
        ran.append(("monitor", now))
        rq.submit(lambda t: ran.append(("work", t)) or 0.001)
        return 0.002

    rq.submit(lambda now: 0.001)
    rq.submit(monitor)
    env.run(until=0.01)
    assert ran == [("monitor", pytest.approx(0.001)), ("work", pytest.approx(0.003))]
    assert pumps == pytest.approx([0.0, 0.001, 0.003])
    ran.clear()
    rq.submit(monitor)  # an idle pool: runs at once, its work after it
    env.run(until=0.02)
    assert ran == [("monitor", pytest.approx(0.01)), ("work", pytest.approx(0.012))]


@pytest.mark.parametrize("preempt", ["none", "voluntary"])
def test_work_that_takes_the_cpu_from_a_loop_costs_the_loop_two_switches(preempt):
    # Loop -> kworker -> loop: whether the loop offers the CPU at cond_resched() (none) or loses it
    # at its next might_resched() (voluntary), the kworker sleeping again is a second switch.
    env = simpy.Environment()
    cpus = CpuSet(env, 1, preempt, 1000, 0.0, on_switch=lambda cpu, now: None)
    rq = cpus[0]
    rq.switch_s = 1e-6
    rq.hold()
    rq.submit(lambda now: 0.002, pool=EVENTS)
    rq.submit(lambda now: 0.002, pool=EVENTS_HIGHPRI)  # another kworker straight after: one more
    if preempt == "none":
        _loop_at_cond_resched(cpus, env)
    env.run(until=0.01)
    assert rq.switches == 3
    assert rq.charged == pytest.approx(3e-6 + (0.004 if preempt == "voluntary" else 0.0))


def test_scheduler_tunables_scale_with_the_cpu_count_as_the_kernel_does():
    ms = 1e-3
    assert kworker_protection(1, eevdf=False) == pytest.approx((1 * ms, 3 * ms))
    assert kworker_protection(2, eevdf=False) == pytest.approx((2 * ms, 6 * ms))
    assert kworker_protection(4, eevdf=False) == pytest.approx((3 * ms, 9 * ms))
    assert kworker_protection(64, eevdf=False) == pytest.approx((4 * ms, 12 * ms))  # capped at 8 CPUs
    assert kworker_protection(2, eevdf=True) == pytest.approx((1.5 * ms, 1.5 * ms))
    assert not sim.kernel_behaviour("6.1").eevdf and sim.kernel_behaviour("6.6").eevdf


@pytest.mark.parametrize(
    "eevdf, woken_after_ms, runs_at_ms",
    [
        (False, 0.5, 5.0),  # CFS: led by 0.5 ms < 2 ms granularity: waits for the item's end
        (False, 3.0, 3.0),  # led by 3 ms > 2 ms: preempts at the wake-up
        (True, 0.5, 2.0),  # EEVDF: the kworker keeps its 1.5 ms slice, to the next tick
        (True, 3.0, 3.0),
    ],
)
def test_a_woken_kthread_preempts_a_running_kworker_only_as_the_scheduler_lets_it(eevdf, woken_after_ms, runs_at_ms):
    env = simpy.Environment()
    cpus = CpuSet(env, 2, "none", 1000, 0.0, on_switch=lambda cpu, now: None, eevdf=eevdf)
    cpus[0].hold()
    cpus[0].submit(lambda now: 0.005)  # a 5 ms kfree_rcu_work() behind the loop's cond_resched()
    _loop_at_cond_resched(cpus, env)
    ran = []
    cpus.at(woken_after_ms * 1e-3, lambda: cpus[0].run_kthread(lambda now: ran.append(now)))
    env.run(until=0.02)
    assert ran == [pytest.approx(runs_at_ms * 1e-3)]


# Grace periods under load --------------------------------------------------------------------------


def test_qovld_shortens_grace_periods_only_in_releases_that_have_it():
    # 5.5: every object its own callback, far beyond 20000 per CPU; only a 5.7+ kernel hammers QSs.
    old = sim.kernel_behaviour("5.5")
    with_qovld = dataclasses.replace(old, qovld=True)
    hw, wl = load(
        "vm-2",
        "nocb-flood",
        **{"workload.calls_per_s_per_cpu": 3_000_000, "hardware.hz": 1000, "workload.duration_s": 0.5},
    )
    plain = Model(hw, wl, sim.Policy(), old, 0.5, 3).run()
    hammered = Model(hw, wl, sim.Policy(), with_qovld, 0.5, 3).run()
    assert not old.qovld and sim.kernel_behaviour("5.7").qovld
    # 3e6 callbacks/s per CPU: above 20000 within a GP; RCU then hammers QSs from the first FQS scan
    # (3 jiffies) instead of the profile's 12 ms median GP.
    assert hammered.grace_periods > 1.5 * plain.grace_periods


def test_tick_qs_with_preempt_count_from_v6_15_on_dynamic_builds():
    dynamic = {"hardware.preempt_dynamic": "true"}
    k614, k618 = sim.kernel_behaviour("6.14"), sim.kernel_behaviour("6.18")
    plain = rcuscale("none", behaviour=k614, **dynamic)
    ticks = rcuscale("none", behaviour=dataclasses.replace(k614, tick_qs_preempt_count=True), **dynamic)
    assert k618.tick_qs_preempt_count and not k614.tick_qs_preempt_count
    # The held CPUs report at their ticks instead of between loops: objects wait less for their GP
    # (the GP count is bounded by the batches, whose reclaim work still waits for a loop's end).
    assert ticks.mean_residency_seconds < 0.85 * plain.mean_residency_seconds


def test_offloaded_callbacks_and_their_reclaim_gather_on_the_gp_kthreads_cpu(monkeypatch):
    # Every CPU offloaded and busy: the GP kthread, rcuog and the rcuo kthreads share one CPU, and
    # kfree_rcu_work() (system_wq on 6.1) runs where rcuo invoked the batch's callback. Not offloaded,
    # each CPU's batches are reclaimed on that CPU, from its own RCU_SOFTIRQ.
    def reclaim_runs(**overrides) -> tuple[list[tuple[float, int, int]], float]:
        runs: list[tuple[float, int, int]] = []
        original = KfreeRcuCpu.kfree_rcu_work

        def kfree_rcu_work(self, batch, run_cpu, now):
            runs.append((now, self.cpu, run_cpu))
            return original(self, batch, run_cpu, now)

        with monkeypatch.context() as m:
            m.setattr(KfreeRcuCpu, "kfree_rcu_work", kfree_rcu_work)
            result = rcuscale("none", n=0, **overrides)
        return runs, result.rcuscale_total_time_ns * 1e-9

    plain, _ = reclaim_runs()
    assert {(owner, run) for _, owner, run in plain} == {(0, 0), (1, 1)}
    offloaded, seconds = reclaim_runs(**{"hardware.nocb_cpus": 2})
    # While both loops run (the first half of the test; afterwards the CPU whose loop ended first is
    # idle, and the kthreads move there), every batch of both CPUs is reclaimed on one CPU.
    busy = [(owner, run) for t, owner, run in offloaded if t < 0.5 * seconds]
    assert {owner for owner, _ in busy} == {0, 1}
    assert len({run for _, run in busy}) == 1, busy


def test_one_rcuog_kthread_serves_nr_cpu_ids_over_its_integer_square_root_cpus():
    # rcu_organize_nocb_kthreads(): ls = nr_cpu_ids / int_sqrt(nr_cpu_ids).
    assert [nocb_gp_stride(n) for n in (1, 2, 4, 8, 16, 32, 64, 256)] == [1, 2, 2, 4, 4, 6, 8, 16]


# The reclaim pipeline ------------------------------------------------------------------------------


def test_unbound_workqueues_move_reclaim_to_idle_cpus():
    """6.12's system_unbound_wq: kfree_rcu_work() runs on an idle CPU, not on the flooding one."""
    k66, k612 = sim.kernel_behaviour("6.6"), sim.kernel_behaviour("6.12")
    # One rcuscale thread on a 4-CPU machine: three CPUs idle.
    over = {"hardware.cpus": 4, "workload.kfree_nthreads": 1}
    bound = rcuscale("none", n=0, behaviour=k66, **over)
    unbound = rcuscale("none", n=0, behaviour=k612, **over)
    assert unbound.rcuscale_total_time_ns < 0.9 * bound.rcuscale_total_time_ns


# Memory --------------------------------------------------------------------------------------------


def _allocator(**overrides) -> PageAllocator:
    hw, wl = load(
        "vm-2",
        "steady",
        **{
            "hardware.memory_mib": 1024,
            "hardware.file_cache_fraction": 0.0,
            "workload.anon_fraction": 0.0,
            **overrides,
        },
    )
    return PageAllocator(hw, wl, 0.0, 10.0, np.random.default_rng(0))


def test_memory_held_at_boot_is_the_memmap_plus_the_profiles_reserve():
    plain = _allocator(**{"hardware.boot_reserved_mib": 0})
    reserved = _allocator(**{"hardware.boot_reserved_mib": 100})
    pages = 1024 * 256
    assert plain.reserved == pytest.approx(pages * 64 / 4096)  # one 64-byte struct page per page
    assert plain.free - reserved.free == pytest.approx(100 * 256)


def test_shrinker_scans_in_batches_of_128_and_defers_the_rest():
    scanned = []
    freeable = [10_000]

    def scan(nr):
        scanned.append(nr)
        freeable[0] -= nr
        return nr

    s = Shrinker(lambda: freeable[0], scan)
    s.do_shrink_slab(6)  # (10000 >> 6) * 4 / 2 = 312: two batches of 128, 56 deferred
    assert scanned == [SHRINK_BATCH, SHRINK_BATCH]
    assert s.nr_deferred == 312 - 2 * SHRINK_BATCH
    s.do_shrink_slab(12)  # (9744 >> 12) * 4 / 2 = 4, plus the 56 deferred: below one batch, deferred again
    assert len(scanned) == 2 and s.nr_deferred == 60


def test_direct_reclaim_below_min_then_oom_with_nothing_reclaimable():
    alloc = _allocator(**{"hardware.file_cache_fraction": 0.05})
    alloc.anon = alloc.free + alloc.anon - alloc.wmark_min // 2  # under the min watermark
    stalls = []
    assert alloc.allocate(1.0, stalls.append)  # page cache is left: direct reclaim brings it back
    assert stalls and alloc.direct_reclaims >= 1
    assert alloc.free < alloc.wmark_min  # one pass brings back SWAP_CLUSTER_MAX pages, not the watermark
    alloc.anon += alloc.file  # the page cache is gone and its memory held: nothing left to reclaim
    alloc.file = 0.0
    alloc.no_progress_passes = 0
    results = [alloc.allocate(1.0) for _ in range(20)]
    # should_reclaim_retry(): 16 passes without progress, then the OOM killer.
    assert results[:16] == [True] * 16 and results[-1] is False


def test_a_guest_that_runs_out_of_memory_ends_in_oom():
    m = rcuscale("none", n=5, **{"hardware.memory_mib": 96, "workload.kfree_mult": 64, "workload.kfree_loops": 40})
    assert m.rcuscale_enomem and m.oom_events >= 1


# Per-object costs ---------------------------------------------------------------------------------


def _costs(allocator: str, locality: float = 1.0) -> FreeCosts:
    hw, _ = load(
        "vm-2",
        "steady",
        **{
            "hardware.allocator": allocator,
            "hardware.kfree_fast_ns": 10,
            "hardware.kfree_slow_ns": 100,
            "hardware.kfree_remote_ns": 40,
        },
    )
    return FreeCosts(hw, 32, locality)


def test_slub_bulk_frees_pay_the_slow_path_once_per_slab_and_slab_saves_nothing():
    slub, slab = _costs("slub"), _costs("slab")
    assert objects_per_slab(32, 2) == 128  # kmalloc-32: one order-0 slab
    assert slub.bulk(True) == pytest.approx(100e-9 / 128 + 10e-9 * (1 - 1 / 128))
    assert slab.bulk(True) == pytest.approx(slab.single() + 10e-9)
    assert slub.bulk(False) - slub.bulk(True) == pytest.approx(40e-9)  # a remote free moves cache lines
    assert _costs("slub", locality=0.0).bulk(True) == pytest.approx(100e-9)


def test_one_by_one_frees_of_the_rcu_head_list_cost_more_than_bulk():
    slub = _costs("slub")
    assert slub.head(10_000, True) > 5 * slub.bulk(True)


# rcuscale's test modes per release ----------------------------------------------------------------


def test_rcuscale_frees_with_two_arguments_only_before_5_13():
    single = {
        "workload.kfree_rcu_test_single": "true",
        "workload.kfree_rcu_test_double": "false",
        "workload.kfree_loops": 4,
    }
    old = rcuscale("none", kernel="5.11", **single)
    new = rcuscale("none", kernel="5.13", **single)
    assert old.calls_headless == 0 and old.calls_two_arg == old.calls
    assert new.calls_headless == new.calls
