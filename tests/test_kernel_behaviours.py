"""The validation behaviours of the domain note (kvfree-rcu.md §4), one test each, named after it.

Each uses the kernel releases the behaviour speaks of. Seeds are fixed; where a claim is
statistical the tolerance is stated beside the assertion.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rcutune import sim
from rcutune.sim import _krc, _pool
from rcutune.sim._engine import Model
from tests.support.sim_checks import load

# The memmap (one 64-byte struct page per 4 KiB page) the kernel holds from boot, as a share of memory:
# scenarios that fill memory to a given share of what is left subtract it (and name no other reserve).
MEMMAP = 64 / 4096
NO_RESERVE = {"hardware.boot_reserved_mib": 0}


def run(hardware, workload, policy=None, *, kernel="6.3", seconds=2.0, seed=1, **overrides):
    hw, wl = load(hardware, workload, **overrides)
    return sim.simulate(hw, wl, policy or sim.Policy(), seconds=seconds, seed=seed, kernel=kernel)


def model(hardware, workload, policy=None, *, kernel="6.3", seconds=2.0, seed=1, behaviour=None, **overrides):
    hw, wl = load(hardware, workload, **overrides)
    return Model(hw, wl, policy or sim.Policy(), behaviour or sim.kernel_behaviour(kernel), seconds, seed, trace=True)


# 1 -----------------------------------------------------------------------------------------------
def test_batching_amortizes_grace_periods():
    # A two-CPU machine: per-object call_rcu() keeps the GP engine busy; batches need a GP per block.
    batched = run("vm-2", "steady", kernel="6.1", seconds=5)
    per_object = run("vm-2", "steady", kernel="5.5", seconds=5)
    assert batched.grace_periods / batched.calls < 1e-2
    assert batched.grace_periods < per_object.grace_periods / 2


# 2 -----------------------------------------------------------------------------------------------
def test_batching_costs_memory_but_in_steady_state():
    batched = model("laptop-8", "steady", kernel="6.1", seconds=8)
    m = batched.run()
    per_object = run("laptop-8", "steady", kernel="5.5", seconds=8)
    assert m.bytes_pending_mean > 1.5 * per_object.bytes_pending_mean
    t = np.array(batched.trace.t)
    pending = np.array(batched.trace.bytes_pending)
    late = t > 2.0
    slope, _ = np.polyfit(t[late], pending[late], 1)
    # Flat: over the last 6 s the fitted drift is under 2% of the mean per second.
    assert abs(slope) < 0.02 * pending[late].mean()


# 3 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hardware,kernel", [("vm-2", "6.3"), ("laptop-8", "6.1"), ("phone-8", "5.11")])
def test_littles_law_on_steady_workloads(hardware, kernel):
    hw, wl = load(hardware, "steady")
    m = sim.simulate(hw, wl, sim.Policy(), seconds=10, seed=4, kernel=kernel)
    mean_pending_objects = m.bytes_pending_mean / wl.object_bytes
    rate = m.calls / m.sim_seconds
    # Little's law: L = lambda W, within 10% (DESIGN: steady workloads).
    assert mean_pending_objects == pytest.approx(rate * m.mean_residency_seconds, rel=0.10)


# 4 -----------------------------------------------------------------------------------------------
def test_polled_grace_periods_free_ready_blocks_in_a_nocb_flood():
    kw = {"workload.calls_per_s_per_cpu": 100000, "hardware.nocb_invoke_ms": 60}
    old = run("phone-8", "nocb-flood", kernel="6.1", **kw)
    new = run("phone-8", "nocb-flood", kernel="6.3", **kw)
    assert old.drained_ready_blocks == 0
    assert new.drained_ready_blocks > 100
    assert new.bytes_pending_mean < 0.8 * old.bytes_pending_mean
    # GPs do not fall: summed over six seeds (one run's count moves by a tenth with the GPs' timing).
    gps = {
        k: sum(run("phone-8", "nocb-flood", kernel=k, seed=s, **kw).grace_periods for s in range(6))
        for k in ("6.1", "6.3")
    }
    assert gps["6.3"] >= 0.95 * gps["6.1"]


# 5 -----------------------------------------------------------------------------------------------
def test_adaptive_drain_fills_blocks_under_sparse_traffic():
    sparse = {"workload.calls_per_s_per_cpu": 50}
    fixed = run("phone-8", "steady", kernel="5.11", seconds=20, **sparse)
    adaptive = run("phone-8", "steady", kernel="6.1", seconds=20, **sparse)
    assert adaptive.records_per_block_mean > 20 * fixed.records_per_block_mean
    assert adaptive.grace_periods < fixed.grace_periods / 10


def test_adaptive_drain_timer_only_shortens_and_collapses_to_one_jiffy(monkeypatch):
    changes = []
    original = _krc.KfreeRcuCpu._set_deadline

    def record(self, when):
        changes.append((self.env.now, self.deadline, when, self.pending_count))
        original(self, when)

    monkeypatch.setattr(_krc.KfreeRcuCpu, "_set_deadline", record)
    m = model("phone-8", "steady", kernel="6.1", seconds=3)
    m.run()
    armed = [(now, old, new, pending) for now, old, new, pending in changes if old is not None]
    assert armed, "the flood must shorten pending timers"
    assert all(new <= old + 1e-12 for _, old, new, _ in armed)
    jiffy = 1.0 / m.hw.hz
    assert all(new == pytest.approx(now + jiffy) for now, _, new, pending in armed if pending >= m.records)


# 6 -----------------------------------------------------------------------------------------------
def test_at_most_two_batches_wait_per_cpu():
    # Long offloaded invocation keeps both krw slots busy; a third detach must wait.
    m = run(
        "phone-8", "nocb-flood", kernel="6.3", **{"hardware.nocb_invoke_ms": 60, "workload.calls_per_s_per_cpu": 100000}
    )
    assert m.batches_in_flight_peak == 2
    assert m.objects_freed > 0.9 * m.calls  # the monitor re-armed and drained while blocked


# 7 -----------------------------------------------------------------------------------------------
def test_no_object_is_freed_before_a_grace_period_that_began_after_its_call():
    for workload in ("nocb-flood", "oom-storm", "bursty"):
        for kernel in sim.KERNELS:
            assert run("phone-8", workload, kernel=kernel, seconds=1).safety_violations == 0


def test_safety_checker_catches_adding_to_a_queued_batch(monkeypatch):
    """The 2023 use-after-free class: objects added to a batch whose rcu_work is already queued."""
    original = _krc.KfreeRcuCpu.book

    def buggy_book(self, now, counts, arrival_mid, **kw):
        event = original(self, now, counts, arrival_mid, **kw)
        queued = [b for b in self.krw if b is not None]
        if queued and self.pending_count:
            queued[0].objs.newest = now  # pretend the new objects joined the queued batch
        return event

    monkeypatch.setattr(_krc.KfreeRcuCpu, "book", buggy_book)
    assert run("phone-8", "nocb-flood", seconds=1).safety_violations > 0


# 8 -----------------------------------------------------------------------------------------------
def test_two_argument_calls_never_block_and_never_allocate():
    exhausted = {
        "workload.headless_fraction": 0.0,
        "workload.pressure": '"ramp"',
        "workload.anon_fraction": 0.7,
        "workload.anon_fraction_end": 1.2,
    }
    m = run("vm-2", "steady", sim.Policy(n_per_cpu=2), **exhausted)
    assert m.sync_fallbacks == 0
    assert m.page_alloc_attempts == m.refill_allocations + (m.page_alloc_failures)  # only the refill worker allocates
    assert m.call_latency_max_us <= load("vm-2", "steady")[0].kfree_call_ns / 1000 * 1.2
    few = run("vm-2", "steady", sim.Policy(n_per_cpu=0), **{"workload.headless_fraction": 0.0})
    many = run("vm-2", "steady", sim.Policy(n_per_cpu=8), **{"workload.headless_fraction": 0.0})
    assert few.head_fallbacks > 10 * max(1, many.head_fallbacks)  # the rcu_head list grows as N -> 0


# 9 -----------------------------------------------------------------------------------------------
def test_headless_call_blocks_about_one_grace_period_under_exhausted_memory():
    # Free memory held just under the min watermark: NORETRY fails, nothing is left to reclaim, no OOM.
    exhausted = {
        "workload.headless_fraction": 1.0,
        "workload.anon_fraction": 0.999 - MEMMAP,
        "hardware.file_cache_fraction": 0.0,
        "workload.calls_per_s_per_cpu": 200,
        **NO_RESERVE,
    }
    hw, _ = load("vm-2", "steady")
    m = run("vm-2", "steady", sim.Policy(n_per_cpu=0), seconds=5, **exhausted)
    assert m.sync_fallbacks > 0.9 * m.calls_headless
    stall = m.sync_stall_seconds / m.sync_fallbacks
    # At least one GP (the remainder of the current one plus a full one at most).
    assert hw.gp_min_ms * 1e-3 <= stall <= 2.5 * hw.gp_median_ms * 1e-3


def test_headless_throughput_collapses_to_about_one_object_per_grace_period_per_thread():
    exhausted = {
        "workload.kfree_rcu_test_single": "true",
        "workload.anon_fraction": 0.999 - MEMMAP,
        **NO_RESERVE,
        "hardware.file_cache_fraction": 0.0,
        "workload.kfree_loops": 1,
        "workload.kfree_alloc_num": 40,
    }
    hw, wl = load("vm-2", "rcuscale", **exhausted)
    m = sim.simulate(hw, wl, sim.Policy(n_per_cpu=0), seed=1, kernel="6.1")
    threads = wl.rcuscale_threads(hw.cpus)
    per_thread_rate = m.calls / threads / (m.rcuscale_total_time_ns * 1e-9)
    # ~1 object per GP per thread: between 1/(2 GP) and 2/GP per second.
    gp = hw.gp_median_ms * 1e-3
    assert 0.5 / gp <= per_thread_rate <= 2.0 / gp


def test_headless_calls_allocate_inline_with_n_zero_when_memory_is_available():
    m = run("vm-2", "steady", sim.Policy(n_per_cpu=0), **{"workload.headless_fraction": 1.0})
    assert m.sync_fallbacks == 0
    assert m.page_alloc_attempts > 0 and m.page_alloc_failures == 0


# 10 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 8])
def test_cache_never_holds_more_than_n_pages_per_cpu(n):
    m = run("phone-8", "bursty", sim.Policy(n_per_cpu=n), seconds=4)
    assert m.cache_pages_peak_per_cpu == n  # reached, never exceeded
    assert m.cache_pages_reserved == n * 8


def test_n_zero_disables_the_cache_and_the_refill():
    m = run("phone-8", "bursty", sim.Policy(n_per_cpu=0), seconds=4)
    assert m.refill_allocations == 0 and m.blocks_from_cache == 0 and m.cache_pages_reserved == 0


def test_cache_fills_lazily_since_5_11_and_at_boot_in_5_9():
    lazy = model("phone-8", "steady", sim.Policy.kernel_default(sim.kernel_behaviour("6.3")), kernel="6.3", seconds=1)
    boot = model("phone-8", "steady", sim.Policy.kernel_default(sim.kernel_behaviour("5.9")), kernel="5.9", seconds=1)
    assert lazy.pool.held() == 0
    assert boot.pool.held() == 2 * 8  # rcu_min_cached_objs = 2 in 5.9-5.10
    lazy.run()
    assert lazy.stats.refill_allocations > 0


# 11 ----------------------------------------------------------------------------------------------
def test_after_a_shrinker_count_no_refill_happens_for_the_refill_delay(monkeypatch):
    counts, refills, fills, running, kicks = [], [], [], [], {}
    original_count = _krc.KfreeRcuCpu.shrink_count
    original_kick = _krc.KfreeRcuCpu.run_page_cache_worker
    original_fill = _krc.KfreeRcuCpu.fill_page_cache_func
    original_pool_fill = _pool.PageCache.fill

    def count(self):
        counts.append(self.env.now)
        return original_count(self)

    def kick(self, now):
        if not self.work_in_progress and self.c.policy.n_per_cpu:
            kicks[self.cpu] = (now, self.backoff)
        original_kick(self, now)

    def fill(self, now):
        start, backing_off = kicks.pop(self.cpu)
        running.append((self.cpu, backing_off, start))
        try:
            cost = original_fill(self, now)
        finally:
            running.pop()
        refills.append((self.cpu, backing_off, start, self.env.now))
        return cost

    def pool_fill(self, cpu, pages):
        if running:
            fills.append((running[-1], pages))
        original_pool_fill(self, cpu, pages)

    monkeypatch.setattr(_krc.KfreeRcuCpu, "shrink_count", count)
    monkeypatch.setattr(_krc.KfreeRcuCpu, "run_page_cache_worker", kick)
    monkeypatch.setattr(_krc.KfreeRcuCpu, "fill_page_cache_func", fill)
    monkeypatch.setattr(_pool.PageCache, "fill", pool_fill)
    delay_ms = 700
    m = run("vm-2", "memory-pressure", sim.Policy(n_per_cpu=4, refill_delay_ms=delay_ms), seconds=10)
    assert counts and m.shrinker_scans > 0
    backed_off = [r for r in refills if r[1]]
    assert backed_off, "refills after a shrinker count must back off"
    for _, _, start, end in backed_off:
        assert end - start >= delay_ms * 1e-3 - 1e-9  # no allocation before the delay
    assert any(pages > 1 for (_, backing_off, _), pages in fills if not backing_off)
    assert all(pages <= 1 for (_, backing_off, _), pages in fills if backing_off)  # one page while backing off


# 12 ----------------------------------------------------------------------------------------------
def test_shrinker_protects_against_oom_in_a_flood_on_a_small_machine():
    # Sparse, large objects: fewer than a block's worth per CPU waits 5 s for the drain timer;
    # only the shrinker's scan starts their grace periods early when memory runs short.
    kw = {
        "workload.calls_per_s_per_cpu": 40,
        "workload.object_bytes": 65536,
        "workload.pressure": '"ramp"',
        "workload.anon_fraction": 0.3,
        "workload.anon_fraction_end": 0.99 - MEMMAP,
        "workload.headless_fraction": 0.0,
        **NO_RESERVE,
        "hardware.file_cache_fraction": 0.0,
    }
    behaviour = sim.kernel_behaviour("6.1")
    with_shrinker = model("vm-2", "steady", kernel="6.1", seconds=20, **kw).run()
    without = model("vm-2", "steady", seconds=20, behaviour=dataclasses.replace(behaviour, shrinker=False), **kw).run()
    assert with_shrinker.shrinker_scans > 0
    assert without.oom_events > with_shrinker.oom_events
    assert with_shrinker.free_pages_min > without.free_pages_min


# 13 ----------------------------------------------------------------------------------------------
def test_pages_return_to_the_originating_cpu(monkeypatch):
    puts = []
    original = _krc.KfreeRcuCpu.kfree_rcu_work

    def work(self, batch, run_cpu, now):
        puts.append(self.cpu)
        return original(self, batch, run_cpu, now)

    monkeypatch.setattr(_krc.KfreeRcuCpu, "kfree_rcu_work", work)
    hw, wl = load("phone-8", "bursty")
    mdl = Model(hw, wl, sim.Policy(n_per_cpu=4), sim.kernel_behaviour("6.3"), 6.0, 1)
    m = mdl.run()
    # Skewed load with a moving hot set: CPUs that went quiet keep their pages, unused.
    assert m.cache_pages_stranded_mean > 0
    idle = mdl.cpu_last_call < mdl.env.now - 1.0
    assert (mdl.pool.local[idle] <= 4).all()
    glob = run("phone-8", "bursty", sim.Policy(n_per_cpu=4, layout="global"), seconds=6)
    assert glob.cache_pages_stranded_mean == 0


def test_offloaded_callbacks_return_pages_later():
    on = run("phone-8", "steady", sim.Policy(), seconds=4)
    off = run("phone-8", "steady", sim.Policy(), seconds=4, **{"hardware.nocb_cpus": 0})
    hw = load("phone-8", "steady")[0]
    # Softirq invocation waits for the next tick (half a jiffy on average); rcuog and rcuo wake-ups take
    # nocb_invoke_ms: at least half of the difference shows in the residency.
    assert on.mean_residency_seconds > off.mean_residency_seconds + 0.5 * (hw.nocb_invoke_ms * 1e-3 - 0.5 / hw.hz)


# 14 ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_global_pool_lock_wait_grows_with_cpus_and_with_misses():
    flood = {"workload.calls_per_s_per_cpu": 200000, "workload.headless_fraction": 0.0}
    glob = sim.Policy(n_per_cpu=1, layout="global")
    small = run("server-64", "nocb-flood", glob, seconds=0.5, **flood, **{"hardware.cpus": 8})
    large = run("server-64", "nocb-flood", glob, seconds=0.5, **flood, **{"hardware.cpus": 64})
    assert large.lock_wait_seconds > 20 * small.lock_wait_seconds
    roomy = run("server-64", "nocb-flood", sim.Policy(n_per_cpu=64, layout="global"), seconds=0.5, **flood)
    assert large.lock_wait_seconds > 5 * roomy.lock_wait_seconds
    per_cpu = run("server-64", "nocb-flood", sim.Policy(n_per_cpu=1), seconds=0.5, **flood)
    assert per_cpu.lock_wait_seconds == 0


# 15 ----------------------------------------------------------------------------------------------
def test_emergency_reserve_is_flagged_as_not_faithful():
    m = run("vm-2", "oom-storm", sim.Policy(emergency_reserve_fraction=0.05), seconds=1)
    assert m.what_if and any("GFP_MEMALLOC" in r for r in m.what_if_reasons)
    assert not run("vm-2", "oom-storm", sim.Policy(), seconds=1).what_if


# 16 ----------------------------------------------------------------------------------------------
def test_lazy_rcu_does_not_delay_kvfree_batches():
    short = run("phone-8", "steady", seconds=3, **{"hardware.lazy_flush_ms": 100})
    long = run("phone-8", "steady", seconds=3, **{"hardware.lazy_flush_ms": 10000})
    assert short.mean_residency_seconds == long.mean_residency_seconds
    # Control: plain call_rcu() frees (rcuscale's kfree_by_call_rcu) are lazy on offloaded CPUs.
    lazy = {"workload.kfree_by_call_rcu": "true", "workload.kfree_loops": 300}
    a = sim.simulate(
        *load("phone-8", "rcuscale", **lazy, **{"hardware.lazy_flush_ms": 100}), sim.Policy(), seconds=30, seed=1
    )
    b = sim.simulate(
        *load("phone-8", "rcuscale", **lazy, **{"hardware.lazy_flush_ms": 5000}), sim.Policy(), seconds=30, seed=1
    )
    assert b.objects_freed == 0 < a.objects_freed  # a 5 s lazy flush outlasts the 0.6 s run


# 17 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["5.7", "5.9", "5.11"])
@pytest.mark.parametrize("hz", [100, 250, 1000])
def test_before_6_1_the_drain_cadence_is_20_ms(kernel, hz):
    m = run(
        "laptop-8",
        "steady",
        sim.Policy.kernel_default(sim.kernel_behaviour(kernel)),
        kernel=kernel,
        seconds=3,
        **{"hardware.hz": hz},
    )
    per_cpu_per_s = m.batches / 8 / m.sim_seconds
    # One detach per HZ/50 jiffies = 20 ms; the first arrival after a detach re-arms it: within 15%.
    assert per_cpu_per_s == pytest.approx(50, rel=0.15)
