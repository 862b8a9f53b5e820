"""What freeing an object costs, by allocator and by where the free runs.

SLUB (mm/slub.c): kfree() takes the fast path only when the object lies in the freeing CPU's
current slab (do_slab_free() with c->slab == slab); otherwise __slab_free() updates that slab's
freelist with a cmpxchg and may move it between lists: the slow path. kfree_bulk() builds a
detached freelist per slab from neighbouring pointers (build_detached_freelist()), so a block whose
records come from few slabs pays the slow path once per slab, not once per object. Objects that
another CPU allocated never hit the freeing CPU's slab and their cache lines travel: a remote free.

SLAB (mm/slab.c, removed in v6.8): every free goes to the CPU's array cache and, batchcount objects at
a time, back to their slabs under the node lock (cache_flusharray() -> free_block()); kfree_bulk() is
a loop of the same frees, so it saves nothing per object.

Objects per slab follow SLUB's calc_slab_order(): the smallest order (up to
PAGE_ALLOC_COSTLY_ORDER) that holds min_objects = 4 * (fls(nr_cpus) + 1) objects.
"""

from __future__ import annotations

from ._profiles import HardwareProfile

PAGE_ALLOC_COSTLY_ORDER = 3


def objects_per_slab(object_bytes: int, cpus: int, page_size: int = 4096) -> int:
    """SLUB's objects per slab for one kmalloc size class on a machine with `cpus` CPUs."""
    size = max(8, object_bytes)
    if size > page_size * (1 << PAGE_ALLOC_COSTLY_ORDER):
        return 1
    min_objects = 4 * (cpus.bit_length() + 1)
    for order in range(PAGE_ALLOC_COSTLY_ORDER + 1):
        per_slab = (page_size << order) // size
        if per_slab >= min_objects:
            return per_slab
    return max(1, (page_size << PAGE_ALLOC_COSTLY_ORDER) // size)


class FreeCosts:
    """Seconds per object freed on the kvfree_rcu() reclaim path.

    `locality` is how many neighbouring records of a block come from one slab, as a share of a slab
    (1: allocation order, as rcuscale's kmalloc()-then-kfree_rcu() loop produces; 0: no two
    neighbours share a slab).
    """

    def __init__(self, hw: HardwareProfile, object_bytes: int, locality: float) -> None:
        self.slub = hw.allocator == "slub"
        self.fast = hw.kfree_fast_ns * 1e-9
        self.slow = hw.kfree_slow_ns * 1e-9
        self.remote = hw.kfree_remote_ns * 1e-9
        self.per_slab = objects_per_slab(object_bytes, hw.cpus, hw.page_size)
        self.group = max(1.0, locality * self.per_slab)  # objects per detached freelist in kfree_bulk()
        self.locality = locality

    def bulk(self, local: bool) -> float:
        """kfree_bulk() per record of a block: SLUB links the objects of one slab into a detached freelist
        (a fast-path cost each) and frees it with one slow-path update; SLAB frees each as kfree() does."""
        extra = 0.0 if local else self.remote
        if not self.slub:
            return self.fast + self.slow + extra
        return self.slow / self.group + self.fast * (1.0 - 1.0 / self.group) + extra

    def head(self, count: int, local: bool) -> float:
        """Per object of an rcu_head list of `count` objects freed one by one with kvfree()."""
        if not self.slub:
            return self.fast + self.slow + (0.0 if local else self.remote)  # array cache, then free_block()
        if not local or count <= 0:
            return self.slow + (0.0 if local else self.remote)
        # The list is newest first: the first objects may still sit in this CPU's current slab.
        hits = min(1.0, self.locality * self.per_slab / count)
        return hits * self.fast + (1.0 - hits) * self.slow

    def single(self, local: bool = True) -> float:
        """One kvfree() of an object that waited a grace period (a callback, or the synchronize_rcu() fallback)."""
        return self.slow + (0.0 if local else self.remote)
