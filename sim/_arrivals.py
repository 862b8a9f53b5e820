"""Open-loop kvfree_rcu() callers: Poisson call counts per 1 ms slot, drawn in bulk per CPU.

Calls are never Python events. Each CPU's stream holds, per slot, how many calls of each kind
(two-argument or headless, slab or vmalloc) arrived; the model asks "how many arrived in (a, b]"
and "when will k more have arrived", both answered from cumulative sums. Counts are drawn one
simulated second at a time from the CPU's own stream, so they do not depend on the policy.
"""

from __future__ import annotations

import math

import numpy as np

from ._profiles import WorkloadProfile
from ._streams import stream

SLOT = 1e-3  # seconds per slot
CHUNK = 1000  # slots per lazily drawn chunk
KINDS = ("two_arg_slab", "two_arg_vmalloc", "headless_slab", "headless_vmalloc")


class RateSchedule:
    """Per-CPU call rate over time: skew across CPUs, hot-set epochs and system-wide bursts."""

    def __init__(self, workload: WorkloadProfile, cpus: int, seconds: float, seed: int) -> None:
        self.workload = workload
        self.cpus = cpus
        nslots = int(math.ceil(seconds / SLOT)) + CHUNK
        self.burst = np.ones(nslots)
        if workload.burst_every_s > 0 and workload.burst_multiplier > 1:
            rng = stream(seed, "bursts")
            t = rng.exponential(workload.burst_every_s)
            width = max(1, int(round(workload.burst_ms * 1e-3 / SLOT)))
            while t < seconds:
                s = int(t / SLOT)
                self.burst[s : s + width] = workload.burst_multiplier
                t += workload.burst_ms * 1e-3 + rng.exponential(workload.burst_every_s)
        epochs = 1
        if workload.hot_set_period_s > 0:
            epochs = int(math.ceil(seconds / workload.hot_set_period_s)) + 1
        active = max(1, int(round(cpus * workload.active_cpus_fraction))) if workload.active_cpus_fraction > 0 else 0
        base = np.zeros(cpus)
        if active:
            rank_weight = (np.arange(1, active + 1, dtype=float)) ** (-workload.skew)
            base[:active] = rank_weight * (cpus / rank_weight.sum())  # mean over all CPUs stays the profile's rate
        self.weights = np.empty((epochs, cpus))
        rng = stream(seed, "hot_set")
        self.weights[0] = base
        for e in range(1, epochs):
            self.weights[e] = base[rng.permutation(cpus)]

    def rate(self, cpu: int, first_slot: int, nslots: int) -> np.ndarray:
        """Calls per second on `cpu` for each slot in [first_slot, first_slot + nslots)."""
        w = self.workload
        slots = np.arange(first_slot, first_slot + nslots)
        if self.weights.shape[0] > 1:
            epoch = np.minimum((slots * SLOT / w.hot_set_period_s).astype(int), self.weights.shape[0] - 1)
            weight = self.weights[epoch, cpu]
        else:
            weight = self.weights[0, cpu]
        burst = self.burst[np.minimum(slots, len(self.burst) - 1)]
        return w.calls_per_s_per_cpu * weight * burst

    def total_rate(self, slot: int) -> float:
        w = self.workload
        epoch = 0
        if self.weights.shape[0] > 1:
            epoch = min(int(slot * SLOT / w.hot_set_period_s), self.weights.shape[0] - 1)
        return float(w.calls_per_s_per_cpu * self.weights[epoch].sum() * self.burst[min(slot, len(self.burst) - 1)])


class ArrivalStream:
    """The calls one CPU receives; cumulative per kind, drawn a chunk at a time."""

    def __init__(self, schedule: RateSchedule, cpu: int, seed: int) -> None:
        w = schedule.workload
        self.schedule = schedule
        self.cpu = cpu
        self.rng = stream(seed, "arrivals", cpu)
        h, v = w.headless_fraction, w.vmalloc_fraction
        self.mix = np.array([(1 - h) * (1 - v), (1 - h) * v, h * (1 - v), h * v])
        self._kinds = [k for k in range(4) if self.mix[k] > 0]
        self._counts: list[np.ndarray] = []  # per chunk: (4, CHUNK) calls per slot
        self._cum: list[np.ndarray] = []  # per chunk: (4, CHUNK) inclusive cumulative, from time 0
        self._cum_total: list[np.ndarray] = []
        self._chunk_total: list[int] = []  # calls up to each chunk's end

    def _chunk(self, k: int) -> None:
        while len(self._counts) <= k:
            c = len(self._counts)
            lam = self.schedule.rate(self.cpu, c * CHUNK, CHUNK) * SLOT
            counts = np.zeros((4, CHUNK), dtype=np.int64)
            for kind in self._kinds:  # only the kinds this workload has
                counts[kind] = self.rng.poisson(self.mix[kind] * lam)
            base = self._last if self._cum else np.zeros(4, dtype=np.int64)
            cum = np.cumsum(counts, axis=1) + base[:, None]
            self._last = cum[:, -1].copy()
            # Slot-major, so one slot's four kinds are one contiguous row.
            self._counts.append(np.ascontiguousarray(counts.T))
            self._cum.append(np.ascontiguousarray(cum.T))
            self._cum_total.append(cum.sum(axis=0))
            self._chunk_total.append(int(self._cum_total[-1][-1]))

    def cumulative(self, t: float) -> tuple[int, ...]:
        """Calls of each kind in (0, t]; kind k's i-th call in a slot comes at fraction i / count_k."""
        if t <= 0:
            return (0, 0, 0, 0)
        pos = t / SLOT
        slot = int(pos)
        k, j = divmod(slot, CHUNK)
        if k >= len(self._counts):
            self._chunk(k)
        if j:
            before = self._cum[k][j - 1].tolist()
        elif k:
            before = self._cum[k - 1][-1].tolist()
        else:
            before = (0, 0, 0, 0)
        frac = pos - slot
        a, b, c, d = self._counts[k][j].tolist()
        return (before[0] + int(a * frac), before[1] + int(b * frac), before[2] + int(c * frac),
                before[3] + int(d * frac))

    def time_to_reach(self, t: float, k: int, horizon: float, seen: int | None = None) -> float:
        """A time after t by which at least k more calls (all kinds) have arrived; `horizon` if none.

        `seen` is the number of calls up to t when the caller already knows it.
        """
        if k <= 0:
            return t
        target = (sum(self.cumulative(t)) if seen is None else seen) + k
        last = int(horizon / SLOT) + 1
        c = int(t / SLOT) // CHUNK
        while c * CHUNK <= last:
            if c >= len(self._counts):
                self._chunk(c)
            tot = self._cum_total[c]
            if self._chunk_total[c] >= target:
                j = int(tot.searchsorted(target))
                before = int(tot[j - 1]) if j else (int(self._cum_total[c - 1][-1]) if c else 0)
                frac = _fraction_reaching(self._counts[c][j].tolist(), target - before)
                # A hair past the exact instant, so that `cumulative()` there counts the target call.
                when = (c * CHUNK + j + min(1.0, frac * (1 + 1e-9) + 1e-9)) * SLOT
                return min(max(when, t + 1e-9), horizon)
            c += 1
        return horizon


def _fraction_reaching(per_kind: list[int], need: int) -> float:
    """An x in (0, 1] with sum(floor(n * x) for n in per_kind) >= need, at most a few calls late.

    need / total is exact when the kinds' floors line up; otherwise (need + kinds) / total is
    enough, because floor(y) > y - 1 for each kind.
    """
    total = sum(per_kind)
    x = need / total
    if sum(int(n * x) for n in per_kind) >= need:
        return x
    return min(1.0, (need + sum(1 for n in per_kind if n)) / total)
