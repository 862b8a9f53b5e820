"""The policy under test: N, the pool layout and the fallback thresholds."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ._kernels import KernelBehaviour

Layout = Literal["per-cpu", "global", "hybrid"]
LAYOUTS: tuple[str, ...] = ("per-cpu", "global", "hybrid")
MAX_REFILL_DELAY_MS = 100_000  # the kernel clamps rcu_delay_page_cache_fill_msec to [0, 100000]


@dataclass(frozen=True)
class Policy:
    """A kvfree_rcu() page-cache policy.

    Attributes:
        n_per_cpu: rcu_min_cached_objs (rcutree. up to 6.13, slab_common. from 6.14), the per-CPU cap on
            cached block pages (0 disables).
        layout: "per-cpu" (the kernel), "global" (one pool of CPUs x N behind a lock) or
            "hybrid" (per-CPU pools plus `shared_reserve_pages` behind a lock); the last two are what-ifs.
        shared_reserve_pages: the hybrid layout's shared reserve.
        refill_delay_ms: rcu_delay_page_cache_fill_msec (v5.14+), the refill backoff after a shrinker count.
        refill_low_watermark: refill once the cache falls to this many pages; 0 = on a miss, as the kernel.
        prealloc_at_boot: fill the caches to N at boot (5.9-5.10 did; later kernels fill lazily).
        emergency_reserve_fraction: below this free-memory fraction the path may dip into the
            reserves (the never-merged GFP_MEMALLOC proposal); 0 = the faithful kernel.
    """

    n_per_cpu: int = 5
    layout: Layout = "per-cpu"
    shared_reserve_pages: int = 0
    refill_delay_ms: int = 5000
    refill_low_watermark: int = 0
    prealloc_at_boot: bool = False
    emergency_reserve_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.n_per_cpu < 0:
            raise ValueError(f"n_per_cpu={self.n_per_cpu}: must be >= 0 (0 disables the cache)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: must be one of {', '.join(LAYOUTS)}")
        if self.shared_reserve_pages < 0:
            raise ValueError(f"shared_reserve_pages={self.shared_reserve_pages}: must be >= 0")
        if self.shared_reserve_pages and self.layout != "hybrid":
            raise ValueError("shared_reserve_pages is only meaningful with layout=hybrid")
        if not 0 <= self.refill_delay_ms <= MAX_REFILL_DELAY_MS:
            raise ValueError(f"refill_delay_ms={self.refill_delay_ms}: must be in [0, {MAX_REFILL_DELAY_MS}]")
        if not 0 <= self.refill_low_watermark <= max(self.n_per_cpu, 0):
            raise ValueError(f"refill_low_watermark={self.refill_low_watermark}: must be in [0, n_per_cpu]")
        if not 0.0 <= self.emergency_reserve_fraction <= 0.5:
            raise ValueError(f"emergency_reserve_fraction={self.emergency_reserve_fraction}: must be in [0, 0.5]")

    @classmethod
    def kernel_default(cls, kernel: KernelBehaviour) -> Policy:
        """The policy a stock kernel of that release runs with."""
        return cls(n_per_cpu=kernel.default_n, prealloc_at_boot=kernel.prealloc_at_boot)

    def with_(self, **changes: object) -> Policy:
        return replace(self, **changes)

    def what_if_reasons(self, kernel: KernelBehaviour) -> tuple[str, ...]:
        """Why this policy needs a kernel patch on that release; empty when the kernel can run it."""
        reasons = []
        if self.layout != "per-cpu":
            reasons.append(f"{self.layout} pool layout")
        if self.emergency_reserve_fraction > 0:
            reasons.append("emergency reserve (GFP_MEMALLOC-like, never merged)")
        if self.refill_low_watermark > 0:
            reasons.append("refill at a low watermark (the kernel refills on a miss)")
        if self.prealloc_at_boot != kernel.prealloc_at_boot:
            reasons.append("boot pre-allocation" if self.prealloc_at_boot else "no boot pre-allocation")
        if kernel.batching and not kernel.n_tunable and self.n_per_cpu != kernel.default_n:
            reasons.append(f"N={self.n_per_cpu} (this release caches exactly {kernel.default_n} page per CPU)")
        if not kernel.has_refill_delay_param and self.refill_delay_ms != 5000:
            reasons.append("refill delay (this release has no rcu_delay_page_cache_fill_msec)")
        return tuple(reasons)

    def kernel_cmdline(self, kernel: KernelBehaviour) -> str:
        """The boot parameters that select this policy on a stock kernel of that release, with that release's
        names (e.g. slab_common.rcu_min_cached_objs from 6.14); only the parameters the release has."""
        values = {"rcu_min_cached_objs": self.n_per_cpu, "rcu_delay_page_cache_fill_msec": self.refill_delay_ms}
        return " ".join(f"{kernel.boot_param(name)}={values[name]}" for name in kernel.boot_params())
