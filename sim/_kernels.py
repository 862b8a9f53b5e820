"""What each modelled kernel release does on the kvfree_rcu() path: one table, no copied models.

Every mechanism in the simulation asks this table how to behave; a release is a row. Sources are
in the project's domain note (kvfree-rcu.md §1.2); the commit that introduced each behaviour is
named beside its field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Gfp = Literal["none", "nowait", "noretry", "kernel"]
"""Allocation flag sets: none (no inline allocation), GFP_NOWAIT|__GFP_NOWARN,
GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN, GFP_KERNEL|__GFP_NOWARN (may OOM)."""


@dataclass(frozen=True)
class KernelBehaviour:
    """One release's behaviour; fields are read by the mechanism they name."""

    version: str
    batching: bool  # False: every object is its own call_rcu() callback (before a35d16905efc, v5.6)
    block_header_bytes: int  # struct kvfree_rcu_bulk_data header; records = (page - header) / 8
    default_n: int  # rcu_min_cached_objs default (5.7: the single `bcached` page)
    n_tunable: bool  # rcutree.rcu_min_cached_objs exists (v5.9, 53c72b590b3a)
    block_channels: int  # slab, vmalloc (v5.9 adds the vmalloc array)
    headless_api: bool  # single-argument kvfree_rcu() exists (v5.9)
    two_arg_inline_gfp: Gfp  # 5.7-5.10 allocate under the krc lock with GFP_NOWAIT
    headless_inline_gfp: Gfp  # 5.9-5.10 NOWAIT under the lock; 5.11 none; 5.12+ NORETRY (Rezki, Jan 2021)
    prealloc_at_boot: bool  # 5.9-5.10 fill the cache to N at boot; 5.11 fills lazily (56292e8609e3)
    refill_worker: bool  # hrtimer -> system_highpri_wq fill_page_cache_func() (v5.11)
    refill_gfp: Gfp  # 5.11 GFP_KERNEL|__GFP_NOWARN; 5.12+ NORETRY|NOMEMALLOC
    refill_stops_at_failure: bool  # 5164c862c6, mid-2022 batch (modelled from 6.1)
    shrinker: bool  # 9154244c1ab6, v5.8
    shrinker_drains_cache: bool  # d0bfa8b3c411, v5.14: drain_page_cache() + backoff_page_cache_fill
    adaptive_drain: bool  # 51824b780b71, v6.1: 5*HZ, or 1 jiffy once a block's worth is pending
    polled_gp_per_block: bool  # cc37d52076a9, v6.3: per-block gp_snap, kvfree_rcu_drain_ready()
    lazy_rcu: bool = False  # call_rcu_lazy (v6.2); kvfree batches use call_rcu_hurry and are never lazy
    param_module: str = "rcutree"  # boot-parameter prefix: rcutree. up to 6.13, slab_common. from the 6.14 move

    def boot_param(self, name: str) -> str:
        """The command-line name of a kvfree_rcu() parameter on this release, e.g. rcutree.rcu_min_cached_objs."""
        return f"{self.param_module}.{name}"

    def records_per_block(self, page_size: int) -> int:
        """KVFREE_BULK_MAX_ENTR on a 64-bit build: 509 (5.7), 510 (5.9-6.2), 508 (6.3) at 4 KiB."""
        return (page_size - self.block_header_bytes) // 8

    def drain_delay_jiffies(self, hz: int, pending: int, records: int) -> int:
        """The monitor's delay: HZ/50 before 6.1; from 6.1 5*HZ, or 1 jiffy once a block's worth waits."""
        if not self.adaptive_drain:
            return max(1, hz // 50)
        return 1 if pending >= records else 5 * hz


_OLD = dict(adaptive_drain=False, polled_gp_per_block=False)

KERNELS: dict[str, KernelBehaviour] = {
    k.version: k
    for k in (
        KernelBehaviour(
            "5.5", batching=False, block_header_bytes=24, default_n=0, n_tunable=False, block_channels=0,
            headless_api=False, two_arg_inline_gfp="none", headless_inline_gfp="none", prealloc_at_boot=False,
            refill_worker=False, refill_gfp="none", refill_stops_at_failure=False, shrinker=False,
            shrinker_drains_cache=False, **_OLD,
        ),
        KernelBehaviour(
            "5.7", batching=True, block_header_bytes=24, default_n=1, n_tunable=False, block_channels=1,
            headless_api=False, two_arg_inline_gfp="nowait", headless_inline_gfp="none", prealloc_at_boot=False,
            refill_worker=False, refill_gfp="none", refill_stops_at_failure=False, shrinker=False,
            shrinker_drains_cache=False, **_OLD,
        ),
        KernelBehaviour(
            "5.9", batching=True, block_header_bytes=16, default_n=2, n_tunable=True, block_channels=2,
            headless_api=True, two_arg_inline_gfp="nowait", headless_inline_gfp="nowait", prealloc_at_boot=True,
            refill_worker=False, refill_gfp="none", refill_stops_at_failure=False, shrinker=True,
            shrinker_drains_cache=False, **_OLD,
        ),
        KernelBehaviour(
            "5.11", batching=True, block_header_bytes=16, default_n=5, n_tunable=True, block_channels=2,
            headless_api=True, two_arg_inline_gfp="none", headless_inline_gfp="none", prealloc_at_boot=False,
            refill_worker=True, refill_gfp="kernel", refill_stops_at_failure=False, shrinker=True,
            shrinker_drains_cache=False, **_OLD,
        ),
        KernelBehaviour(
            "6.1", batching=True, block_header_bytes=16, default_n=5, n_tunable=True, block_channels=2,
            headless_api=True, two_arg_inline_gfp="none", headless_inline_gfp="noretry", prealloc_at_boot=False,
            refill_worker=True, refill_gfp="noretry", refill_stops_at_failure=True, shrinker=True,
            shrinker_drains_cache=True, adaptive_drain=True, polled_gp_per_block=False,
        ),
        KernelBehaviour(
            "6.3", batching=True, block_header_bytes=32, default_n=5, n_tunable=True, block_channels=2,
            headless_api=True, two_arg_inline_gfp="none", headless_inline_gfp="noretry", prealloc_at_boot=False,
            refill_worker=True, refill_gfp="noretry", refill_stops_at_failure=True, shrinker=True,
            shrinker_drains_cache=True, adaptive_drain=True, polled_gp_per_block=True, lazy_rcu=True,
        ),
    )
}

DEFAULT_KERNEL = "6.3"


def kernel_behaviour(version: str) -> KernelBehaviour:
    """The behaviour of a modelled release.

    Raises:
        ValueError: for a version that is not modelled; the message lists the modelled ones.
    """
    try:
        return KERNELS[version]
    except KeyError:
        raise ValueError(f"kernel '{version}' is not modelled; choose one of: {', '.join(KERNELS)}") from None
