"""What each modelled kernel release does on the kvfree_rcu() path: one table, no copied models.

Every mechanism in the simulation asks this table how to behave; a release is a row. A row follows
the release as tagged (x.y.0); `source` names the commits (upstream ids) or file version it was read
from, and the commit that introduced each behaviour is named beside its field. Stable backports
that change a modelled path are named in `source` too, but not modelled (docs/model.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Gfp = Literal["none", "nowait", "noretry", "kernel"]
"""Allocation flag sets: none (no inline allocation), GFP_NOWAIT|__GFP_NOWARN,
GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN, GFP_KERNEL|__GFP_NOWARN (may OOM)."""

ReclaimWq = Literal["system_wq", "system_unbound_wq", "rcu_reclaim_wq"]
"""The workqueue of the monitor, the batches' kfree_rcu_work() and the backoff refill:
system_wq (per-CPU pools, v5.6), system_unbound_wq (Waiman Long, "rcu: Use system_unbound_wq to
avoid disturbing isolated CPUs", v6.12), rcu_reclaim_wq = WQ_UNBOUND|WQ_MEM_RECLAIM
(dfd3df31c9db, v6.14)."""

ShrinkerCount = Literal["none", "unbatched", "pending_and_cache"]
"""What kfree_rcu_shrink_count() counts: nothing (no shrinker), the objects not yet in a batch
(krcp->count, 9154244c1ab6, v5.8), or pending objects plus cached pages (d0bfa8b3c411, v5.14)."""


@dataclass(frozen=True)
class KernelBehaviour:
    """One release's behaviour; fields are read by the mechanism they name."""

    version: str
    source: str  # the commits / file version this row follows
    batching: bool  # False: every object is its own call_rcu() callback (before a35d16905efc, v5.6)
    block_header_bytes: int  # struct kvfree_rcu_bulk_data header; records = (page - header) / 8
    default_n: int  # rcu_min_cached_objs default (5.7: the single `bcached` page)
    n_tunable: bool  # rcutree.rcu_min_cached_objs exists (v5.9, 53c72b590b3a)
    block_channels: int  # 0: rcu_head list only (5.6); 1: kfree_bulk() blocks (5.7); 2: + vmalloc (5.9)
    headless_api: bool  # single-argument kvfree_rcu() exists (v5.9)
    two_arg_inline_gfp: Gfp  # 5.7-5.10 allocate under the krc lock with GFP_NOWAIT
    headless_inline_gfp: Gfp  # 5.9-5.10 NOWAIT under the lock; 5.11-5.12 none; 5.13+ NORETRY (148e3731d124)
    prealloc_at_boot: bool  # 5.9-5.10 fill the cache to N at boot; 5.11 fills lazily (56292e8609e3)
    refill_worker: bool  # hrtimer -> system_highpri_wq fill_page_cache_func() (v5.11)
    refill_gfp: Gfp  # 5.11 GFP_KERNEL|__GFP_NOWARN; 5.13+ NORETRY|NOMEMALLOC (ee6ddf58475c)
    refill_stops_at_failure: bool  # 5164c862c6, mid-2022 batch (modelled from 6.1)
    shrinker: bool  # 9154244c1ab6, v5.8
    shrinker_drains_cache: bool  # d0bfa8b3c411, v5.14: drain_page_cache() + backoff_page_cache_fill
    adaptive_drain: bool  # 51824b780b71, v6.1: 5*HZ, or 1 jiffy once a block's worth is pending
    polled_gp_per_block: bool  # cc37d52076a9, v6.3: per-block gp_snap, kvfree_rcu_drain_ready()
    lazy_rcu: bool = False  # call_rcu_lazy (v6.2); kvfree batches use call_rcu_hurry and are never lazy
    param_module: str = "rcutree"  # boot-parameter prefix: rcutree. up to 6.13, slab_common. from the 6.14 move
    rcuscale_modes: bool = False  # rcuscale.kfree_rcu_test_single/_double (686fe1bf6bcc, v5.13); before: double only
    reclaim_wq: ReclaimWq = "system_wq"
    kvfree_rcu_batched_config: bool = False  # CONFIG_KVFREE_RCU_BATCHED (=y by default; v6.15)
    sheaves: bool = False  # kfree_rcu_sheaf() front end for caches with per-CPU sheaves (v6.18)
    tick_qs_preempt_count: bool = False  # tick reports a QS with PREEMPT_COUNT and PREEMPT_RCU=n (v6.15)
    qovld: bool = True  # rcutree.qovld and the rcu_do_batch() time limit (b2b00ddf193b, v5.7)
    # run_page_cache_worker() arms its hrtimer even with rcu_min_cached_objs=0, for a work that fills
    # nothing; from 021a5ff84743 (v6.5, "Do not run a page work if a cache is disabled") it bails out.
    refill_when_disabled: bool = False
    eevdf: bool = False  # 147f3efaa241 (v6.6): EEVDF replaces CFS; a running kworker keeps its slice

    def boot_param(self, name: str) -> str:
        """The command-line name of a kvfree_rcu() parameter on this release, e.g. rcutree.rcu_min_cached_objs."""
        return f"{self.param_module}.{name}"

    @property
    def has_refill_delay_param(self) -> bool:
        """rcu_delay_page_cache_fill_msec exists (d0bfa8b3c411, v5.14, with the shrinker's cache drain)."""
        return self.shrinker_drains_cache

    @property
    def shrinker_count(self) -> ShrinkerCount:
        if not self.shrinker:
            return "none"
        return "pending_and_cache" if self.shrinker_drains_cache else "unbatched"

    def boot_params(self) -> tuple[str, ...]:
        """The kvfree_rcu() boot parameters this release has (without prefix)."""
        names = []
        if self.n_tunable:
            names.append("rcu_min_cached_objs")
        if self.has_refill_delay_param:
            names.append("rcu_delay_page_cache_fill_msec")
        return tuple(names)

    def records_per_block(self, page_size: int) -> int:
        """KVFREE_BULK_MAX_ENTR on a 64-bit build: 509 (5.7-5.8), 510 (5.9-6.2), 508 (6.3-6.4), 507 (6.5+) at 4 KiB."""
        return (page_size - self.block_header_bytes) // 8

    def drain_delay_jiffies(self, hz: int, pending: int, records: int) -> int:
        """The monitor's delay: HZ/50 before 6.1; from 6.1 5*HZ, or 1 jiffy once a block's worth waits."""
        if not self.adaptive_drain:
            return max(1, hz // 50)
        return 1 if pending >= records else 5 * hz


_OLD = dict(adaptive_drain=False, polled_gp_per_block=False)
_NEW = dict(  # 5.13 onwards: headless callers allocate inline with NORETRY, so does the refill worker
    batching=True,
    n_tunable=True,
    block_channels=2,
    headless_api=True,
    two_arg_inline_gfp="none",
    headless_inline_gfp="noretry",
    prealloc_at_boot=False,
    refill_worker=True,
    refill_gfp="noretry",
    shrinker=True,
    rcuscale_modes=True,
)
_POLLED = dict(  # 6.1 drain, 6.3 polled per-block grace periods, and everything before them
    **_NEW,
    refill_stops_at_failure=True,
    shrinker_drains_cache=True,
    adaptive_drain=True,
    polled_gp_per_block=True,
    lazy_rcu=True,
)

KERNELS: dict[str, KernelBehaviour] = {
    k.version: k
    for k in (
        KernelBehaviour(
            "5.5",
            "v5.5 kernel/rcu/tree.c: kfree_call_rcu() is call_rcu() with the offset as callback",
            batching=False,
            block_header_bytes=24,
            default_n=0,
            n_tunable=False,
            block_channels=0,
            headless_api=False,
            two_arg_inline_gfp="none",
            headless_inline_gfp="none",
            prealloc_at_boot=False,
            refill_worker=False,
            refill_gfp="none",
            refill_stops_at_failure=False,
            shrinker=False,
            shrinker_drains_cache=False,
            qovld=False,
            **_OLD,
        ),
        KernelBehaviour(
            "5.6",
            "a35d16905efc (kfree_rcu() batching over rcu_head lists), 0392bebebf26 (KFREE_N_BATCHES=2); "
            "kfree_rcu_work() kfree()s each object",
            batching=True,
            block_header_bytes=24,
            default_n=0,
            n_tunable=False,
            block_channels=0,
            headless_api=False,
            two_arg_inline_gfp="none",
            headless_inline_gfp="none",
            prealloc_at_boot=False,
            refill_worker=False,
            refill_gfp="none",
            refill_stops_at_failure=False,
            shrinker=False,
            shrinker_drains_cache=False,
            qovld=False,
            **_OLD,
        ),
        KernelBehaviour(
            "5.7",
            "34c881745549 (kfree_bulk() blocks, one `bcached` page, GFP_NOWAIT under the krc lock)",
            batching=True,
            block_header_bytes=24,
            default_n=1,
            n_tunable=False,
            block_channels=1,
            headless_api=False,
            two_arg_inline_gfp="nowait",
            headless_inline_gfp="none",
            prealloc_at_boot=False,
            refill_worker=False,
            refill_gfp="none",
            refill_stops_at_failure=False,
            shrinker=False,
            shrinker_drains_cache=False,
            **_OLD,
        ),
        KernelBehaviour(
            "5.8",
            "9154244c1ab6 (shrinker: count = objects not yet in a batch; scan detaches them)",
            batching=True,
            block_header_bytes=24,
            default_n=1,
            n_tunable=False,
            block_channels=1,
            headless_api=False,
            two_arg_inline_gfp="nowait",
            headless_inline_gfp="none",
            prealloc_at_boot=False,
            refill_worker=False,
            refill_gfp="none",
            refill_stops_at_failure=False,
            shrinker=True,
            shrinker_drains_cache=False,
            **_OLD,
        ),
        KernelBehaviour(
            "5.9",
            "53c72b590b3a (rcu_min_cached_objs=2, filled at boot), vmalloc channel, headless kvfree_rcu()",
            batching=True,
            block_header_bytes=16,
            default_n=2,
            n_tunable=True,
            block_channels=2,
            headless_api=True,
            two_arg_inline_gfp="nowait",
            headless_inline_gfp="nowait",
            prealloc_at_boot=True,
            refill_worker=False,
            refill_gfp="none",
            refill_stops_at_failure=False,
            shrinker=True,
            shrinker_drains_cache=False,
            **_OLD,
        ),
        KernelBehaviour(
            "5.11",
            "56292e8609e3 (no allocation under the raw lock; hrtimer refill worker; default 5)",
            batching=True,
            block_header_bytes=16,
            default_n=5,
            n_tunable=True,
            block_channels=2,
            headless_api=True,
            two_arg_inline_gfp="none",
            headless_inline_gfp="none",
            prealloc_at_boot=False,
            refill_worker=True,
            refill_gfp="kernel",
            refill_stops_at_failure=False,
            shrinker=True,
            shrinker_drains_cache=False,
            refill_when_disabled=True,
            **_OLD,
        ),
        KernelBehaviour(
            "5.13",
            "148e3731d124 + b01b405092b7 (headless inline GFP_KERNEL|NORETRY|NOMEMALLOC), ee6ddf58475c "
            "(refill flags), 686fe1bf6bcc (rcuscale single/double)",
            block_header_bytes=16,
            default_n=5,
            refill_stops_at_failure=False,
            shrinker_drains_cache=False,
            refill_when_disabled=True,
            **_NEW,
            **_OLD,
        ),
        KernelBehaviour(
            "5.14",
            "d0bfa8b3c411 (shrinker drains the page cache; backoff; rcu_delay_page_cache_fill_msec)",
            block_header_bytes=16,
            default_n=5,
            refill_stops_at_failure=False,
            shrinker_drains_cache=True,
            refill_when_disabled=True,
            **_NEW,
            **_OLD,
        ),
        KernelBehaviour(
            "6.1",
            "51824b780b71 (adaptive drain), 5164c862c6 (refill stops at a failure), cd011b5fdbba",
            block_header_bytes=16,
            default_n=5,
            refill_stops_at_failure=True,
            shrinker_drains_cache=True,
            adaptive_drain=True,
            polled_gp_per_block=False,
            refill_when_disabled=True,
            **_NEW,
        ),
        KernelBehaviour(
            "6.3",
            "cc37d52076a9 (polled GP per block, kvfree_rcu_drain_ready()), 04a522b7da3d (list_head "
            "blocks, 508 records)",
            block_header_bytes=32,
            default_n=5,
            refill_when_disabled=True,
            **_POLLED,
        ),
        KernelBehaviour(
            "6.6",
            "v6.5 rcu/kvfree series (gp_snap is struct rcu_gp_oldstate: 507 records), "
            "need_wait_for_krwp_work() (Ziwei Dai, v6.4), 021a5ff84743 (no refill work with N=0); "
            "kernel/rcu/tree.c, system_wq",
            block_header_bytes=40,
            default_n=5,
            eevdf=True,
            **_POLLED,
        ),
        KernelBehaviour(
            "6.12",
            '"rcu: Use system_unbound_wq to avoid disturbing isolated CPUs" (Waiman Long), '
            "kvfree_rcu_barrier(); 6.12.y later backports dfd3df31c9db (rcu_reclaim_wq)",
            block_header_bytes=40,
            default_n=5,
            reclaim_wq="system_unbound_wq",
            eevdf=True,
            **_POLLED,
        ),
        KernelBehaviour(
            "6.14",
            '"mm/slab: Move kvfree_rcu() into SLAB" (mm/slab_common.c, slab_common. parameters), '
            "dfd3df31c9db (rcu_reclaim_wq, WQ_UNBOUND|WQ_MEM_RECLAIM)",
            block_header_bytes=40,
            default_n=5,
            reclaim_wq="rcu_reclaim_wq",
            param_module="slab_common",
            eevdf=True,
            **_POLLED,
        ),
        KernelBehaviour(
            "6.18",
            "mm/slab_common.c as of v6.18: CONFIG_KVFREE_RCU_BATCHED (v6.15), kfree_rcu_sheaf() front "
            'end ("slab: add sheaf support for batching kfree_rcu() operations"), tick QS with PREEMPT_COUNT',
            block_header_bytes=40,
            default_n=5,
            reclaim_wq="rcu_reclaim_wq",
            param_module="slab_common",
            kvfree_rcu_batched_config=True,
            sheaves=True,
            tick_qs_preempt_count=True,
            eevdf=True,
            **_POLLED,
        ),
    )
}

DEFAULT_KERNEL = "6.18"
"""The newest modelled LTS line."""


def kernel_behaviour(version: str) -> KernelBehaviour:
    """The behaviour of a modelled release.

    Raises:
        ValueError: for a version that is not modelled; the message lists the modelled ones.
    """
    try:
        return KERNELS[version]
    except KeyError:
        raise ValueError(f"kernel '{version}' is not modelled; choose one of: {', '.join(KERNELS)}") from None
