"""The search space follows the kernel release, --fix and --faithful; objectives follow their definition."""

from __future__ import annotations

import dataclasses

import pytest

from rcutune import sim
from rcutune.tuner import UserError
from rcutune.tuner.search import build_search_space, constraint_values, make_seeds, objective_values, parse_fix


def _metrics(**changes):
    hw = sim.load_hardware("vm-2", {})
    m = sim.simulate(hw, sim.load_workload("steady", {}), sim.Policy(), seconds=0.2, seed=1)
    return hw, dataclasses.replace(m, **changes)


def test_the_full_space_on_the_newest_kernel_has_every_parameter():
    assert build_search_space("6.3", 8).names() == (
        "n_per_cpu",
        "layout",
        "shared_reserve_pages",
        "refill_delay_ms",
        "refill_low_watermark_fraction",
        "emergency_reserve_fraction",
        "prealloc_at_boot",
    )


def test_the_refill_delay_is_searched_only_where_the_shrinker_backs_off_refills():
    assert "refill_delay_ms" not in build_search_space("5.11", 8).names()
    assert "refill_low_watermark_fraction" not in build_search_space("5.9", 8).names()


def test_n_is_pinned_on_releases_where_it_is_not_a_parameter():
    space = build_search_space("5.7", 8)
    assert "n_per_cpu" not in space.names() and dict(space.fixed)["n_per_cpu"] == 1


def test_a_release_without_batching_has_nothing_to_search():
    with pytest.raises(UserError, match="nothing to search on kernel 5.5"):
        build_search_space("5.5", 8)


def test_faithful_policies_are_never_what_ifs():
    space = build_search_space("6.3", 8, faithful=True)
    assert space.names() == ("n_per_cpu", "refill_delay_ms")
    behaviour = sim.kernel_behaviour("6.3")
    for n in (0, 5, 128):
        assert space.policy({"n_per_cpu": n, "refill_delay_ms": 1000}).what_if_reasons(behaviour) == ()


def test_fix_pins_a_parameter_and_drops_what_depends_on_it():
    space = build_search_space("6.3", 8, fixed=parse_fix(["layout=per-cpu", "n_per_cpu=7"]))
    assert "layout" not in space.names() and "shared_reserve_pages" not in space.names()
    assert space.policy({}).n_per_cpu == 7


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["n_per_cpu"], "expected key=value"),
        (["colour=red"], "unknown parameter"),
        (["n_per_cpu=lots"], "expected a whole number"),
        (["n_per_cpu=2.5"], "expected a whole number"),
        (["emergency_reserve_fraction=nan"], "expected a finite number"),
        (["layout=ring"], "choose one of"),
        (["prealloc_at_boot=maybe"], "true or false"),
    ],
)
def test_bad_fix_items_are_user_errors(items, message):
    with pytest.raises(UserError, match=message):
        parse_fix(items)


def test_fix_contradicting_faithful_is_refused():
    with pytest.raises(UserError, match="contradicts --faithful"):
        build_search_space("6.3", 8, fixed={"layout": "global"}, faithful=True)


def test_the_initial_design_starts_with_the_kernel_default_and_no_cache():
    design = build_search_space("6.3", 8).initial_design()
    assert design[0][0] == "kernel-default" and design[0][1]["n_per_cpu"] == 5
    assert design[0][1]["layout"] == "per-cpu" and design[0][1]["refill_delay_ms"] == 5000
    assert design[1] == ("no-cache", {**design[0][1], "n_per_cpu": 0})


def test_the_low_watermark_is_a_fraction_of_n():
    space = build_search_space("6.3", 8, fixed={"layout": "per-cpu"})
    assert space.policy({"n_per_cpu": 8, "refill_low_watermark_fraction": 0.375}).refill_low_watermark == 3


def test_reserved_memory_is_the_cache_reservation_in_mib():
    hw, m = _metrics(cache_bytes_reserved=3 * 2**20)
    assert objective_values(m, hw)["reserved_mib"] == 3.0


def test_fallback_cost_counts_stalls_lock_waits_head_fallbacks_and_pending_peak():
    # The model reports the extra CPU time rcu_head-list frees took over kfree_bulk() (by allocator and
    # by where the free ran): 1 ms of it over 2 s counts as 0.5 ms/s.
    hw, m = _metrics(
        sim_seconds=2.0,
        sync_stall_seconds=0.010,
        lock_wait_seconds=0.002,
        head_fallbacks=1000,
        head_extra_cpu_seconds=0.001,
        bytes_pending_peak=0.0,
    )
    assert objective_values(m, hw)["fallback_cost"] == pytest.approx(1000 * 0.012 / 2 + 1.0 / 2)
    hw, m = _metrics(
        sim_seconds=1.0,
        sync_stall_seconds=0,
        lock_wait_seconds=0,
        head_fallbacks=0,
        head_extra_cpu_seconds=0.0,
        bytes_pending_peak=hw.slo_pending_peak_mib * 2**20,
    )
    assert objective_values(m, hw)["fallback_cost"] == pytest.approx(1.0)  # a peak at the SLO costs 1 ms/s


def test_constraints_are_feasible_at_or_below_zero():
    hw, m = _metrics(oom_events=0, call_latency_p99_us=25.0, sync_fallbacks=0, sim_seconds=1.0, bytes_pending_peak=0.0)
    c = constraint_values([m], hw)
    assert c["oom"] == 0 and c["p99_latency"] == pytest.approx(25.0 / hw.slo_p99_call_latency_us - 1)
    assert c["p99_latency"] < 0
    hw, bad = _metrics(oom_events=1)
    assert constraint_values([m, bad], hw)["oom"] == 1  # an OOM in any replication


def test_seed_lists_depend_on_the_seed_only():
    assert make_seeds(0, 4) == make_seeds(0, 4) and make_seeds(0, 4)[:2] == make_seeds(0, 2)
    assert make_seeds(0, 4) != make_seeds(1, 4)


def test_the_scalar_objective_weighs_reserved_memory_by_the_machine_size():
    hw, m = _metrics(cache_bytes_reserved=2**20)
    values = objective_values(m, hw)
    assert values["scalar"] == pytest.approx(values["fallback_cost"] + 1.0 / (hw.memory_mib / 1024))


@pytest.mark.parametrize(
    "item", ["n_per_cpu=-1", "n_per_cpu=129", "refill_delay_ms=-5", "emergency_reserve_fraction=0.9"]
)
def test_a_fixed_value_outside_the_modelled_range_is_refused(item):
    with pytest.raises(UserError, match="outside the range rcutune models"):
        build_search_space("6.3", 8, fixed=parse_fix([item]))


def test_fixing_the_kernel_default_of_a_parameter_outside_its_searched_range_is_allowed():
    space = build_search_space("6.3", 8, fixed=parse_fix(["layout=per-cpu", "shared_reserve_pages=0"]))
    assert space.policy({}).shared_reserve_pages == 0
