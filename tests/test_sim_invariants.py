"""Invariants on every run: shipped profiles, every kernel, and random policies and overrides."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcutune import sim
from tests.support.sim_checks import assert_invariants, load

SMALL_HARDWARE = ["vm-2", "phone-8", "laptop-8", "rt-16-nocb", "arm64-16k-32"]


@pytest.mark.parametrize("workload", sim.list_profiles("workload"))
@pytest.mark.parametrize("hardware", SMALL_HARDWARE)
def test_invariants_hold_on_shipped_profiles(hardware, workload):
    hw, wl = load(hardware, workload)
    policy = sim.Policy()
    m = sim.simulate(hw, wl, policy, seconds=1.0, seed=3)
    assert_invariants(m, policy)
    assert m.calls > 0


@pytest.mark.parametrize("hardware", ["server-64", "hpc-256-nocb"])
def test_invariants_hold_on_large_machines(hardware):
    hw, wl = load(hardware, "bursty")
    policy = sim.Policy(n_per_cpu=2)
    m = sim.simulate(hw, wl, policy, seconds=0.5, seed=1)
    assert_invariants(m, policy)


@pytest.mark.parametrize("kernel", list(sim.KERNELS))
@pytest.mark.parametrize(
    "workload,settings",
    [
        ("steady", {}),
        ("oom-storm", {}),
        ("rcuscale", {"workload.kfree_loops": 3}),
        ("rcuscale", {"workload.kfree_loops": 20, "workload.kfree_by_call_rcu": "true"}),
        ("rcuscale", {"workload.kfree_loops": 5, "workload.kfree_rcu_test_single": "true"}),
    ],
)
def test_invariants_hold_for_every_kernel(kernel, workload, settings):
    hw, wl = load("phone-8", workload, **settings)
    policy = sim.Policy.kernel_default(sim.kernel_behaviour(kernel))
    m = sim.simulate(hw, wl, policy, seconds=1.0, seed=2, kernel=kernel)
    assert_invariants(m, policy)


def _without_wall(m: sim.Metrics) -> dict:
    d = dataclasses.asdict(m)
    d.pop("wall_seconds")
    return d


@pytest.mark.parametrize("workload", ["bursty", "oom-storm", "rcuscale"])
def test_same_inputs_give_identical_metrics(workload):
    hw, wl = load("phone-8", workload)
    policy = sim.Policy(n_per_cpu=3)
    a = sim.simulate(hw, wl, policy, seconds=1.0, seed=11)
    b = sim.simulate(hw, wl, policy, seconds=1.0, seed=11)
    assert _without_wall(a) == _without_wall(b)


def test_different_seeds_give_different_runs():
    hw, wl = load("vm-2", "bursty")
    a = sim.simulate(hw, wl, sim.Policy(), seconds=1.0, seed=1)
    b = sim.simulate(hw, wl, sim.Policy(), seconds=1.0, seed=2)
    assert a.calls != b.calls


policies = st.builds(
    lambda n, layout, reserve, delay, wm_frac, prealloc, emergency: sim.Policy(
        n_per_cpu=n,
        layout=layout,
        shared_reserve_pages=reserve if layout == "hybrid" else 0,
        refill_delay_ms=delay,
        refill_low_watermark=int(wm_frac * n),
        prealloc_at_boot=prealloc,
        emergency_reserve_fraction=emergency,
    ),
    st.integers(0, 64),
    st.sampled_from(sim.LAYOUTS),
    st.integers(0, 256),
    st.integers(0, 100_000),
    st.floats(0.0, 1.0),
    st.booleans(),
    st.sampled_from([0.0, 0.0, 0.02, 0.1]),
)

overrides = st.fixed_dictionaries(
    {
        "hardware.cpus": st.integers(1, 12),
        "hardware.memory_mib": st.sampled_from([256, 512, 2048]),
        "hardware.nocb_cpus": st.integers(0, 1),
        "workload.calls_per_s_per_cpu": st.sampled_from([500.0, 5000.0, 40000.0]),
        "workload.headless_fraction": st.floats(0.0, 1.0),
        "workload.vmalloc_fraction": st.sampled_from([0.0, 0.05]),
        "workload.pressure": st.sampled_from(['"steady"', '"ramp"', '"storm"']),
        "workload.anon_fraction": st.floats(0.1, 0.8),
        "workload.anon_fraction_end": st.floats(0.5, 1.1),
        "workload.storm_fraction": st.floats(0.0, 0.6),
        "workload.chain_bytes_per_pending_byte": st.sampled_from([0.0, 2.0]),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, settings_=overrides, kernel=st.sampled_from(list(sim.KERNELS)), seed=st.integers(0, 2**16))
def test_invariants_hold_for_random_policies_and_overrides(policy, settings_, kernel, seed):
    hw, wl = load("vm-2", "steady", **settings_)
    m = sim.simulate(hw, wl, policy, seconds=0.6, seed=seed, kernel=kernel)
    assert_invariants(m, policy)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, seed=st.integers(0, 2**16))
def test_simulation_is_a_pure_function(policy, seed):
    hw, wl = load("vm-2", "oom-storm", **{"workload.storm_every_s": 0.3, "workload.storm_ms": 100})
    a = sim.simulate(hw, wl, policy, seconds=0.6, seed=seed)
    b = sim.simulate(hw, wl, policy, seconds=0.6, seed=seed)
    assert _without_wall(a) == _without_wall(b)


def test_a_traced_rcuscale_run_is_sampled_through_its_milliseconds_and_unchanged_by_it():
    """The default rcuscale run ends within ~12 ms, before kswapd's first 10 ms tick samples: the trace
    steps on its own clock, and the run's metrics are the untraced run's."""
    hw, workload = sim.load_hardware("vm-2"), sim.load_workload("rcuscale")
    traced, trace = sim.simulate_with_trace(hw, workload, sim.Policy(), seed=3)
    plain = sim.simulate(hw, workload, sim.Policy(), seed=3)
    assert traced.rcuscale_total_time_ns == plain.rcuscale_total_time_ns
    assert traced.grace_periods == plain.grace_periods and traced.objects_freed == plain.objects_freed
    assert len(trace.t) >= 20 and trace.t == sorted(trace.t)
    assert trace.t[-1] == pytest.approx(traced.rcuscale_total_time_ns / 1e9, rel=1e-6)
    assert max(trace.bytes_pending) > 0
    assert {len(getattr(trace, f)) for f in ("bytes_pending", "free_pages", "cached_pages")} == {len(trace.t)}
