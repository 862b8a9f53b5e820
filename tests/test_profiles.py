"""Shipped profiles load, say where their numbers come from, and cover DESIGN.md §3."""

from __future__ import annotations

import pydantic
import pytest

from rcutune import sim
from rcutune.sim._profiles import kmalloc_size

DESIGN_HARDWARE = {"phone-8", "laptop-8", "server-64", "hpc-256-nocb", "rt-16-nocb", "vm-2", "arm64-16k-32"}
DESIGN_WORKLOADS = {"steady", "bursty", "memory-pressure", "oom-storm", "nocb-flood", "chain-reaction", "rcuscale"}


def test_every_profile_named_in_the_design_is_shipped():
    assert DESIGN_HARDWARE <= set(sim.list_profiles("hardware"))
    assert DESIGN_WORKLOADS <= set(sim.list_profiles("workload"))


@pytest.mark.parametrize("kind", ["hardware", "workload"])
def test_shipped_profiles_load_and_open_with_a_comment_block(kind):
    from importlib import resources

    folder = {"hardware": "hardware", "workload": "workloads"}[kind]
    for name in sim.list_profiles(kind):
        profile = sim.load_profile(kind, name)
        assert profile.name == name
        text = resources.files("rcutune.sim").joinpath("profiles", folder, f"{name}.toml").read_text()
        comment = [line for line in text.splitlines() if line.startswith("#")]
        assert len(comment) >= 2, f"{name}: say what it stands for and where its numbers come from"


def test_design_hardware_facts():
    phone = sim.load_hardware("phone-8")
    assert (phone.cpus, phone.memory_mib, phone.nocb_cpus) == (8, 4096, 8)
    vm = sim.load_hardware("vm-2")
    assert (vm.cpus, vm.memory_mib) == (2, 1024)
    assert sim.load_hardware("arm64-16k-32").page_size == 16384


def test_records_per_block_follow_page_size_and_release():
    k = sim.kernel_behaviour
    assert [k(v).records_per_block(4096) for v in ("5.7", "5.9", "6.1", "6.3", "6.6", "6.18")] == [
        509,
        510,
        510,
        508,
        507,
        507,
    ]
    assert k("6.3").records_per_block(16384) == 2044
    assert k("6.3").records_per_block(65536) == 8188


def test_rcuscale_objects_take_their_kmalloc_size_class():
    assert [kmalloc_size(24 * m) for m in (1, 4, 8, 32, 48, 64, 80, 128)] == [32, 96, 192, 1024, 2048, 2048, 2048, 4096]


def test_overrides_apply_and_keep_the_profile_frozen():
    hw = sim.load_hardware("vm-2", {"cpus": "4", "rcu_expedited": "true"})
    assert hw.cpus == 4 and hw.rcu_expedited is True
    with pytest.raises(pydantic.ValidationError):
        hw.cpus = 8  # type: ignore[misc]


def test_kernel_defaults_are_known():
    assert {v: b.default_n for v, b in sim.KERNELS.items()} == {
        "5.5": 0,
        "5.6": 0,
        "5.7": 1,
        "5.8": 1,
        "5.9": 2,
        "5.11": 5,
        "5.13": 5,
        "5.14": 5,
        "6.1": 5,
        "6.3": 5,
        "6.6": 5,
        "6.12": 5,
        "6.14": 5,
        "6.18": 5,
    }
    assert sim.DEFAULT_KERNEL == "6.18"  # the newest modelled LTS line
    with pytest.raises(ValueError, match="choose one of"):
        sim.kernel_behaviour("4.19")


def test_each_release_names_its_boot_parameters():
    policy = sim.Policy(n_per_cpu=7, refill_delay_ms=2000)
    assert policy.kernel_cmdline(sim.kernel_behaviour("6.1")) == (
        "rcutree.rcu_min_cached_objs=7 rcutree.rcu_delay_page_cache_fill_msec=2000"
    )
    for version in ("6.14", "6.18"):  # kvfree_rcu() moved to mm/slab_common.c: KBUILD_MODNAME prefix
        assert policy.kernel_cmdline(sim.kernel_behaviour(version)) == (
            "slab_common.rcu_min_cached_objs=7 slab_common.rcu_delay_page_cache_fill_msec=2000"
        )
    # rcu_delay_page_cache_fill_msec exists from 5.14; before 5.9 N is not a parameter at all.
    assert policy.kernel_cmdline(sim.kernel_behaviour("5.11")) == "rcutree.rcu_min_cached_objs=7"
    assert policy.kernel_cmdline(sim.kernel_behaviour("5.7")) == ""
    assert sim.kernel_behaviour("5.11").boot_param("rcu_min_cached_objs") == "rcutree.rcu_min_cached_objs"


def test_every_release_names_the_source_it_follows():
    for behaviour in sim.KERNELS.values():
        assert len(behaviour.source) > 20, behaviour.version
